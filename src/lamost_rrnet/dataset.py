"""The prepared dataset: preprocessed flux, labels and metadata in one HDF5 file.

Layout (docs/architecture.md, "Dataset file"):

=================  ==============================================================
``/flux``          float32 (N, n_pixels), chunked by rows
``/ivar``          float32 (N, n_pixels), inverse variance of ``/flux`` (format 2; optional)
``/labels``        float32 (N, L), attribute ``names``
``/label_errors``  float32 (N, L), NaN where unknown
``/meta/<column>`` one 1-D dataset per column (strings are UTF-8)
root attributes    ``preprocessing`` (JSON), ``lamost_rrnet_version``, ``created``,
                   ``format_version``
=================  ==============================================================

Format 2 added ``/ivar`` and ``format_version``; a file without the attribute is format 1 and
is still read (:meth:`Dataset.ivar` then falls back to each arm's S/N).

:func:`write_dataset` writes one in one call; :class:`DatasetWriter` builds one in appends,
each committed as its own file, and resumes a build killed at any point; :func:`open_dataset`
reads one with chunked reads, so that training never holds more than a batch of flux in
memory.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from lamost_rrnet._version import __version__
from lamost_rrnet.atomic import (
    atomic_path,
    atomic_write_bytes,
    fsync_path,
    remove_stale_temporaries,
    replace_durably,
)
from lamost_rrnet.errors import DatasetError, OutputExistsError
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec

SPLITS = ("train", "valid", "test")
STRING_COLUMNS = ("filename", "extname_blue", "extname_red", "star_id", "rv_source", "split")
#: A dataset row's resume key: the reference table's file and arms (a catalogue's row is
#: keyed by its input's path instead: catalogue.KEY_COLUMNS).
ROW_KEY = ("filename", "extname_blue", "extname_red")
# 8 rows are 230 kB: a random row costs little more than itself, a batch stays in the cache.
CHUNK_ROWS = 8
_CACHE_BYTES = 64 * 2**20
_STR = h5py.string_dtype("utf-8")
# The work directory of a build (DatasetWriter): what it holds, by name.
_BUILD, _BASE, _ASSEMBLED, _FINISHED = "build.json", "base.h5", "assembled.h5", "finished"
_COPY_ROWS = 1024  # rows of a base dataset copied at once while assembling (30 MB of flux)
#: The layout version written; readers accept it and every older one.
FORMAT_VERSION = 2


def assign_splits(
    star_ids: Sequence[str] | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """'train'/'valid'/'test' per row, by star: all rows of a star share one split.

    The stars are shuffled with ``seed`` and cut by ``fractions`` (normalized to sum 1). The
    result depends only on the set of star ids and the seed, not on row order, so a resumed
    or re-ordered build splits the same way. Every split with a nonzero fraction gets at least
    one star when there are enough stars.
    """
    frac = np.asarray(fractions, np.float64)
    if frac.shape != (3,) or np.any(frac < 0) or frac.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions!r}")
    frac = frac / frac.sum()
    ids = np.asarray(star_ids).astype(str)
    stars, inverse = np.unique(ids, return_inverse=True)
    counts = _split_counts(stars.size, frac)
    order = np.random.default_rng(seed).permutation(stars.size)
    star_split = np.empty(stars.size, dtype=object)
    star_split[order] = np.repeat(np.array(SPLITS, dtype=object), counts)
    return star_split[inverse].astype(str)


def _split_counts(n: int, frac: np.ndarray) -> np.ndarray:
    """Largest-remainder counts, then one star moved to any empty split that should have some."""
    raw = frac * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((frac > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _meta_array(name: str, values: np.ndarray | Sequence) -> tuple[np.ndarray, object]:
    """The array to store for a meta column and its HDF5 dtype."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"meta column {name!r} must be 1-D, got shape {arr.shape}")
    if name in STRING_COLUMNS or arr.dtype.kind in "USO":
        return arr.astype(str).astype(object), _STR
    if name == "obsid" or arr.dtype.kind in "iub":
        return arr.astype(np.int64), np.int64
    return arr.astype(np.float64), np.float64


