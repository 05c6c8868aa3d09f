"""A simulated set on disk: MRS FITS files, ``lamost_catalogue.csv`` and ``labels.csv``.

Stars sit in LAMOST-like fields (plates of 16 spectrographs × 250 fibres, 2.5° in radius);
each field is observed at several epochs, and each star at some of them (its visits). Every
visit is one file, named and laid out like a real MRS file, with single exposures and the
coadd made from them. Each observation draws its noise from its own random stream, so a run
can resume, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from lamost_rrnet.atomic import atomic_write_bytes
from lamost_rrnet.columns import LAMOST_COLUMNS
from lamost_rrnet.errors import OutputExistsError
from lamost_rrnet.labels import CATALOGUE_LABELS
from lamost_rrnet.simulate.observe import (
    BAD_PIXEL_RATE,
    COSMIC_RATE,
    EXPOSURE_PIXELS,
    Coverage,
    combine,
    defect_runs,
    observe_exposures,
    snr_ratio,
    spectrograph_coverage,
)
from lamost_rrnet.simulate.population import draw_labels
from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED, Arm, encode_mrs
from lamost_rrnet.spectra.synthesis.model import Stars, synthesizer

LAYOUTS = ("dr7", "dr9")
FIELD_STARS = 1000  # stars per simulated field (a plate holds up to 4000)
FIELD_RADIUS = 2.5  # degrees
LABEL_COLUMNS = (
    "star_id",
    "ra",
    "dec",
    *(c for label in CATALOGUE_LABELS for c in (label, f"{label}_err")),
    "vmic",
    "quality_flag",
)
_OUR_FILES = ("lamost_catalogue.csv", "labels.csv")


@dataclass(frozen=True)
class Visit:
    """One observation of one star: a file."""

    index: int
    star: int
    obsid: int
    filename: str
    lmjd: int
    planid: str
    spectrograph: int
    fiber: int
    rv: float
    snr: tuple[float, float]  # requested coadd S/N (blue, red)
    n_exposures: int
    exptime: int
    first_minute: int  # LMJM of the first exposure


@dataclass
class SimulatedSet:
    """What :func:`simulate_set` wrote."""

    directory: Path
    labels: pd.DataFrame  # the true labels, one row per star
    catalogue: pd.DataFrame  # lamost_catalogue.csv
    n_written: int  # files written by this run (the others existed: resume)


def _planid(ra: float, dec: float, suffix: str) -> str:
    h, rem = divmod(ra / 15.0 * 3600.0, 3600.0)
    m, s = divmod(rem, 60.0)
    sign = "N" if dec >= 0 else "S"
    d, rem = divmod(abs(dec) * 3600.0, 3600.0)
    dm, ds = divmod(rem, 60.0)
    ra_text = f"{int(h):02d}{int(m):02d}{int(s):02d}"
    return f"TD{ra_text}{sign}{int(d):02d}{int(dm):02d}{int(ds):02d}{suffix}"


def designation(ra: float, dec: float) -> str:
    """'LAMOST Jhhmmss.ss+ddmmss.s' as in the DESIG keyword."""
    h, rem = divmod(round(ra / 15.0 * 3600.0, 2), 3600.0)
    m, s = divmod(rem, 60.0)
    sign = "+" if dec >= 0 else "-"
    d, rem = divmod(round(abs(dec) * 3600.0, 1), 3600.0)
    dm, ds = divmod(rem, 60.0)
    return f"LAMOST J{int(h):02d}{int(m):02d}{s:05.2f}{sign}{int(d):02d}{int(dm):02d}{ds:04.1f}"


def _range(value, name: str) -> tuple[int, int]:
    lo, hi = (int(value), int(value)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))
    if lo < 1 or hi < lo:
        raise ValueError(f"{name} must be a positive range low <= high, not {value}")
    return lo, hi


def plan_visits(
    n_stars: int,
    rng: np.random.Generator,
    visits: tuple[int, int],
    snr: tuple[float, float],
    n_exposures: tuple[int, int],
    teff: np.ndarray,
) -> tuple[pd.DataFrame, list[Visit]]:
    """Sky positions of the stars (a frame with ra, dec) and the list of their visits."""
    n_fields = int(np.ceil(n_stars / FIELD_STARS))
    field = np.repeat(np.arange(n_fields), FIELD_STARS)[:n_stars]
    centre_ra = rng.uniform(0.0, 360.0, n_fields)
    centre_dec = np.degrees(
        np.arcsin(rng.uniform(np.sin(np.radians(-5)), np.sin(np.radians(60)), n_fields))
    )
    radius = FIELD_RADIUS * np.sqrt(rng.random(n_stars))
    angle = rng.uniform(0.0, 2 * np.pi, n_stars)
    dec = centre_dec[field] + radius * np.sin(angle)
    ra = (centre_ra[field] + radius * np.cos(angle) / np.cos(np.radians(dec))) % 360.0
    slots = np.concatenate(
        [rng.permutation(16 * 250)[: (field == f).sum()] for f in range(n_fields)]
    )
    spectrograph = slots // 250 + 1
    fiber = slots % 250 + 1

    systemic = np.clip(rng.normal(-15.0, 45.0, n_stars), -400.0, 400.0)
    binary = rng.random(n_stars) < 0.15
    amplitude = np.where(binary, rng.uniform(5.0, 40.0, n_stars), 0.0)
    ratio = snr_ratio(teff, rng)
    n_visits = rng.integers(visits[0], visits[1] + 1, n_stars)

    plans: list[Visit] = []
    plate = 900
    for f in range(n_fields):
        members = np.flatnonzero(field == f)
        n_epochs = int(n_visits[members].max())
        days = 58000 + 40 * f + np.cumsum(rng.integers(1, 60, n_epochs))
        seen = {int(s): np.sort(rng.choice(n_epochs, n_visits[s], replace=False)) for s in members}
        for epoch in range(n_epochs):
            planid = _planid(centre_ra[f], centre_dec[f], "T01")
            exptime = int(rng.choice([600, 1200]))
            first = (int(days[epoch]) - 1) * 1440 + int(rng.integers(1150, 1300))
            for s in members:
                if epoch not in seen[int(s)]:
                    continue
                phase = rng.uniform(0.0, 2 * np.pi)
                rv = systemic[s] + amplitude[s] * np.sin(phase) + rng.normal(0.0, 0.3)
                s_blue = float(np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]))))
                ratio_s = max(float(ratio[s]), 1.0)
                sp, fb = int(spectrograph[s]), int(fiber[s])
                plans.append(
                    Visit(
                        index=len(plans),
                        star=int(s),
                        obsid=plate * 1_000_000 + sp * 1000 + fb,
                        filename=f"med-{int(days[epoch])}-{planid}_sp{sp:02d}-{fb:03d}.fits",
                        lmjd=int(days[epoch]),
                        planid=planid,
                        spectrograph=sp,
                        fiber=fb,
                        rv=float(rv),
                        snr=(s_blue, s_blue * ratio_s),
                        n_exposures=int(rng.integers(n_exposures[0], n_exposures[1] + 1)),
                        exptime=exptime,
                        first_minute=first,
                    )
                )
            plate += 1
    return pd.DataFrame({"ra": ra, "dec": dec}), plans


def _time_text(minute: int, utc: bool) -> str:
    """ISO time of an LMJM minute (local Beijing time, or UTC eight hours earlier)."""
    ts = pd.Timestamp("1858-11-17") + pd.Timedelta(minutes=int(minute) - (480 if utc else 0))
    return ts.strftime("%Y-%m-%dT%H:%M:%S")


class _Instrument:
    """The spectrographs of a run: their coverage and bad columns, fixed for all visits."""

    def __init__(self, rng: np.random.Generator, bad_pixel_rate: float):
        self.coverage = [spectrograph_coverage(rng) for _ in range(16)]
        self.bad = [
            {
                arm: np.flatnonzero(defect_runs(rng, (1, EXPOSURE_PIXELS), bad_pixel_rate, 5)[0])
                for arm in ("blue", "red")
            }
            for _ in range(16)
        ]
        self.trailing = [
            {arm: int(rng.integers(0, 30)) for arm in ("blue", "red")} for _ in range(16)
        ]


def _observation_arms(
    visit: Visit,
    model: np.ndarray,
    teff: float,
    instrument: _Instrument,
    cosmic_rate: float,
    seed: int,
) -> tuple[list[Arm], list[float]]:
    """The coadd and exposure arms of one visit, and the coadds' S/N."""
    rng = np.random.default_rng([seed, 2, visit.index])
    synth = synthesizer()
    sp = visit.spectrograph - 1
    lmjm = [visit.first_minute + k * (visit.exptime // 60 + 4) for k in range(visit.n_exposures)]
    transparency = rng.uniform(0.6, 1.0, visit.n_exposures)
    level = np.exp(rng.uniform(np.log(400.0), np.log(4000.0)))
    coadds: list[Arm] = []
    exposures: dict[int, list[Arm]] = {m: [] for m in lmjm}
    snrs = []
    for k, arm in enumerate(("blue", "red")):
        cov: Coverage = instrument.coverage[sp][arm]
        per_exposure = (
            visit.snr[k] / np.sqrt(visit.n_exposures) * np.sqrt(transparency / transparency.mean())
        )
        exps = observe_exposures(
            synth,
            model,
            arm,
            cov,
            teff,
            visit.rv,
            per_exposure,
            level * (1.0 + 1.5 * k) * transparency,
            rng,
            instrument.bad[sp][arm],
            cosmic_rate,
        )
        loglam = cov.exposure_loglam()
        side = "B" if arm == "blue" else "R"
        for m, exp in zip(lmjm, exps, strict=True):
            header = {
                "LMJM": str(m),
                "EXPTIME": visit.exptime,
                "DATE-OBS": _time_text(m + visit.exptime // 120, utc=True),
                "DATE-BEG": _time_text(m, utc=False),
                "DATE-END": _time_text(m + visit.exptime // 60, utc=False),
            }
            exposures[m].append(
                Arm(
                    f"{side}-{m}",
                    10.0**loglam,
                    exp.flux,
                    exp.ivar,
                    exp.mask.astype(np.int32),
                    exp.snr,
                    header=header,
                )
            )
        grid = cov.coadd_grid(instrument.trailing[sp][arm])
        flux, ivar, andmask, ormask = combine(loglam, exps, grid)
        snr = float(np.median(flux * np.sqrt(ivar)))
        snrs.append(round(snr, 2))
        header = {
            "LMJMLIS0": "-".join(str(m) for m in lmjm),
            "DATE-OBS": _time_text(lmjm[len(lmjm) // 2], utc=True),
        }
        coadds.append(
            Arm(
                COADD_BLUE if arm == "blue" else COADD_RED,
                grid.wavelength,
                flux,
                ivar,
                ormask.astype(np.int32),
                snr,
                andmask=andmask.astype(np.int32),
                header=header,
            )
        )
    ordered = coadds + [a for m in lmjm for a in exposures[m] if a.extname.startswith("B")]
    ordered += [a for m in lmjm for a in exposures[m] if a.extname.startswith("R")]
    return ordered, snrs


def _primary_header(
    visit: Visit, ra: float, dec: float, layout: str, helio: float
) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) triples, as ``encode_mrs`` takes them: no astropy cards."""
    return [
        ("FILENAME", visit.filename, "File name (without compression suffix)"),
        ("OBSID", visit.obsid, "Unique number ID of this spectrum"),
        ("AUTHOR", "lamost-rrnet simulate", "Who compiled the information"),
        ("DATA_V", "LAMOST DR7" if layout == "dr7" else "LAMOST DR9 v1", "Data release layout"),
        ("N_EXTEN", 2 + 2 * visit.n_exposures, "The extension number"),
        ("ORIGIN", "lamost-rrnet", "Simulated spectrum, not a LAMOST observation"),
        ("TELESCOP", "LAMOST", "GuoShouJing Telescope (simulated)"),
        (
            "DATE-OBS",
            _time_text(visit.first_minute + visit.n_exposures * (visit.exptime // 120), True),
            "The observation median UTC",
        ),
        ("LMJD", visit.lmjd, "Local Modified Julian Day"),
        ("MJD", visit.lmjd - 1, "Modified Julian Day"),
        ("PLANID", visit.planid, "Plan ID in use"),
        ("RA", round(ra, 6), "[deg] Right ascension of object"),
        ("DEC", round(dec, 6), "[deg] Declination of object"),
        ("RA_OBS", round(ra, 6), "[deg] Right ascension during observing"),
        ("DEC_OBS", round(dec, 6), "[deg] Declination during observing"),
        ("DESIG", designation(ra, dec), "Designation of LAMOST target"),
        ("FIBERID", visit.fiber, "Fiber ID of Object"),
        ("SPID", visit.spectrograph, "Spectrograph ID"),
        ("OBJTYPE", "Star", "Object type from input catalog"),
        ("NEXP_B", visit.n_exposures, "Number of valid blue exposures"),
        ("COMBIN_B", True, "Whether the combined data of B band exists"),
        ("NEXP_R", visit.n_exposures, "Number of valid red exposures"),
        ("COMBIN_R", True, "Whether the combined data of R band exists"),
        ("HELIO", True, "Heliocentric correction"),
        ("HELIO_RV", round(helio, 5), "[km/s] Heliocentric correction"),
        ("VACUUM", True, "Wavelengths are in vacuum"),
    ]


def _prepare_directory(out: Path, overwrite: bool, resume: bool) -> None:
    spectra = out / "spectra"
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise OutputExistsError(f"{out}: the directory is not empty (use overwrite or resume)")
    if overwrite and not resume:
        for name in _OUR_FILES:
            (out / name).unlink(missing_ok=True)
        if spectra.is_dir():
            for path in spectra.glob("med-*.fits*"):
                path.unlink()
    spectra.mkdir(parents=True, exist_ok=True)


def _catalogue_labels(
    labels: pd.DataFrame, sky: pd.DataFrame, rng: np.random.Generator, bad_fraction: float
) -> pd.DataFrame:
    """labels.csv: sub-arcsecond offsets from the LAMOST positions, errors, quality flags."""
    n = len(labels)
    jitter = np.clip(rng.normal(0.0, 0.25, (n, 2)), -0.9, 0.9) / 3600.0
    dec = np.clip(sky["dec"].to_numpy() + jitter[:, 1], -90.0, 90.0)
    ra = (sky["ra"].to_numpy() + jitter[:, 0] / np.cos(np.radians(dec))) % 360.0
    bad = rng.random(n) < bad_fraction
    out = {"star_id": labels["star_id"].to_numpy(), "ra": ra.round(7), "dec": dec.round(7)}
    for label in CATALOGUE_LABELS:
        true = labels[label].to_numpy(float)
        if label == "Teff[K]":
            err, decimals, spoil = rng.uniform(25.0, 80.0, n), 2, 400.0
        elif label == "Logg":
            err, decimals, spoil = rng.uniform(0.03, 0.10, n), 4, 0.6
        else:
            hard = label[:-1] in ("C", "N", "O", "S", "K", "Cu")
            err = rng.uniform(0.04, 0.15, n) if hard else rng.uniform(0.02, 0.08, n)
            decimals, spoil = 4, 0.4
        # Rows flagged bad carry labels spoilt by several σ: the cut must remove them.
        value = np.where(bad, true + rng.normal(0.0, spoil, n), true)
        out[label] = value.round(decimals)
        out[f"{label}_err"] = np.where(bad, err * 3, err).round(decimals)
    out["vmic"] = labels["vmic"].to_numpy(float).round(3)
    out["quality_flag"] = np.where(bad, "bad", "good")
    return pd.DataFrame(out)[list(LABEL_COLUMNS)]


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


def _existing_snr(path: Path) -> list[float]:
    with fits.open(path, memmap=False) as hdul:
        return [float(hdul[COADD_BLUE].header["SNR"]), float(hdul[COADD_RED].header["SNR"])]


def simulate_set(
    out_dir: str | Path,
    n_stars: int,
    visits: tuple[int, int] | int = (1, 4),
    snr: tuple[float, float] = (10.0, 150.0),
    seed: int = 1,
    layout: str = "dr7",
    n_exposures: tuple[int, int] | int = (2, 4),
    *,
    compress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    cosmic_rate: float = COSMIC_RATE,
    bad_pixel_rate: float = BAD_PIXEL_RATE,
    bad_fraction: float = 0.03,
    chunk: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulatedSet:
    """Write a simulated set (docs/architecture.md, "Simulated set") into ``out_dir``.

    ``n_stars`` stars, each with ``visits`` (low, high) observations of coadd S/N drawn
    log-uniformly in ``snr`` (the blue arm; the red one is higher, by the star's colour), and
    ``n_exposures`` single exposures per file. ``layout`` is dr7 (LOGLAM) or dr9 (WAVELENGTH).
    A non-empty ``out_dir`` is refused unless ``overwrite`` (our files are replaced) or
    ``resume`` (files already there are kept). ``on_progress(done, total)`` is called per file.
    """
    if int(n_stars) < 1:
        raise ValueError(f"n_stars must be at least 1, not {n_stars}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use dr7 or dr9")
    lo_snr, hi_snr = (float(snr[0]), float(snr[1]))
    if not 0 < lo_snr <= hi_snr:
        raise ValueError(f"the S/N range must be 0 < low <= high, not {snr}")
    visits = _range(visits, "visits")
    n_exposures = _range(n_exposures, "n_exposures")
    out = Path(out_dir)
    _prepare_directory(out, overwrite, resume)

    streams = np.random.SeedSequence(int(seed)).spawn(3)
    labels = draw_labels(int(n_stars), np.random.default_rng(streams[0]))
    plan_rng = np.random.default_rng(streams[1])
    stars = Stars.from_labels(labels)
    sky, plan = plan_visits(
        int(n_stars), plan_rng, visits, (lo_snr, hi_snr), n_exposures, stars.teff
    )
    instrument = _Instrument(plan_rng, bad_pixel_rate)
    helio = plan_rng.uniform(-30.0, 30.0, len(plan))
    suffix = ".gz" if compress else ""
    synth = synthesizer()

    rows = []
    written = 0
    for start in range(0, len(plan), chunk):
        part = plan[start : start + chunk]
        paths = [out / "spectra" / (v.filename + suffix) for v in part]
        todo = [i for i, p in enumerate(paths) if not (resume and p.exists())]
        models = synth.model(stars.take([part[i].star for i in todo])) if todo else None
        row_of = {i: k for k, i in enumerate(todo)}
        for i, (visit, path) in enumerate(zip(part, paths, strict=True)):
            ra, dec = float(sky["ra"].iloc[visit.star]), float(sky["dec"].iloc[visit.star])
            if i in row_of:
                model = models[row_of[i] : row_of[i] + 1]
                arms, snrs = _observation_arms(
                    visit, model, float(stars.teff[visit.star]), instrument, cosmic_rate, int(seed)
                )
                header = _primary_header(visit, ra, dec, layout, float(helio[visit.index]))
                atomic_write_bytes(path, encode_mrs(header, arms, layout, 1 if compress else None))
                written += 1
            else:
                snrs = _existing_snr(path)
            rows.append(
                {
                    "obsid": visit.obsid,
                    "filename": path.name,
                    "extname_blue": COADD_BLUE,
                    "extname_red": COADD_RED,
                    "ra": round(ra, 7),
                    "dec": round(dec, 7),
                    "snr_blue": snrs[0],
                    "snr_red": snrs[1],
                    "rv": round(visit.rv, 3),
                    "lmjd": visit.lmjd,
                }
            )
            if on_progress is not None:
                on_progress(len(rows), len(plan))

    catalogue = pd.DataFrame(rows, columns=list(LAMOST_COLUMNS))
    label_rng = np.random.default_rng(streams[2])
    atomic_write_bytes(out / "lamost_catalogue.csv", _csv_bytes(catalogue))
    atomic_write_bytes(
        out / "labels.csv", _csv_bytes(_catalogue_labels(labels, sky, label_rng, bad_fraction))
    )
    return SimulatedSet(out, labels, catalogue, written)
