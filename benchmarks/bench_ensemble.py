"""Ensemble inference speed: the published code's approach against ``Ensemble.predict``.

The published approach runs the 12 members (6 SP + 6 CA) one after another on batches of 128
with the plain nn.Conv1d / nn.RNN modules (``RRNet.forward``). ``Ensemble.predict`` runs the
same members through their inference path (the residual stages as packed matrix products).
Both start from the same continuum-normalized flux and end at μ, σ in physical units; the
script checks that they agree (rtol 1e-4, atol 1e-6) and prints spectra per second.

The members have PyTorch's default initialization (the published weights are not needed for
timing), with the published shapes. Run on an idle machine:

    python benchmarks/bench_ensemble.py --threads 2 --spectra 512
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.models import create_model
from lamost_rrnet.models.fastconv import packed_residual_features
from lamost_rrnet.models.published import PUBLISHED_ARCHITECTURE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "published_rrnet"


def build_ensemble(members: int) -> Ensemble:
    torch.manual_seed(0)
    kwargs = PUBLISHED_ARCHITECTURE["kwargs"]
    groups = [
        LabelGroup(
            g, list(labels), [create_model("rrnet", len(labels), **kwargs) for _ in range(members)]
        )
        for g, labels in PAPER_GROUPS.items()
    ]
    names = [n for labels in PAPER_GROUPS.values() for n in labels]
    rng = np.random.default_rng(0)
    norm = Normalization(
        rng.normal(1.0, 0.02, 7200),
        rng.uniform(0.03, 0.1, 7200),
        names,
        rng.normal(0.0, 0.1, len(names)),
        rng.uniform(0.2, 0.4, len(names)),
    )
    return Ensemble("bench", "0", PUBLISHED_ARCHITECTURE, groups, norm)


def spectra(n: int) -> np.ndarray:
    """Real normalized spectra from ../shared when present (with noise), else synthetic ones."""
    rng = np.random.default_rng(1)
    files = sorted((SHARED / "reference").glob("*.npy"))
    base = [np.load(f) for f in files if np.load(f).std() > 0.01] if files else []
    if not base:
        x = np.linspace(0, 60, 7200)
        base = [1 - 0.3 * np.exp(-((x % 3 - 1.5) ** 2) / 0.01)]
    flux = np.stack([base[i % len(base)] for i in range(n)]).astype(np.float32)
    return flux + rng.normal(0, 0.02, flux.shape).astype(np.float32)


def published_approach(ens: Ensemble, flux: np.ndarray, batch: int = 128):
    """Members one after another on batches of 128 through the plain modules, then eq. 3."""
    mu = np.empty((len(flux), len(ens.labels)))
    sigma = np.empty_like(mu)
    with torch.no_grad():
        for start in range(0, len(flux), batch):
            x = ens.network_input(flux[start : start + batch])
            column = 0
            for group in ens.groups:
                rows = ens.normalization.index(group.labels)
                outs = [member(x) for member in group.members]
                m = torch.stack([o[0] for o in outs]).double()
                s2 = torch.stack([o[1] for o in outs]).double() + m**2
                mean = m.mean(0)
                var = s2.mean(0) - mean**2
                end = column + len(group.labels)
                std = ens.normalization.label_std[rows]
                mu[start : start + batch, column:end] = mean.numpy() * std
                mu[start : start + batch, column:end] += ens.normalization.label_mean[rows]
                sigma[start : start + batch, column:end] = np.sqrt(var.numpy()) * std
                column = end
    return mu, sigma


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spectra", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--members", type=int, default=6, help="per group (published: 6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="Ensemble.predict batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ens = build_ensemble(args.members)
    flux = spectra(args.spectra)
    n_members = len(ens.members())
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    print(f"{args.spectra} spectra, {n_members} members")

    # The two approaches alternate, so that both see the same machine load; best of repeats.
    # CPU seconds are reported too: on a shared machine they are the steadier measure.
    base_t = fast_t = base_c = fast_c = float("inf")
    for _ in range(args.repeats):
        wall, cpu, base = timed(lambda: published_approach(ens, flux))
        base_t, base_c = min(base_t, wall), min(base_c, cpu)
        wall, cpu, fast = timed(lambda: ens.predict(flux, batch_size=args.batch_size))
        fast_t, fast_c = min(fast_t, wall), min(fast_c, cpu)
    pairs = list(zip(fast, base, strict=True))
    same = all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in pairs)
    worst = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-12))) for a, b in pairs)
    n = args.spectra
    print("                                          spectra/s (wall)   CPU ms per spectrum")
    print(f"published approach (batch 128, nn modules) {n / base_t:10.1f} {1e3 * base_c / n:18.1f}")
    print(
        f"Ensemble.predict (batch {args.batch_size:<4d})             {n / fast_t:10.1f}"
        f" {1e3 * fast_c / n:18.1f}"
    )
    print(
        f"speed-up: {base_t / fast_t:.2f}x wall, {base_c / fast_c:.2f}x CPU;"
        f" outputs allclose(rtol=1e-4, atol=1e-6): {same} (max relative difference {worst:.1e})"
    )

    # Where one member's time goes, at batch 128 (CPU ms, best of repeats).
    member = ens.groups[1].members[0]
    x = ens.network_input(flux[:128])
    parts = {
        "residual stages": (
            lambda: member.residual_features(x),
            lambda: packed_residual_features(member.stages, x),
        ),
        "whole member": (lambda: member(x), lambda: member.inference(x)),
    }
    print("one member, 128 spectra, CPU ms:   nn modules   inference path")
    with torch.inference_mode():
        for name, (slow, quick) in parts.items():
            a = min(timed(slow)[1] for _ in range(args.repeats))
            b = min(timed(quick)[1] for _ in range(args.repeats))
            print(f"  {name:30s} {a * 1e3:10.1f} {b * 1e3:16.1f}")


if __name__ == "__main__":
    main()