def _check_shapes(
    flux: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    meta: Mapping[str, np.ndarray],
    label_errors: np.ndarray | None,
    spec: PreprocessSpec,
) -> None:
    n = flux.shape[0]
    if flux.ndim != 2 or flux.shape[1] != spec.n_pixels:
        raise ValueError(f"flux must be (N, {spec.n_pixels}), got {flux.shape}")
    if labels.shape != (n, len(label_names)):
        raise ValueError(f"labels must be ({n}, {len(label_names)}), got {labels.shape}")
    if label_errors is not None and label_errors.shape != labels.shape:
        raise ValueError(f"label_errors must be {labels.shape}, got {label_errors.shape}")
    for name, col in meta.items():
        if len(col) != n:
            raise ValueError(f"meta column {name!r} has {len(col)} rows, flux has {n}")


def _write_root_attrs(f: h5py.File, spec: PreprocessSpec) -> None:
    f.attrs["preprocessing"] = json.dumps(spec.to_dict())
    f.attrs["lamost_rrnet_version"] = __version__
    f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    f.attrs["format_version"] = FORMAT_VERSION


def write_dataset(
    path: str | os.PathLike[str],
    flux: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    meta: Mapping[str, np.ndarray | Sequence],
    label_errors: np.ndarray | None = None,
    preprocessing: PreprocessSpec = RRNET2022,
    *,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    ivar: np.ndarray | None = None,
) -> Path:
    """Write a whole dataset in one call (atomically) and return its path.

    ``meta`` maps column names to 1-D arrays of N values. Without a ``split`` column, splits
    are assigned by ``star_id`` with :func:`assign_splits` (``fractions``, ``seed``).
    ``ivar`` (N, n_pixels), the flux's inverse variance, is written as ``/ivar`` when given.
    """
    flux = np.asarray(flux, np.float32)
    if ivar is not None:
        ivar = np.asarray(ivar, np.float32)
        if ivar.shape != flux.shape:
            raise ValueError(f"ivar must be {flux.shape}, got {ivar.shape}")
    labels = np.asarray(labels, np.float32)
    label_errors = (
        np.full_like(labels, np.nan)
        if label_errors is None
        else np.asarray(label_errors, np.float32)
    )
    meta = dict(meta)
    if "split" not in meta:
        if "star_id" not in meta:
            raise ValueError("meta needs a 'split' or a 'star_id' column to split by star")
        meta["split"] = assign_splits(meta["star_id"], fractions, seed)
    _check_shapes(flux, labels, label_names, meta, label_errors, preprocessing)
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root_attrs(f, preprocessing)
        f.attrs["split_fractions"] = np.asarray(fractions, np.float64)
        f.attrs["split_seed"] = int(seed)
        # Resizable like DatasetWriter's output, as the layout has always been.
        n_pix, n_lab = flux.shape[1], labels.shape[1]
        for name, data in (("flux", flux), ("ivar", ivar)):
            if data is not None:
                _create_row_dataset(f, name, len(data), data, n_pix)[...] = data
        ds = f.create_dataset("labels", data=labels, maxshape=(None, n_lab))
        ds.attrs["names"] = list(label_names)
        f.create_dataset("label_errors", data=label_errors, maxshape=(None, n_lab))
        group = f.create_group("meta")
        for name, values in meta.items():
            arr, dtype = _meta_array(name, values)
            group.create_dataset(name, data=arr, dtype=dtype, maxshape=(None,))
    return path


def work_dir_for(path: str | os.PathLike[str]) -> Path:
    """The work directory of a build of ``path``: ``.<name>.parts/`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.parts")


def _row_arrays(
    flux: np.ndarray,
    labels: np.ndarray,
    label_errors: np.ndarray,
    meta: Mapping[str, np.ndarray | Sequence],
) -> dict[str, np.ndarray]:
    """The rows of an append by their path in the dataset file (strings as fixed-width str)."""
    arrays = {"flux": flux, "labels": labels, "label_errors": label_errors}
    for name, values in meta.items():
        arr, dtype = _meta_array(name, values)
        arrays[f"meta/{name}"] = arr.astype(str) if dtype is _STR else arr
    return arrays


def _create_row_dataset(
    f: h5py.File, name: str, n: int, sample: np.ndarray, n_pixels: int
) -> h5py.Dataset:
    """An empty resizable dataset for ``n`` rows shaped like ``sample``'s, chunked as before."""
    shape, maxshape = (n, *sample.shape[1:]), (None, *sample.shape[1:])
    if sample.ndim == 1:  # a meta column
        dtype = _STR if sample.dtype.kind in "USO" else sample.dtype
        return f.create_dataset(name, shape, dtype, maxshape=maxshape, chunks=(4096,))
    # Per-pixel arrays (flux) in chunks of rows, for random reads; labels as h5py likes.
    chunks = (CHUNK_ROWS, n_pixels) if sample.shape[1:] == (n_pixels,) else True
    return f.create_dataset(name, shape, sample.dtype, maxshape=maxshape, chunks=chunks)


