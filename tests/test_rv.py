"""RV estimates by cross-correlation with the package's own templates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lamost_rrnet.errors import SpectrumError
from lamost_rrnet.simulate import draw_labels, simulate_observed
from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.rv import estimate_rv

GOOD = (
    "med-58025-HIP9645901_sp02-051.fits.gz",
    "med-58408-TD230151N343645T01_sp01-015.fits",
    "med-58644-TD192102N424113K01_sp12-076.fits.gz",
)
ZERO_SNR = "med-58268-HIP95119KP01_sp12-076.fits.gz"


@pytest.mark.parametrize(("snr", "limit"), [(20.0, 1.0), (10.0, 3.0)])
def test_rv_of_simulated_spectra_is_accurate(snr, limit):
    rng = np.random.default_rng(int(snr))
    labels = draw_labels(40, rng)
    rv = rng.uniform(-400.0, 400.0, 40)
    obs = simulate_observed(labels, snr, rng, rv=rv)
    est = np.array([estimate_rv(obs.spectrum(i)) for i in range(len(obs))])
    error = est[:, 0] - rv
    assert np.median(np.abs(error)) < limit
    # The uncertainties are honest: most errors lie within 3σ.
    assert np.mean(np.abs(error) < 3 * est[:, 1]) > 0.85


def test_noise_and_empty_spectra_have_no_rv():
    rng = np.random.default_rng(1)
    obs = simulate_observed(draw_labels(1, rng), 30.0, rng, bad_pixel_rate=0.0)
    spectrum = obs.spectrum(0)
    noise = [
        replace(arm, flux=(1000 + 30 * rng.standard_normal(arm.flux.size)).astype(np.float32))
        for arm in (spectrum.blue, spectrum.red)
    ]
    with pytest.raises(SpectrumError, match="no RV"):
        estimate_rv(replace(spectrum, blue=noise[0], red=noise[1]))
    dead = [replace(arm, ivar=np.zeros_like(arm.ivar)) for arm in (spectrum.blue, spectrum.red)]
    with pytest.raises(SpectrumError, match="usable pixels"):
        estimate_rv(replace(spectrum, blue=dead[0], red=dead[1]))


def test_real_spectra(real_spectra):
    for name in GOOD:
        mrs = read_mrs(real_spectra[name])
        rv, err = estimate_rv(mrs.coadd())
        assert -300 < rv < 300 and 0 < err < 2
        # Single exposures of the same visit agree with the coadd.
        blue, red = mrs.exposure_pairs()[0]
        rv_exp, err_exp = estimate_rv(mrs.spectrum(blue, red))
        assert abs(rv_exp - rv) < 3 * np.hypot(err, err_exp) + 1.0
    with pytest.raises(SpectrumError, match="no RV"):
        estimate_rv(read_mrs(real_spectra[ZERO_SNR]).coadd())
