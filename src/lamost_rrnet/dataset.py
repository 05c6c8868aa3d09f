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

:func:`write_dataset` writes one in one call; :class:`DatasetWriter` builds one in appends
and resumes an interrupted build; :func:`open_dataset` reads one with chunked reads, so that
training never holds more than a batch of flux in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from lamost_rrnet._version import __version__
from lamost_rrnet.atomic import atomic_path
from lamost_rrnet.errors import DatasetError, OutputExistsError
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec

SPLITS = ("train", "valid", "test")
STRING_COLUMNS = ("filename", "extname_blue", "extname_red", "star_id", "rv_source", "split")
#: The resume key of a row, as for the catalogue.
KEY_COLUMNS = ("filename", "extname_blue", "extname_red")
# 8 rows are 230 kB: a random row costs little more than itself, a batch stays in the cache.
CHUNK_ROWS = 8
_CACHE_BYTES = 64 * 2**20
_STR = h5py.string_dtype("utf-8")
_COMMITTED = "rows_committed"
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


def _create_rows(f: h5py.File, name: str, data: np.ndarray | None, n_pix: int) -> None:
    """A resizable (rows, n_pixels) float32 array chunked like ``/flux``."""
    chunks = (CHUNK_ROWS, n_pix)
    if data is None:
        f.create_dataset(name, (0, n_pix), np.float32, maxshape=(None, n_pix), chunks=chunks)
    else:
        f.create_dataset(name, data=data, chunks=chunks, maxshape=(None, n_pix))


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
        # Resizable like DatasetWriter's, so that a resumed build can append to any dataset.
        n_pix, n_lab = flux.shape[1], labels.shape[1]
        _create_rows(f, "flux", flux, n_pix)
        if ivar is not None:
            _create_rows(f, "ivar", ivar, n_pix)
        ds = f.create_dataset("labels", data=labels, maxshape=(None, n_lab))
        ds.attrs["names"] = list(label_names)
        f.create_dataset("label_errors", data=label_errors, maxshape=(None, n_lab))
        group = f.create_group("meta")
        for name, values in meta.items():
            arr, dtype = _meta_array(name, values)
            group.create_dataset(name, data=arr, dtype=dtype, maxshape=(None,))
    return path


class DatasetWriter:
    """Build a dataset in appends, resumably; :meth:`finish` splits by star and moves it in place.

    Rows go to ``<path>.partial`` and are committed after each :meth:`append`: a build killed at
    any point resumes (``resume=True``) from its last committed row. An existing finished
    dataset is refused unless ``overwrite`` (start again) or ``resume`` (reopen it, append
    what is missing, split again) is given. With ``with_ivar`` every append gives ``ivar``.
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
        self.with_ivar = with_ivar
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.label_names = list(label_names)
        self.preprocessing = preprocessing
        if self.path.exists() and not (resume or overwrite):
            raise OutputExistsError(f"{self.path}: exists; use --resume or --overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and not self.partial.exists() and self.path.exists():
            self._check_resumable(self.path)
            os.replace(self.path, self.partial)
        if resume and self.partial.exists():
            self._check_resumable(self.partial)
            self._file = self._reopen()
        else:
            self._file = self._create()

    def _create(self) -> h5py.File:
        f = h5py.File(self.partial, "w")
        _write_root_attrs(f, self.preprocessing)
        f.attrs[_COMMITTED] = 0
        n_pix = self.preprocessing.n_pixels
        n_lab = len(self.label_names)
        _create_rows(f, "flux", None, n_pix)
        if self.with_ivar:
            _create_rows(f, "ivar", None, n_pix)
        ds = f.create_dataset("labels", (0, n_lab), np.float32, maxshape=(None, n_lab))
        ds.attrs["names"] = self.label_names
        f.create_dataset("label_errors", (0, n_lab), np.float32, maxshape=(None, n_lab))
        f.create_group("meta")
        return f

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

    def _reopen(self) -> h5py.File:
        f = h5py.File(self.partial, "a")
        # Rows past the last commit may be half written: drop them.
        n = int(f.attrs.get(_COMMITTED, f["flux"].shape[0]))
        f.attrs[_COMMITTED] = n
        if "split" in f["meta"]:
            del f["meta"]["split"]  # re-assigned by finish() over all rows
        rows = [f["flux"], f["labels"], f["label_errors"], *f["meta"].values()]
        for ds in rows + ([f["ivar"]] if "ivar" in f else []):
            ds.resize(n, axis=0)
        return f

    @property
    def n(self) -> int:
        return int(self._file.attrs[_COMMITTED])

    def done_keys(self) -> set[tuple[str, str, str]]:
        """(filename, extname_blue, extname_red) of every committed row."""
        meta = self._file["meta"]
        if self.n == 0 or not all(k in meta for k in KEY_COLUMNS):
            return set()
        cols = [meta[k].asstr()[: self.n] for k in KEY_COLUMNS]
        return set(zip(*cols, strict=True))

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
        arrays = [("flux", flux)]
        if ivar is not None:
            arrays.append(("ivar", np.asarray(ivar, np.float32)))
            if arrays[1][1].shape != flux.shape:
                raise ValueError(f"ivar must be {flux.shape}, got {arrays[1][1].shape}")
        labels = np.asarray(labels, np.float32)
        k = flux.shape[0]
        if k == 0:
            return
        label_errors = (
            np.full_like(labels, np.nan)
            if label_errors is None
            else np.asarray(label_errors, np.float32)
        )
        _check_shapes(flux, labels, self.label_names, meta, label_errors, self.preprocessing)
        f = self._file
        group = f["meta"]
        if self.n > 0 and set(meta) != set(group):
            raise ValueError(
                f"meta columns {sorted(meta)} differ from the dataset's {sorted(group)}"
            )
        start = self.n
        stop = start + k
        for name, data in (*arrays, ("labels", labels), ("label_errors", label_errors)):
            f[name].resize(stop, axis=0)
            f[name][start:stop] = data
        for name, values in meta.items():
            arr, dtype = _meta_array(name, values)
            if name not in group:
                group.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(4096,))
            group[name].resize(stop, axis=0)
            group[name][start:stop] = arr
        f.attrs[_COMMITTED] = stop
        f.flush()

    def finish(self, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> Path:
        """Split by star, close, and move the dataset to its final path."""
        f = self._file
        if self.n == 0:
            self.close()
            raise DatasetError(f"{self.path}: no spectra were accepted, so there is no dataset")
        star_ids = f["meta"]["star_id"].asstr()[:]
        f["meta"].create_dataset(
            "split", data=assign_splits(star_ids, fractions, seed).astype(object), dtype=_STR
        )
        f.attrs["split_fractions"] = np.asarray(fractions, np.float64)
        f.attrs["split_seed"] = int(seed)
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        del f.attrs[_COMMITTED]
        self.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close the partial file (it stays, for a later resume)."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        if _COMMITTED in f.attrs:
            f.close()
            raise DatasetError(f"{self.path}: an unfinished build; finish it with --resume")
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