class DatasetWriter:
    """Build a dataset in appends, resumably; :meth:`finish` splits by star and moves it in place.

    Every :meth:`append` is committed as its own small file, ``part-<n>.npz``, in a work
    directory beside the output, ``.<name>.parts/`` (written to a temporary, fsynced, renamed),
    so a build killed at any point, even by SIGKILL in the middle of a write, resumes
    (``resume=True``) from its last committed append; nothing is ever open for writing across
    appends. :meth:`finish` assembles the parts, in order, into ``assembled.h5`` in the work
    directory (again a temporary, fsynced, renamed), marks it ``finished``, moves it to the
    output path and removes the work directory (renamed to ``.<name>.parts.removed`` first,
    so that it goes as a whole); a run killed during any of these steps completes them on
    resume. Temporaries left by a kill are removed on the next start.

    An existing finished dataset is refused unless ``overwrite`` (start again; the old file
    stays until the new one replaces it) or ``resume`` (extend it: it moves into the work
    directory as ``base.h5``, and :meth:`finish` assembles it and the new parts, split again).
    An unfinished build is refused unless ``resume`` (continue it) or ``overwrite``.
    The caller holds the output's lock (:func:`lamost_rrnet.locking.exclusive`).
    With ``with_ivar`` every append gives ``ivar``, written as ``/ivar``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        label_names: Sequence[str],
        preprocessing: PreprocessSpec = RRNET2022,
        *,
        resume: bool = False,
        overwrite: bool = False,
        with_ivar: bool = False,
    ):
        self.path = Path(path)
        self.work = work_dir_for(self.path)
        self.with_ivar = with_ivar
        self.label_names = list(label_names)
        self.preprocessing = preprocessing
        self.trash = self.work.with_name(self.work.name + ".removed")
        shutil.rmtree(self.trash, ignore_errors=True)  # a removal that a kill cut short
        self._complete_interrupted_finish()
        remove_stale_temporaries(self.path)
        if self.work.exists() and not (self.work / _BUILD).exists():
            self._discard()  # killed before it recorded the build: nothing committed
        if overwrite:
            self._discard()
        elif not resume:
            if self.path.exists():
                raise OutputExistsError(f"{self.path}: exists; use --resume or --overwrite")
            if self.work.exists():
                raise OutputExistsError(
                    f"{self.work}: an unfinished build of {self.path}; use --resume to "
                    "finish it or --overwrite to start again"
                )
        if self.work.exists():
            for tmp in self.work.glob(".*.part"):  # temporaries of a killed write
                tmp.unlink()
            build = self._read_build()
            if build.get("extends") and self.path.exists() and not (self.work / _BASE).exists():
                os.replace(self.path, self.work / _BASE)  # killed before it moved the base
        else:
            extends = resume and self.path.exists()
            if extends:
                self._check_resumable(self.path)
            self.work.mkdir(parents=True)
            build = {
                "label_names": self.label_names,
                "preprocessing": self.preprocessing.to_dict(),
                "with_ivar": self.with_ivar,
                "extends": extends,
            }
            atomic_write_bytes(self.work / _BUILD, json.dumps(build).encode())
            if extends:
                os.replace(self.path, self.work / _BASE)
                fsync_path(self.work)
        self._parts = sorted(self.work.glob("part-*.npz"))
        self._part_rows = [self._part_n(p) for p in self._parts]
        base = self.work / _BASE
        self._base_n = 0
        self._meta_columns: set[str] | None = None
        if base.exists():
            self._check_resumable(base)
            with h5py.File(base, "r") as f:
                self._base_n = int(f["flux"].shape[0])

    def _complete_interrupted_finish(self) -> None:
        """Finish the last steps of a :meth:`finish` that a kill interrupted."""
        if not (self.work / _FINISHED).exists():
            return
        if (self.work / _ASSEMBLED).exists():
            replace_durably(self.work / _ASSEMBLED, self.path)
        self._discard()

    def _discard(self) -> None:
        """Remove the work directory as a whole: renamed away first, then deleted.

        A kill in the middle of deleting it must not leave a build with some parts missing,
        which a resume would take for an unfinished one and complete out of order.
        """
        if self.work.exists():
            os.replace(self.work, self.trash)
            fsync_path(self.work.parent)
        shutil.rmtree(self.trash, ignore_errors=True)

    def _read_build(self) -> dict:
        """The recorded settings of the unfinished build, checked against this writer's."""
        path = self.work / _BUILD
        try:
            build = json.loads(path.read_text())
            names = build["label_names"]
            spec = PreprocessSpec.from_dict(build["preprocessing"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: unreadable ({exc}); start again with --overwrite") from exc
        if (
            names != self.label_names
            or spec != self.preprocessing
            or build.get("with_ivar", False) != self.with_ivar
        ):
            raise DatasetError(
                f"{self.work}: an unfinished build with other labels, preprocessing or /ivar; "
                "start again with --overwrite"
            )
        return build

    def _check_resumable(self, path: Path) -> None:
        """Refuse (leaving the file as it is) to resume a build of other labels or spec."""
        try:
            with h5py.File(path, "r") as f:
                names = [str(n) for n in f["labels"].attrs["names"]]
                spec = PreprocessSpec.from_dict(json.loads(f.attrs["preprocessing"]))
                has_ivar = "ivar" in f
        except OSError as exc:
            raise DatasetError(
                f"{path}: cannot resume from it ({exc}); start again with --overwrite"
            ) from exc
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: not a lamost-rrnet dataset ({exc})") from exc
        if names != self.label_names or spec != self.preprocessing:
            raise DatasetError(
                f"{path}: was built with other labels or preprocessing; "
                "start again with --overwrite"
            )
        if has_ivar != self.with_ivar:
            raise DatasetError(
                f"{path}: was built {'with' if has_ivar else 'without'} /ivar (another "
                "version); start again with --overwrite"
            )

    @staticmethod
    def _part_n(part: Path) -> int:
        return int(_load_part(part, ["labels"])["labels"].shape[0])  # not the big flux

    @property
    def n(self) -> int:
        """Rows committed so far."""
        return self._base_n + sum(self._part_rows)

    def done_keys(self) -> set[tuple[str, str, str]]:
        """(filename, extname_blue, extname_red) of every committed row."""
        keys: set[tuple[str, str, str]] = set()
        if self._base_n:
            with h5py.File(self.work / _BASE, "r") as f:
                cols = [f["meta"][k].asstr()[:] for k in ROW_KEY]
            keys.update(zip(*cols, strict=True))
        for part in self._parts:
            arrays = _load_part(part, [f"meta/{k}" for k in ROW_KEY])
            cols = [arrays[f"meta/{k}"].tolist() for k in ROW_KEY]
            keys.update(zip(*cols, strict=True))
        return keys

    def _columns(self) -> set[str] | None:
        """The meta columns of the rows committed so far (None before the first)."""
        if self._parts:
            with np.load(self._parts[0], allow_pickle=False) as z:
                return {k.removeprefix("meta/") for k in z.files if k.startswith("meta/")}
        if self._base_n:
            with h5py.File(self.work / _BASE, "r") as f:
                return set(f["meta"]) - {"split"}
        return None

    def append(
        self,
        flux: np.ndarray,
        labels: np.ndarray,
        meta: Mapping[str, np.ndarray | Sequence],
        label_errors: np.ndarray | None = None,
        *,
        ivar: np.ndarray | None = None,
    ) -> None:
        """Append rows and commit them. The meta columns must be the same in every append."""
        flux = np.asarray(flux, np.float32)
        if (ivar is not None) != self.with_ivar:
            raise ValueError(f"ivar must {'' if self.with_ivar else 'not '}be given to this writer")
        if ivar is not None and np.shape(ivar) != flux.shape:
            raise ValueError(f"ivar must be {flux.shape}, got {np.shape(ivar)}")
        labels = np.asarray(labels, np.float32)
        if flux.shape[0] == 0:
            return
        label_errors = (
            np.full_like(labels, np.nan)
            if label_errors is None
            else np.asarray(label_errors, np.float32)
        )
        _check_shapes(flux, labels, self.label_names, meta, label_errors, self.preprocessing)
        if self._meta_columns is None:
            self._meta_columns = self._columns()
        columns = self._meta_columns
        if columns is not None and set(meta) != columns:
            raise ValueError(
                f"meta columns {sorted(meta)} differ from the dataset's {sorted(columns)}"
            )
        arrays = _row_arrays(flux, labels, label_errors, meta)
        if ivar is not None:
            arrays["ivar"] = np.asarray(ivar, np.float32)
        # Numbered after the last one, not by count: a part removed by hand leaves a gap.
        number = int(self._parts[-1].stem.removeprefix("part-")) + 1 if self._parts else 0
        part = self.work / f"part-{number:09d}.npz"
        with atomic_path(part) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        self._parts.append(part)
        self._part_rows.append(flux.shape[0])
        self._meta_columns = set(meta)

    def finish(self, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> Path:
        """Assemble the committed rows, split by star, into the dataset at its final path."""
        if self.n == 0:
            self._discard()  # nothing to resume from
            raise DatasetError(f"{self.path}: no spectra were accepted, so there is no dataset")
        with atomic_path(self.work / _ASSEMBLED) as tmp, h5py.File(tmp, "w") as f:
            _write_root_attrs(f, self.preprocessing)
            f.attrs["split_fractions"] = np.asarray(fractions, np.float64)
            f.attrs["split_seed"] = int(seed)
            self._assemble(f)
            star_ids = f["meta"]["star_id"].asstr()[:]
            split = assign_splits(star_ids, fractions, seed).astype(object)
            f["meta"].create_dataset("split", data=split, dtype=_STR, maxshape=(None,))
        atomic_write_bytes(self.work / _FINISHED, b"")
        self._complete_interrupted_finish()
        return self.path

    def _assemble(self, f: h5py.File) -> None:
        """Copy the base dataset's rows, then every part's, in order, into ``f``."""
        f.create_group("meta")
        created: dict[str, h5py.Dataset] = {}

        def put(arrays: Mapping[str, np.ndarray], start: int) -> None:
            for name, arr in arrays.items():
                if name not in created:
                    created[name] = _create_row_dataset(
                        f, name, self.n, arr, self.preprocessing.n_pixels
                    )
                created[name][start : start + arr.shape[0]] = (
                    arr.astype(object) if arr.dtype.kind == "U" else arr
                )

        start = 0
        if self._base_n:
            with h5py.File(self.work / _BASE, "r") as base:
                names: list[str] = []
                base.visititems(
                    lambda name, obj: (
                        names.append(name)
                        if isinstance(obj, h5py.Dataset) and name != "meta/split"
                        else None
                    )
                )
                for lo in range(0, self._base_n, _COPY_ROWS):
                    hi = min(lo + _COPY_ROWS, self._base_n)
                    put({k: _read_rows(base[k], lo, hi) for k in names}, lo)
            start = self._base_n
        for part, rows in zip(self._parts, self._part_rows, strict=True):
            put(_load_part(part), start)
            start += rows
        created["labels"].attrs["names"] = self.label_names


def _read_rows(ds: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype):
        return np.asarray(ds.asstr()[lo:hi], dtype=str)
    return ds[lo:hi]


def _load_part(part: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Some (or all) arrays of a committed part; :class:`DatasetError` if it is unreadable."""
    try:
        with np.load(part, allow_pickle=False) as z:
            return {k: z[k] for k in (z.files if names is None else names)}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{part}: an unreadable part of an unfinished build ({exc}); remove it and --resume"
        ) from exc


class Dataset:
    """An open dataset: lazy, chunked access to flux; labels and meta are small and cached."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CACHE_BYTES)
        except FileNotFoundError as exc:
            raise DatasetError(f"{self.path}: no such file") from exc
        except OSError as exc:
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        f = self._file
        missing = [k for k in ("flux", "labels", "label_errors", "meta") if k not in f]
        if missing or "preprocessing" not in f.attrs or "names" not in f["labels"].attrs:
            f.close()
            what = ", ".join(missing) or "the preprocessing or label-name attributes"
            raise DatasetError(f"{self.path}: not a lamost-rrnet dataset (missing {what})")
        version = int(f.attrs.get("format_version", 1))
        if version > FORMAT_VERSION:
            f.close()
            raise DatasetError(
                f"{self.path}: dataset format {version} is newer than this lamost-rrnet reads "
                f"({FORMAT_VERSION}); upgrade lamost-rrnet"
            )
        self.format_version = version
        self._flux = f["flux"]
        self._ivar = f["ivar"] if "ivar" in f else None
        self.label_names: list[str] = [str(n) for n in f["labels"].attrs["names"]]
        self.preprocessing = PreprocessSpec.from_dict(json.loads(f.attrs["preprocessing"]))
        self.attrs = {k: f.attrs[k] for k in f.attrs}
        self._labels: np.ndarray | None = None
        self._errors: np.ndarray | None = None
        self._meta: dict[str, np.ndarray] = {}

    @property
    def n(self) -> int:
        return int(self._flux.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def meta_columns(self) -> list[str]:
        return list(self._file["meta"])

    def meta(self, column: str, indices: np.ndarray | None = None) -> np.ndarray:
        """One meta column (strings as ``str``), for all rows or the given ones."""
        if column not in self._meta:
            group = self._file["meta"]
            if column not in group:
                raise DatasetError(
                    f"{self.path}: no meta column {column!r} (has: {', '.join(group)})"
                )
            ds = group[column]
            values = ds.asstr()[:] if h5py.check_string_dtype(ds.dtype) else ds[:]
            self._meta[column] = np.asarray(values, dtype=str if values.dtype == object else None)
        values = self._meta[column]
        return values if indices is None else values[np.asarray(indices)]

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split; raises :class:`DatasetError` when it has none."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if "split" not in self._file["meta"]:
            raise DatasetError(f"{self.path}: has no split column")
        idx = np.flatnonzero(self.meta("split") == split)
        if idx.size == 0:
            raise DatasetError(f"{self.path}: the {split} split is empty")
        return idx

    @property
    def has_ivar(self) -> bool:
        """Whether the dataset has per-pixel ``/ivar`` (format 2 built by prepare)."""
        return self._ivar is not None

    def _read_rows(self, array: h5py.Dataset, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        if idx.size == 0:
            return np.empty((0, array.shape[1]), np.float32)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"row indices out of range 0..{self.n - 1}")
        unique, inverse = np.unique(idx, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        if hi - lo <= 2 * unique.size:
            # Nearly contiguous: one slab read beats per-row selection.
            rows = array[lo:hi][unique - lo]
        else:
            rows = array[unique]
        return rows[inverse]

    def flux(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 (k, n_pixels) for the rows given, in that order; reads only their chunks."""
        return self._read_rows(self._flux, indices)

    def ivar(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 (k, n_pixels) inverse variance of the normalized flux of the rows given.

        It is ``/ivar`` where the dataset has it. A dataset without (format 1) gets the arm's
        S/N squared on every pixel of that arm: normalized flux is about 1 on the continuum,
        so its noise is about 1/S/N. An unknown or non-positive S/N gives 0 (no information).
        """
        if self._ivar is not None:
            return self._read_rows(self._ivar, indices)
        idx = np.asarray(indices, np.int64)
        n_blue = self.preprocessing.grids()[0].size
        out = np.empty((idx.size, self._flux.shape[1]), np.float32)
        for arm, column in ((slice(0, n_blue), "snr_blue"), (slice(n_blue, None), "snr_red")):
            snr = self.meta(column, idx).astype(np.float64)
            snr = np.where(np.isfinite(snr) & (snr > 0), snr, 0.0)
            out[:, arm] = (snr**2)[:, None]
        return out

    def _all_labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self._file["labels"][:]
        return self._labels

    def _columns(self, names: Sequence[str] | None) -> list[int] | slice:
        if names is None:
            return slice(None)
        missing = [n for n in names if n not in self.label_names]
        if missing:
            raise DatasetError(
                f"{self.path}: no label {', '.join(missing)} (has: {', '.join(self.label_names)})"
            )
        return [self.label_names.index(n) for n in names]

    def labels(
        self, indices: np.ndarray | Sequence[int] | None = None, names: Sequence[str] | None = None
    ) -> np.ndarray:
        """float32 (k, L) labels of the rows given (all rows when None), optionally some labels."""
        rows = self._all_labels() if indices is None else self._all_labels()[np.asarray(indices)]
        return rows[:, self._columns(names)]

    def label_errors(
        self, indices: np.ndarray | Sequence[int] | None = None, names: Sequence[str] | None = None
    ) -> np.ndarray:
        """float32 (k, L) label uncertainties (NaN where unknown)."""
        if self._errors is None:
            self._errors = self._file["label_errors"][:]
        rows = self._errors if indices is None else self._errors[np.asarray(indices)]
        return rows[:, self._columns(names)]

    def iter_batches(
        self, indices: np.ndarray | Sequence[int], batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(indices, flux, labels) in batches, in the order of ``indices``."""
        idx = np.asarray(indices, np.int64)
        for start in range(0, idx.size, batch_size):
            batch = idx[start : start + batch_size]
            yield batch, self.flux(batch), self.labels(batch)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a dataset for reading (use as a context manager); :class:`DatasetError` if invalid."""
    return Dataset(path)
