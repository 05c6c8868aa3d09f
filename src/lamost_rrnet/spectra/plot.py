"""Figures of single spectra (``inspect --plot``)."""

from __future__ import annotations

import os

import numpy as np

from lamost_rrnet.atomic import atomic_path
from lamost_rrnet.spectra.io import Spectrum


def plot_spectrum(
    spectrum: Spectrum,
    wavelength: np.ndarray,
    normalized: np.ndarray,
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Raw counts of both arms on top, the normalized network-grid spectrum below, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 6.5), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    for col, arm in enumerate((spectrum.blue, spectrum.red)):
        ax = fig.add_subplot(grid[0, col])
        ax.plot(arm.wavelength, arm.flux, lw=0.5, color="tab:blue" if col == 0 else "tab:red")
        ax.set_title(f"{arm.extname} (S/N {arm.snr:.1f})")
        ax.set_xlabel("vacuum wavelength (Å)")
        ax.set_ylabel("flux (counts)")
    n_blue = wavelength.size // 2
    for col, sl in enumerate((slice(0, n_blue), slice(n_blue, None))):
        ax = fig.add_subplot(grid[1, col])
        ax.plot(wavelength[sl], normalized[sl], lw=0.5, color="k")
        ax.axhline(1.0, color="0.6", lw=0.5, ls="--")
        ax.set_xlabel("rest-frame vacuum wavelength (Å)")
        ax.set_ylabel("normalized flux")
        ax.set_title("network input grid" + (" (blue)" if col == 0 else " (red)"))
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
