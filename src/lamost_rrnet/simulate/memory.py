"""The in-memory API: labels → model, observed and rrnet2022-normalized arrays, no files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from lamost_rrnet.simulate.observe import BAD_PIXEL_RATE, ArmData, observe_coadds
from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED, Arm, Spectrum
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec, normalize, resample
from lamost_rrnet.spectra.synthesis.interpolation import cubic_columns
from lamost_rrnet.spectra.synthesis.model import Stars, synthesizer

#: Stars simulated together: the model spectra and temporaries of a chunk stay small enough to
#: be reused from one chunk to the next instead of being faulted in afresh (a third faster).
CHUNK_STARS = 128


def _per_star(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, float)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows for {n} stars")
    return arr


def _snr_pairs(snr, n: int) -> np.ndarray:
    arr = np.asarray(snr, float)
    if arr.ndim == 2:
        if arr.shape != (n, 2):
            raise ValueError(f"snr of shape {arr.shape}: use a number, (N,) or (N, 2)")
        return arr
    return np.repeat(_per_star(arr, n, "snr")[:, None], 2, axis=1)


def synthesize(labels: pd.DataFrame, wavelength: np.ndarray | None = None) -> np.ndarray:
    """Noiseless rest-frame spectra divided by their true continuum: float32 (N, λ).

    ``wavelength`` (vacuum Å, inside the MRS arms) defaults to the rrnet2022 7200-pixel grid.
    """
    synth = synthesizer()
    wave = RRNET2022.wavelength() if wavelength is None else np.asarray(wavelength, float)
    arms = {
        arm: (wave >= grid.wavelength[0]) & (wave <= grid.wavelength[-1])
        for arm, grid in synth.arms.items()
    }
    if not np.all(np.any(list(arms.values()), axis=0)):
        raise ValueError("wavelengths outside the simulated MRS arms")
    stars = Stars.from_labels(labels)
    out = np.empty((len(stars), wave.size), np.float32)
    columns = {
        arm: (inside, synth.arms[arm].position(wave[inside]))
        for arm, inside in arms.items()
        if inside.any()
    }
    for rows in _chunks(len(stars)):
        model = synth.model(stars.take(rows))
        for arm, (inside, pos) in columns.items():
            out[rows, inside] = cubic_columns(model[:, synth.arm_slice(arm)], pos)
    return out


def _chunks(n: int) -> list[slice]:
    """Stars in chunks of :data:`CHUNK_STARS`, taken from model to output one chunk at a time."""
    return [slice(start, min(start + CHUNK_STARS, n)) for start in range(0, n, CHUNK_STARS)]


@dataclass
class Observation:
    """Simulated coadds of a batch of stars: both arms in counts, with IVAR and masks."""

    blue: ArmData
    red: ArmData
    rv: np.ndarray  # km/s

    def __post_init__(self) -> None:
        self._wavelength = {
            COADD_BLUE: _dr7_wavelength(self.blue.wavelength),
            COADD_RED: _dr7_wavelength(self.red.wavelength),
        }

    def __len__(self) -> int:
        return int(self.rv.size)

    def spectrum(self, i: int, filename: str = "simulated") -> Spectrum:
        """Row ``i`` as a :class:`Spectrum`, as :func:`read_mrs` would give it from a DR7 file."""
        arms = []
        for name, data in ((COADD_BLUE, self.blue), (COADD_RED, self.red)):
            arms.append(
                Arm(
                    name,
                    self._wavelength[name],
                    data.flux[i],
                    data.ivar[i],
                    data.mask[i].astype(np.int32),
                    float(data.snr[i]),
                )
            )
        return Spectrum(filename, i, arms[0], arms[1])


def _dr7_wavelength(wavelength: np.ndarray) -> np.ndarray:
    # A DR7 file stores LOGLAM in float32; the reader powers it in float64, then rounds.
    loglam = np.log10(wavelength).astype(np.float32)
    return np.power(10.0, loglam.astype(np.float64)).astype(np.float32)


def simulate_observed(
    labels: pd.DataFrame,
    snr,
    rng: np.random.Generator,
    rv=None,
    *,
    bad_pixel_rate: float = BAD_PIXEL_RATE,
) -> Observation:
    """Coadd-like observed spectra (counts, IVAR, masks) of ``labels``, in memory.

    ``snr`` is a number, one per star, or (N, 2) for (blue, red); ``rv`` (km/s) a number or one
    per star, 0 when None.
    """
    stars = Stars.from_labels(labels)
    n = len(stars)
    rv_arr = np.zeros(n) if rv is None else _per_star(rv, n, "rv")
    snr_arr = _snr_pairs(snr, n)
    synth = synthesizer()
    arms: dict[str, ArmData] = {}
    for rows in _chunks(n):
        part = observe_coadds(
            synth,
            synth.model(stars.take(rows)),
            stars.teff[rows],
            rv_arr[rows],
            snr_arr[rows],
            rng,
            bad_pixel_rate,
        )
        # Each chunk is copied out while it is still in cache, and its memory serves the next.
        for arm, data in part.items():
            if arm not in arms:
                arms[arm] = ArmData(
                    data.wavelength,
                    *(np.empty((n, *a.shape[1:]), a.dtype) for a in _arrays(data)),
                )
            for dest, src in zip(_arrays(arms[arm]), _arrays(data), strict=True):
                dest[rows] = src
    return Observation(arms["blue"], arms["red"], rv_arr)


def _arrays(data: ArmData) -> tuple[np.ndarray, ...]:
    return data.flux, data.ivar, data.mask, data.snr


def simulate_normalized(
    labels: pd.DataFrame,
    snr,
    rng: np.random.Generator,
    rv=None,
    *,
    bad_pixel_rate: float = BAD_PIXEL_RATE,
    spec: PreprocessSpec = RRNET2022,
) -> np.ndarray:
    """Observed spectra put through the preprocessing ``spec``: float32 (N, spec.n_pixels).

    The coadds of :func:`simulate_observed` are moved to the rest frame at their true RV,
    resampled and continuum-normalized exactly as real files are, in batch.
    """
    obs = simulate_observed(labels, snr, rng, rv, bad_pixel_rate=bad_pixel_rate)
    flux = np.empty((len(obs), spec.n_pixels), np.float32)
    for i in range(len(obs)):
        flux[i] = resample(obs.spectrum(i), float(obs.rv[i]), spec)
    # The normalization's products are thin (rows × 6) and memory-bound: extra BLAS threads
    # only contend with each other (10x slower on a busy 2-core machine).
    with threadpool_limits(1):
        return normalize(flux, spec)
