"""The rrnet2022 preprocessing: published reference outputs, batched path, outliers, coverage."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lamost_rrnet.errors import CoverageError, RRNetError, UsageError
from lamost_rrnet.spectra.io import Arm, Spectrum, read_mrs
from lamost_rrnet.spectra.preprocess import (
    RRNET2022,
    PreprocessSpec,
    load_spec,
    normalize,
    normalize_reference,
    outlier_stats,
    preprocess,
    resample,
)


def test_load_spec_takes_the_name_or_a_spec_file(tmp_path):
    assert load_spec(RRNET2022.name) is RRNET2022
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("preprocessing:\n  name: narrow\n  poly_degree: 3\n")
    assert load_spec(model_yaml) == PreprocessSpec(name="narrow", poly_degree=3)
    with pytest.raises(UsageError, match="'no-such-spec'"):
        load_spec("no-such-spec")
    model_yaml.write_text("- 1\n")
    with pytest.raises(RRNetError, match="not a preprocessing spec"):
        load_spec(model_yaml)


def _references(shared_dir, real_spectra):
    out = []
    for ref in sorted((shared_dir / "published_rrnet" / "reference").glob("*.npy")):
        base, rv = re.match(r"(.*)_rv([+-][\d.]+)\.npy$", ref.name).groups()
        path = next(p for name, p in real_spectra.items() if name.startswith(base))
        out.append((path, float(rv), np.load(ref)))
    assert len(out) == 4
    return out


def _within(got, want):
    return np.abs(got - want) <= 1e-4 * np.maximum(np.abs(want), 1e-3)


def test_grid_is_7200_pixels_blue_then_red():
    wave = RRNET2022.wavelength()
    assert wave.size == RRNET2022.n_pixels == 7200
    assert wave[0] == 4968.0 and wave[3599] == pytest.approx(5327.9)
    assert wave[3600] == 6339.0 and wave[-1] == pytest.approx(6698.9)


def test_spec_round_trips_through_a_dict():
    assert PreprocessSpec.from_dict(RRNET2022.to_dict()) == RRNET2022
    assert RRNET2022.compatible(PreprocessSpec.from_dict(RRNET2022.to_dict()))
    assert not RRNET2022.compatible(PreprocessSpec(poly_degree=4))


def test_matches_the_published_reference_outputs_at_every_pixel(shared_dir, real_spectra):
    """The published outputs (docs/preprocessing.md, "Agreement"), every pixel of all four
    files, the S/N ≈ 0 one included: |got − want| ≤ 1e-4 · max(|want|, 1e-3)."""
    for path, rv, want in _references(shared_dir, real_spectra):
        got = preprocess(read_mrs(path).coadd(), rv)
        assert got.shape == want.shape == (7200,) and got.dtype == np.float32
        bad = np.flatnonzero(~_within(got, want))
        assert bad.size == 0, f"{path.name}: {bad.size} pixels differ, first at {bad[:5]}"


def test_batched_path_equals_the_per_spectrum_method(real_spectra):
    rng = np.random.default_rng(3)
    rows = [resample(read_mrs(p).coadd(), rv) for p in real_spectra.values() for rv in (-30, 12)]
    flux = np.stack(rows)
    noisy = flux * (1 + 0.02 * rng.standard_normal(flux.shape)).astype(np.float32)
    batch = np.concatenate([flux, noisy])
    got = normalize(batch)
    want = np.stack([normalize_reference(row) for row in batch])
    good = np.isfinite(want)
    np.testing.assert_allclose(got[good], want[good], rtol=1e-4, atol=1e-4)


def _synthetic_spectrum(
    bad_blue=(), bad_red=(), start_blue=4925.0, start_red=6300.0, n=4600, n_red=None
):
    rng = np.random.default_rng(1)
    arms = []
    for name, start, bad, size in (
        ("COADD_B", start_blue, bad_blue, n),
        ("COADD_R", start_red, bad_red, n_red or n),
    ):
        wave = (10 ** (np.log10(start) + 1e-5 * np.arange(size))).astype(np.float32)
        flux = (1000 + 10 * rng.standard_normal(size)).astype(np.float32)
        ivar = np.full(size, 1e-2, np.float32)
        mask = np.zeros(size, np.int32)
        for i in bad:
            ivar[i] = 0
        arms.append(Arm(name, wave, flux, ivar, mask, snr=100.0))
    return Spectrum("synthetic.fits", 1, arms[0], arms[1])


def test_outlier_stats_count_bad_pixels_and_runs():
    clean = _synthetic_spectrum()
    assert outlier_stats(clean) == (0, 0)
    # 40 consecutive bad source pixels in blue near 5000 Å: ~1.15 grid pixels each
    start = int(np.searchsorted(clean.blue.wavelength, 5000.0))
    spectrum = _synthetic_spectrum(bad_blue=range(start, start + 40), bad_red=(2000, 2500))
    n, run = outlier_stats(spectrum)
    assert 40 < n < 55
    assert 40 <= run < n
    # masked, non-positive and non-finite pixels count too
    spectrum.red.mask[1000] = 1
    spectrum.red.flux[1500] = -5
    spectrum.red.flux[1700] = np.nan
    assert outlier_stats(spectrum)[0] >= n + 3


def test_median_cleaned_line_cores_are_not_outliers(real_spectra):
    n, run = outlier_stats(read_mrs(real_spectra["med-58025-HIP9645901_sp02-051.fits.gz"]).coadd())
    assert n < 100 and run < 30


def test_coverage_error_names_the_missing_range():
    spectrum = _synthetic_spectrum(start_blue=4990.0, n=4000)
    with pytest.raises(CoverageError, match=r"COADD_B.*missing 4968\.0-49\d\d\.\d Å"):
        resample(spectrum, 0.0)
    with pytest.raises(CoverageError, match="COADD_R"):
        resample(_synthetic_spectrum(n_red=1500), 0.0)


def test_rv_shifts_the_rest_frame():
    spectrum = _synthetic_spectrum()
    spectrum.blue.flux[:] = 1000.0
    line = int(np.searchsorted(spectrum.blue.wavelength, 5100.0 * (1 + 100 / 299792.458)))
    spectrum.blue.flux[line - 2 : line + 3] = 500.0
    flux = resample(spectrum, 100.0)
    grid = RRNET2022.wavelength()[:3600]
    depth = 1000.0 - flux[:3600]
    assert abs(np.sum(depth * grid) / np.sum(depth) - 5100.0) < 0.02


def test_iteration_cap_stops_a_never_converging_fit():
    flux = np.ones((1, 7200), np.float32)
    flux[0, ::2] = 1e6  # pathological: every other pixel an extreme outlier
    out = normalize(flux)
    assert out.shape == (1, 7200)


def test_resampled_ivar_propagates_the_interpolations_variance():
    from lamost_rrnet.spectra.preprocess import resample_ivar_arm

    wave = np.array([0.0, 1.0, 2.0, 3.0])
    ivar = np.array([4.0, 1.0, 0.0, 2.0], np.float32)
    grid = np.array([0.0, 0.5, 1.0, 1.5, 3.0])
    got = resample_ivar_arm(wave, ivar, grid)
    # 0.5: (1/2)²/4 + (1/2)²/1 = 0.3125; 1.5 leans half on a pixel with no information.
    np.testing.assert_allclose(got, [4.0, 1 / 0.3125, 1.0, 0.0, 2.0], rtol=1e-6)
    assert got.dtype == np.float32


def test_resampled_ivar_matches_the_scatter_of_resampled_noise():
    from lamost_rrnet.spectra.preprocess import resample_arm, resample_ivar_arm

    rng = np.random.default_rng(3)
    wave = np.linspace(5000.0, 5010.0, 41)
    sigma = rng.uniform(0.5, 2.0, wave.size)
    grid = np.linspace(5000.5, 5009.5, 37)
    noise = rng.normal(0.0, sigma, (4000, wave.size))
    resampled = np.stack([resample_arm(wave, n, grid) for n in noise])
    predicted = 1.0 / resample_ivar_arm(wave, 1.0 / sigma**2, grid)
    np.testing.assert_allclose(resampled.var(axis=0), predicted, rtol=0.1)
