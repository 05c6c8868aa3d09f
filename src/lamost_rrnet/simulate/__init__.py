"""Realistic synthetic LAMOST MRS spectra, LAMOST-like catalogues and label catalogues.

In memory: :func:`draw_labels` (a population), :func:`synthesize` (noiseless normalized model
spectra), :func:`simulate_observed` (coadds in counts with IVAR and masks) and
:func:`simulate_normalized` (those spectra through the rrnet2022 preprocessing). On disk:
:func:`simulate_set` writes MRS FITS files with ``lamost_catalogue.csv`` and ``labels.csv``.
The physics and its limits are in docs/simulator.md.
"""

from lamost_rrnet.simulate.files import SimulatedSet, simulate_set
from lamost_rrnet.simulate.memory import (
    Observation,
    simulate_normalized,
    simulate_observed,
    synthesize,
)
from lamost_rrnet.simulate.population import draw_labels

__all__ = [
    "Observation",
    "SimulatedSet",
    "draw_labels",
    "simulate_normalized",
    "simulate_observed",
    "simulate_set",
    "synthesize",
]
