"""Agreement of our rrnet2022 preprocessing with the published reference outputs.

Prints, per real spectrum and arm, the fraction of pixels within FACTS.md's criterion
|got - want| <= 1e-4 max(|want|, 1e-3), the median and the worst relative difference.
Run: ``python benchmarks/reference_agreement.py`` (needs ../shared).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.preprocess import preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    print(f"{'spectrum':<42} {'arm':<5} {'within':>8} {'median':>9} {'worst':>9}")
    for ref in sorted((SHARED / "published_rrnet" / "reference").glob("*.npy")):
        base, rv = re.match(r"(.*)_rv([+-][\d.]+)\.npy$", ref.name).groups()
        path = next((SHARED / "data" / "lamost_mrs").glob(base + "*"))
        want = np.load(ref)
        got = preprocess(read_mrs(path).coadd(), float(rv))
        for arm, sl in (("blue", slice(0, 3600)), ("red", slice(3600, 7200))):
            g, w = got[sl], want[sl]
            scale = np.maximum(np.abs(w), 1e-3)
            rel = np.abs(g - w) / scale
            print(
                f"{base:<42} {arm:<5} {np.mean(rel <= 1e-4):8.2%} "
                f"{np.median(rel):9.1e} {rel.max():9.1e}"
            )


if __name__ == "__main__":
    main()
