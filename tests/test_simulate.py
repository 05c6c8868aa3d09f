"""The simulator: population, physics, observations, files, catalogues, CLI and learnability."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import cho_factor, cho_solve

from lamost_rrnet.labels import CATALOGUE_LABELS, ELEMENTS
from lamost_rrnet.simulate import (
    draw_labels,
    simulate_normalized,
    simulate_observed,
    simulate_set,
    synthesize,
)
from lamost_rrnet.simulate.files import _catalogue_labels
from lamost_rrnet.simulate.observe import BAD_PIXEL, COSMIC_RAY, add_noise
from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.preprocess import RRNET2022, outlier_stats, preprocess
from lamost_rrnet.spectra.rv import estimate_rv
from lamost_rrnet.spectra.synthesis.atmosphere import microturbulence
from lamost_rrnet.spectra.synthesis.linelist import load_lines
from lamost_rrnet.spectra.synthesis.model import H_ALPHA, MG_B, RESOLUTION, synthesizer

CATALOGUE_COLUMNS = [
    "obsid", "filename", "extname_blue", "extname_red", "ra", "dec",
    "snr_blue", "snr_red", "rv", "lmjd",
]  # fmt: skip
NAME = re.compile(r"^med-(\d{5})-(\w+)_sp(\d{2})-(\d{3})\.fits(\.gz)?$")
WAVE = RRNET2022.wavelength()


def star(teff: float, logg: float, feh: float, n: int = 1, **xh: float) -> pd.DataFrame:
    """Labels of ``n`` copies of a star with scaled-solar abundances except ``xh``."""
    row = {"Teff[K]": teff, "Logg": logg, **{f"{e}H": feh for e in ELEMENTS}}
    row.update({f"{e}H": feh + v for e, v in xh.items()})
    return pd.DataFrame([row] * n)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    """A tiny set in each layout (4 stars, 1-2 visits, 2 exposures), written once."""
    out = {}
    for layout in ("dr7", "dr9"):
        path = tmp_path_factory.mktemp(layout)
        result = simulate_set(
            path, 4, visits=(1, 2), snr=(20, 60), seed=5, layout=layout, n_exposures=2
        )
        out[layout] = (path, result)
    return out


# -- population ------------------------------------------------------------------------------


def test_draw_labels_is_a_realistic_population():
    labels = draw_labels(3000, np.random.default_rng(3))
    assert list(labels.columns) == ["star_id", *CATALOGUE_LABELS, "vmic"]
    assert labels["star_id"].is_unique
    assert labels["Teff[K]"].between(4000, 6500).all()
    assert labels["FeH"].between(-1.2, 0.4).all()
    assert labels["FeH"].min() < -1.0 and labels["FeH"].max() > 0.3
    giants = labels["Logg"] < 3.3
    assert 0.3 < giants.mean() < 0.6
    assert labels.loc[giants, "Teff[K]"].max() < 5600  # giants sit on the red giant branch
    assert labels.loc[labels["Logg"] > 4.2, "Teff[K]"].std() > 500  # dwarfs span the range
    mgfe = labels["MgH"] - labels["FeH"]
    poor, rich = labels["FeH"] < -0.7, labels["FeH"] > -0.1
    assert mgfe[poor].mean() - mgfe[rich].mean() > 0.2
    assert 0.02 < mgfe[rich].std() < 0.15
    assert labels["vmic"].between(0.4, 2.8).all()
    again = draw_labels(3000, np.random.default_rng(3))
    pd.testing.assert_frame_equal(labels, again)


# -- physics ---------------------------------------------------------------------------------


def _line_windows(wave: np.ndarray, half: float = 1.0) -> np.ndarray:
    lines = np.sort(wave)
    idx = np.searchsorted(lines, WAVE)
    lo = lines[np.clip(idx - 1, 0, lines.size - 1)]
    hi = lines[np.clip(idx, 0, lines.size - 1)]
    return (np.abs(WAVE - lo) <= half) | (np.abs(WAVE - hi) <= half)


@pytest.mark.parametrize("base", [(4500, 2.5, 0.0), (5800, 4.4, 0.0), (6300, 4.2, -0.5)])
def test_each_element_changes_only_its_own_features(base):
    lines = load_lines()
    synth = synthesizer()
    molecular = {
        "C": [synth.mol_lines["CN A-X"].wave, synth.mol_lines["C2 d-a"].wave],
        "N": [synth.mol_lines["CN A-X"].wave],
    }
    labels = pd.concat([star(*base)] + [star(*base, **{e: 0.1}) for e in ELEMENTS])
    flux = synthesize(labels)
    for i, element in enumerate(ELEMENTS, start=1):
        delta = np.abs(flux[i] - flux[0])
        assert delta.sum() > 0, element
        windows = _line_windows(np.concatenate([lines.wave[lines.element == element]]
                                               + molecular.get(element, [])))  # fmt: skip
        if element == "Mg":
            # The b triplet's pressure-broadened wings respond to Mg far beyond ±1 Å.
            windows |= (WAVE > 5150) & (WAVE < 5205)
        share = delta[windows].sum() / delta.sum()
        assert share >= 0.8, f"{element}: {share:.2f} of the change at its features"
    # N acts through the CN red system (red arm); its blue N I lines are all but invisible.
    nitrogen = np.abs(flux[2] - flux[0])
    assert nitrogen[: WAVE.size // 2].sum() < 0.05 * nitrogen.sum()


def test_missing_labels_follow_iron_and_the_vmic_relation():
    short = pd.DataFrame({"Teff[K]": [4800.0], "Logg": [2.6], "FeH": [-0.3]})
    full = star(4800.0, 2.6, -0.3)
    full["vmic"] = microturbulence(full["Teff[K]"], full["Logg"])
    np.testing.assert_array_equal(synthesize(short), synthesize(full))
    with pytest.raises(ValueError, match="Logg"):
        synthesize(short.drop(columns="Logg"))


def test_stars_go_through_in_chunks_with_the_same_result(monkeypatch):
    """The in-memory API works in chunks of stars; rows do not depend on the chunking."""
    from lamost_rrnet.simulate import memory

    labels = draw_labels(7, np.random.default_rng(2))
    whole = synthesize(labels)
    observed = simulate_observed(labels, 40.0, np.random.default_rng(3), bad_pixel_rate=0.0)
    monkeypatch.setattr(memory, "CHUNK_STARS", 3)
    # Equal to float32 rounding: vectorized loops round their tails differently.
    np.testing.assert_allclose(synthesize(labels), whole, rtol=0, atol=2e-6)
    chunked = simulate_observed(labels, 40.0, np.random.default_rng(3), bad_pixel_rate=0.0)
    for arm in ("blue", "red"):
        got, want = getattr(chunked, arm), getattr(observed, arm)
        assert got.flux.shape == want.flux.shape and got.mask.dtype == want.mask.dtype
        assert (got.ivar > 0).all() and np.isfinite(got.flux).all()
        # Other random draws, the same stars: S/N 40 in each row, and rows in label order.
        np.testing.assert_allclose(got.snr, want.snr, rtol=0.1)
        continuum = np.median(got.flux, axis=1) / np.median(want.flux, axis=1)
        assert np.all((continuum > 0.1) & (continuum < 10))


def test_gravity_widens_the_mg_b_wings():
    flux = synthesize(pd.concat([star(5000, 2.5, 0.0), star(5000, 4.6, 0.0)]))
    wings = np.zeros(WAVE.size, bool)
    for line in MG_B[1:]:
        wings |= (np.abs(WAVE - line) > 1.0) & (np.abs(WAVE - line) < 3.0)
    giant, dwarf = flux[0][wings].mean(), flux[1][wings].mean()
    assert giant - dwarf > 0.05


def test_temperature_changes_halpha_wings_and_line_depth_ratios():
    flux = synthesize(pd.concat([star(t, 4.4, 0.0) for t in (4800, 5500, 6200)]))
    wing = (np.abs(WAVE - H_ALPHA) > 2.0) & (np.abs(WAVE - H_ALPHA) < 5.0)
    depth = 1 - flux[:, wing].mean(axis=1)
    assert depth[0] < depth[1] < depth[2] and depth[2] > 2 * depth[0]
    # A low-excitation Ti I line weakens against a high-excitation Fe I line as Teff rises.
    ti, fe = np.argmin(np.abs(WAVE - 5211.85)), np.argmin(np.abs(WAVE - 6752.71))
    ratio = (1 - flux[:, ti]) / (1 - flux[:, fe])
    assert ratio[0] > ratio[1] > ratio[2]


def test_instrumental_resolution_and_rv_shift():
    synth = synthesizer()
    column = synth.spread[:, 0].toarray().ravel()  # one line's profile on the model grid
    peak = np.argmax(column)
    half = np.flatnonzero(column > column[peak] / 2)
    fwhm = synth.wavelength[half[-1]] - synth.wavelength[half[0]]
    expected = synth.wavelength[peak] / RESOLUTION
    assert abs(fwhm - expected) < 0.15 * expected

    labels = star(5000, 4.5, 0.0, n=2)
    obs = simulate_observed(
        labels, 1e4, np.random.default_rng(1), rv=[0.0, 150.0], bad_pixel_rate=0.0
    )
    window = (obs.blue.wavelength > 5180) & (obs.blue.wavelength < 5192)
    lam = obs.blue.wavelength[window]
    centres = [lam[np.argmin(obs.blue.flux[i][window])] for i in range(2)]
    shift = centres[1] - centres[0]
    assert abs(shift - 5185.05 * 150.0 / 299792.458) < 0.25


def test_noise_matches_the_requested_snr_and_ivar():
    rng = np.random.default_rng(2)
    counts = np.full((4, 4000), 2000.0, np.float32) * np.linspace(0.5, 1.5, 4000, dtype=np.float32)
    flux, ivar = add_noise(rng, counts, np.array([10.0, 30.0, 100.0, 300.0]))
    pulls = (flux - counts) * np.sqrt(ivar)
    assert np.allclose(pulls.std(axis=1), 1.0, atol=0.05)
    snr = np.median(counts * np.sqrt(ivar), axis=1)
    assert np.allclose(snr, [10, 30, 100, 300], rtol=0.06)
    # Poisson-like: brighter pixels have the larger absolute noise.
    assert 1 / np.sqrt(ivar[0, -1]) > 1 / np.sqrt(ivar[0, 0])


def test_observed_spectra_have_blaze_snr_and_masked_bad_pixels():
    labels = draw_labels(20, np.random.default_rng(4))
    obs = simulate_observed(labels, 40.0, np.random.default_rng(5), bad_pixel_rate=2e-3)
    for arm in (obs.blue, obs.red):
        assert np.allclose(arm.snr, 40.0, rtol=0.15)
        bad = arm.mask == BAD_PIXEL
        assert bad.any() and np.all(arm.ivar[bad] == 0) and np.all(arm.flux[bad] == 0)
        assert np.all(arm.ivar[arm.mask == 0] > 0)
        good = arm.flux[0][arm.mask[0] == 0]
        edges = np.median(good[:200]), np.median(good[-200:])
        assert max(edges) < 0.95 * np.percentile(good, 95)  # a peaked, blaze-like shape
    clean = simulate_observed(labels, 40.0, np.random.default_rng(5), bad_pixel_rate=0.0)
    assert not clean.blue.mask.any() and not clean.red.mask.any()


# -- files and catalogues --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dr7", "dr9"])
def test_files_read_back_like_real_ones(small_sets, layout):
    path, result = small_sets[layout]
    files = sorted((path / "spectra").iterdir())
    assert len(files) == len(result.catalogue) >= 4
    for file, row in zip(files, result.catalogue.sort_values("filename").itertuples(), strict=True):
        assert NAME.match(file.name) and file.name == row.filename
        mrs = read_mrs(file)
        assert mrs.layout == layout
        head = mrs.header
        assert head["FILENAME"] == file.name.removesuffix(".gz")
        assert head["OBSID"] == row.obsid and head["LMJD"] == row.lmjd
        assert head["VACUUM"] is True and head["HELIO"] is True and "HELIO_RV" in head
        assert head["DATA_V"].startswith("LAMOST DR") and head["PLANID"] in file.name
        assert mrs.designation.startswith("LAMOST J")
        assert abs(head["RA"] - row.ra) < 1e-5 and abs(head["DEC"] - row.dec) < 1e-5
        blue, red = mrs.arms["COADD_B"], mrs.arms["COADD_R"]
        assert 4890 < blue.wavelength[0] < 4935 and 5360 < blue.wavelength[-1] < 5420
        assert 6265 < red.wavelength[0] < 6315 and 6830 < red.wavelength[-1] < 6890
        step = np.diff(np.log10(blue.wavelength.astype(float)))  # float32 LOGLAM: ±2.4e-7
        assert abs(step.mean() - 1e-5) < 1e-9 and np.abs(step - 1e-5).max() < 5e-7
        assert blue.snr == row.snr_blue and red.snr == row.snr_red
        pairs = mrs.exposure_pairs()
        assert len(pairs) == 2
        for b, r in pairs:
            assert mrs.arms[b].flux.size == mrs.arms[r].flux.size == 4136
            assert mrs.arms[b].header["LMJM"] == b[2:] and np.isfinite(mrs.arms[b].snr)
        normalized = preprocess(mrs.coadd(), row.rv, RRNET2022)
        assert np.all(np.isfinite(normalized))
        # The continuum sits near 1 (the real files give medians of 1.004-1.006).
        assert 0.99 < np.median(normalized) < 1.02 and np.percentile(normalized, 75) < 1.08
        assert outlier_stats(mrs.coadd(), row.rv)[0] < 100
        assert abs(estimate_rv(mrs.coadd())[0] - row.rv) < 2.0


def test_catalogues_have_exactly_the_design_columns(small_sets):
    path, result = small_sets["dr7"]
    catalogue = pd.read_csv(path / "lamost_catalogue.csv")
    labels = pd.read_csv(path / "labels.csv")
    assert list(catalogue.columns) == CATALOGUE_COLUMNS
    expected = ["star_id", "ra", "dec"]
    expected += [c for label in CATALOGUE_LABELS for c in (label, f"{label}_err")]
    assert list(labels.columns) == [*expected, "vmic", "quality_flag"]
    assert labels["star_id"].is_unique and len(labels) == 4
    assert (catalogue["extname_blue"] == "COADD_B").all()
    assert (catalogue["extname_red"] == "COADD_R").all()
    assert catalogue["obsid"].is_unique and catalogue["filename"].is_unique
    assert set(labels["quality_flag"]) <= {"good", "bad"}
    # Each star's label position is a sub-arcsecond jitter away from its LAMOST position.
    for row in labels.itertuples(index=False):
        dra = (catalogue["ra"] - row.ra) * np.cos(np.radians(row.dec))
        sep = np.hypot(dra, catalogue["dec"] - row.dec) * 3600
        assert 0 < sep.min() < 1.0
    true = result.labels.set_index("star_id")
    good = labels[labels["quality_flag"] == "good"].set_index("star_id")
    assert np.allclose(good["Teff[K]"], true.loc[good.index, "Teff[K]"], atol=0.01)


def test_a_small_fraction_of_stars_is_flagged_bad():
    rng = np.random.default_rng(0)
    labels = draw_labels(2000, rng)
    sky = pd.DataFrame({"ra": rng.uniform(0, 360, 2000), "dec": rng.uniform(-5, 60, 2000)})
    table = _catalogue_labels(labels, sky, rng, 0.03)
    bad = table["quality_flag"] == "bad"
    assert 0.015 < bad.mean() < 0.05
    good = ~bad
    assert np.allclose(table.loc[good, "FeH"], labels.loc[good, "FeH"], atol=1e-4)
    assert np.abs(table.loc[bad, "Teff[K]"] - labels.loc[bad, "Teff[K]"]).mean() > 100


def test_same_seed_gives_identical_bytes_and_no_compress_writes_fits(tmp_path):
    runs = []
    for name, seed in (("a", 9), ("b", 9), ("c", 10)):
        simulate_set(tmp_path / name, 2, visits=1, snr=(30, 30), seed=seed, n_exposures=2)
        runs.append({p.relative_to(tmp_path / name): p.read_bytes()
                     for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})  # fmt: skip
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    plain = simulate_set(
        tmp_path / "d", 2, visits=1, snr=(30, 30), seed=9, n_exposures=2, compress=False
    )
    names = sorted(p.name for p in (tmp_path / "d" / "spectra").iterdir())
    assert names == sorted(plain.catalogue["filename"]) and all(n.endswith(".fits") for n in names)
    for name in names:
        raw = read_mrs(tmp_path / "d" / "spectra" / name)
        packed = read_mrs(tmp_path / "a" / "spectra" / (name + ".gz"))
        np.testing.assert_array_equal(raw.arms["COADD_B"].flux, packed.arms["COADD_B"].flux)


def test_resume_rewrites_only_missing_files_and_defects_are_masked(tmp_path):
    out = tmp_path / "set"
    first = simulate_set(out, 3, visits=1, seed=4, n_exposures=2, cosmic_rate=5e-3,
                         bad_pixel_rate=2e-3)  # fmt: skip
    files = sorted((out / "spectra").iterdir())
    original = files[1].read_bytes()
    files[1].unlink()
    with pytest.raises(Exception, match="not empty"):
        simulate_set(out, 3, visits=1, seed=4, n_exposures=2)
    again = simulate_set(out, 3, visits=1, seed=4, n_exposures=2, cosmic_rate=5e-3,
                         bad_pixel_rate=2e-3, resume=True)  # fmt: skip
    assert again.n_written == 1 and files[1].read_bytes() == original
    pd.testing.assert_frame_equal(first.catalogue, again.catalogue)

    mrs = read_mrs(files[0])
    exposures = [a for a in mrs.arms.values() if a.kind == "exposure"]
    hits = [a for a in exposures if np.any(a.mask & COSMIC_RAY)]
    assert hits, "no cosmic rays at 5e-3 per pixel"
    for arm in hits:
        spikes = (arm.mask & COSMIC_RAY) != 0
        assert np.median(arm.flux[spikes]) > np.median(arm.flux)
    coadd = mrs.arms["COADD_B"]
    dead = (coadd.andmask & BAD_PIXEL) != 0  # bad columns: masked in every exposure
    assert dead.any() and np.all(coadd.ivar[dead] == 0) and np.all(coadd.flux[dead] == 0)
    assert np.all(coadd.mask[dead] & BAD_PIXEL)


def test_cli_writes_a_set_and_rejects_impossible_options(run_cli, tmp_path):
    out = tmp_path / "sim"
    code, stdout, stderr = run_cli("simulate", out, "--stars", "2", "--visits", "1",
                                   "--n-exposures", "2", "--seed", "3", "--layout", "dr9",
                                   "--no-compress", "--quiet")  # fmt: skip
    assert code == 0 and stdout == ""
    files = list((out / "spectra").iterdir())
    assert len(files) == 2 and all(f.suffix == ".fits" for f in files)
    assert read_mrs(files[0]).layout == "dr9"
    for args in (
        ("--stars", "0"),
        ("--snr", "50", "10"),
        ("--layout", "dr8"),
        ("--visits", "3-1"),
    ):
        code, _, stderr = run_cli("simulate", tmp_path / "new", *args)
        assert code == 2, args
    code, _, stderr = run_cli("simulate", out, "--stars", "2")
    assert code == 2 and "empty" in stderr
    code, _, _ = run_cli("simulate", out, "--stars", "1", "--visits", "1", "--n-exposures", "2",
                         "--overwrite", "--quiet")  # fmt: skip
    assert code == 0 and len(list((out / "spectra").iterdir())) == 1


# -- learnability ----------------------------------------------------------------------------


def test_ridge_regression_learns_teff_logg_feh_from_simulated_spectra():
    rng = np.random.default_rng(11)
    labels = draw_labels(4000, rng)
    flux = simulate_normalized(labels, rng.uniform(30, 100, 4000), rng)
    x = np.clip(flux, *RRNET2022.clip).astype(np.float32)
    train, test = slice(0, 3000), slice(3000, None)
    mean = x[train].mean(axis=0)
    xtr, xte = x[train] - mean, x[test] - mean
    kernel = xtr @ xtr.T  # dual ridge: 3000 × 3000 instead of 7200 × 7200
    names = ["Teff[K]", "Logg", "FeH"]
    y = labels[names].to_numpy()
    centre = y[train].mean(axis=0)
    kernel[np.diag_indices(3000)] += 10.0
    alpha = cho_solve(cho_factor(kernel), (y[train] - centre).astype(np.float32))
    pred = (xte @ xtr.T) @ alpha + centre
    mae = np.abs(pred - y[test]).mean(axis=0)
    ratio = mae / y[test].std(axis=0)
    assert np.all(ratio < 0.25), dict(zip(names, ratio.round(3), strict=True))
