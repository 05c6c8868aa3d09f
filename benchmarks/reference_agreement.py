"""Agreement of our rrnet2022 preprocessing with the published reference outputs, and how far
the authors' literal float32 ``10 ** loglam`` moves it on this CPU.

For each real spectrum and arm it prints the worst relative difference
|got − want| / max(|want|, 1e-3) against ``reference/*.npy`` (the criterion is 1e-4), then, for
λ computed with NumPy's float32 power instead of the correctly rounded one: how many source
wavelengths change (each by one ulp) and the worst relative change of the output.
Run: ``python benchmarks/reference_agreement.py`` (needs the shared reference material beside
the checkout).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from lamost_rrnet.spectra.io import Arm, Spectrum, read_mrs
from lamost_rrnet.spectra.preprocess import preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _relative(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.maximum(np.abs(want), 1e-3)


def _literal_power(path: Path, spectrum: Spectrum) -> tuple[Spectrum, int]:
    """The spectrum with λ = 10 ** LOGLAM in NumPy's float32 power, and how many λ changed."""
    arms, changed = [], 0
    with fits.open(path) as hdus:
        for arm in (spectrum.blue, spectrum.red):
            loglam = np.sort(np.asarray(hdus[arm.extname].data["LOGLAM"], np.float32))
            literal = np.float32(10.0) ** loglam
            changed += int(np.sum(literal != arm.wavelength))
            arms.append(Arm(arm.extname, literal, arm.flux, arm.ivar, arm.mask, arm.snr))
    return Spectrum(spectrum.filename, spectrum.obsid, *arms), changed


def main() -> None:
    print(f"{'spectrum':<36} {'arm':<5} {'vs reference':>12} {'λ changed':>10} {'effect':>9}")
    for ref in sorted((SHARED / "published_rrnet" / "reference").glob("*.npy")):
        base, rv = re.match(r"(.*)_rv([+-][\d.]+)\.npy$", ref.name).groups()
        path = next((SHARED / "data" / "lamost_mrs").glob(base + "*"))
        want = np.load(ref)
        spectrum = read_mrs(path).coadd()
        got = preprocess(spectrum, float(rv))
        literal, changed = _literal_power(path, spectrum)
        moved = preprocess(literal, float(rv))
        for arm, sl in (("blue", slice(0, 3600)), ("red", slice(3600, 7200))):
            print(
                f"{base:<36} {arm:<5} {_relative(got[sl], want[sl]).max():12.1e} "
                f"{changed if arm == 'blue' else '':>10} {_relative(moved[sl], got[sl]).max():9.1e}"
            )


if __name__ == "__main__":
    main()
