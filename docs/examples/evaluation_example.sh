#!/usr/bin/env bash
# The worked example of docs/evaluation.md: simulate a small survey, train a 2-member RRNet and
# a 2-member StarNet on it, and evaluate both on the test split.
#
#   docs/examples/evaluation_example.sh [WORKDIR]      (default: ./evaluation_example)
#
# STARS and EPOCHS (environment) scale it; the defaults took 17 minutes on 2 shared CPU cores.
# The figures in docs/figures/evaluation_*.png are copies of some in WORKDIR/report/.
set -euo pipefail

WORK=${1:-evaluation_example}
STARS=${STARS:-600}
EPOCHS=${EPOCHS:-10}
mkdir -p "$WORK"
cd "$WORK"

lamost-rrnet simulate sim/ --stars "$STARS" --seed 1
lamost-rrnet crossmatch sim/lamost_catalogue.csv --labels-file sim/labels.csv -o reference.fits
lamost-rrnet prepare reference.fits --spectra-root sim/spectra -o dataset.h5
lamost-rrnet train dataset.h5 -o rrnet/ --arch rrnet --members 2 --epochs "$EPOCHS" --seed 0
lamost-rrnet train dataset.h5 -o starnet/ --arch starnet --members 2 --epochs "$EPOCHS" --seed 0
lamost-rrnet evaluate dataset.h5 --model rrnet/ --model starnet/ --split test -o report/ \
    --saliency 4000:4600,5800:6500 --html
