"""Models by name: the registry, the verified download cache, and what ``--model`` accepts.

- **Registry.** ``data/models.json`` in the package names the downloadable models, their files,
  URLs and hashes. ``$LAMOST_RRNET_REGISTRY`` may name a JSON file of the same form whose
  entries are added to (or replace) the shipped ones, e.g. to point at a local mirror.
- **Cache.** Files go to ``<cache>/models/<name>/<path in the repository>``, where ``<cache>``
  is ``$LAMOST_RRNET_CACHE`` or the platform's user cache. The published model's cache is thus
  itself a copy of the published repository's layout.
- **Download.** pooch fetches each missing file with ``known_hash=None``: pooch's ``sha1:``
  hashes the plain content, while the registry holds git blob SHA-1s, so we verify ourselves,
  and delete the file and raise on a mismatch. Interrupted transfers are retried and resumed
  with HTTP ranges where the server allows them. Each file is downloaded under a lock beside
  it (``.<file>.lock``): processes that start at once on an empty cache wait for the one
  downloading, then verify its file instead of fetching (and writing) it again.
- **Published pickles.** Weights go through ``torch.load(weights_only=True)``; the
  normalization pickle through an unpickler that allows exactly three NumPy globals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lamost_rrnet.errors import ModelError
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.locking import exclusive
from lamost_rrnet.names import DEFAULT_MODEL
from lamost_rrnet.paths import stays_inside

if TYPE_CHECKING:
    import torch

    from lamost_rrnet.ensemble import Ensemble, Normalization

REGISTRY_ENV = "LAMOST_RRNET_REGISTRY"
#: Attempts per file after the first, and the first wait (doubled each time), in seconds.
RETRIES = 3
RETRY_WAIT = 1.0
TIMEOUT = 30.0

#: Label ranges of the paper's reference set (docs/models.md); the other labels of
#: the published model get mean ± PUBLISHED_RANGE_STDS std of its label_config.
PUBLISHED_RANGES = {"Teff[K]": (4000.0, 6500.0), "Logg": (0.0, 5.0), "FeH": (-1.45, 0.45)}
PUBLISHED_RANGE_STDS = 4.0
LABEL_CONFIG = Path("data", "refer_set", "label_config.pkl")
MEMBER_FILE = "weight_best.pkl"
# A registry name is also a cache directory's name: no separators, no "." or "..".
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# -- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryFile:
    path: str  # relative to the model's cache directory, as in the source repository
    url: str
    hash: str  # "gitsha1:<hex>" (git blob SHA-1) or "sha256:<hex>"


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    layout: str  # "published" (the authors' repository) or "lamost-rrnet" (a model directory)
    version: str
    files: tuple[RegistryFile, ...]
    approx_bytes: int = 0
    run: str | None = None
    repository: str | None = None
    commit: str | None = None
    license: str | None = None


def _parse_registry(data: Any, source: str) -> dict[str, RegistryEntry]:
    entries = {}
    try:
        for name, item in data.items():
            files = tuple(RegistryFile(f["path"], f["url"], f["hash"]) for f in item["files"])
            if not _ENTRY_NAME.fullmatch(str(name)):
                raise ValueError(
                    f"entry name {name!r} is not a plain name (letters, digits, '.', '_', '-', "
                    "starting with a letter or digit)"
                )
            for f in files:
                if f.hash.partition(":")[0] not in ("gitsha1", "sha256"):
                    raise ValueError(f"unknown hash kind in {f.hash!r}")
                if not stays_inside(f.path):
                    raise ValueError(f"file path {f.path!r} leaves the model directory")
            if item["layout"] not in ("published", "lamost-rrnet"):
                raise ValueError(f"unknown layout {item['layout']!r}")
            fields = {k: item[k] for k in ("run", "repository", "commit", "license") if k in item}
            entries[name] = RegistryEntry(
                name,
                item.get("description", ""),
                item["layout"],
                str(item.get("version", "")),
                files,
                int(item.get("approx_bytes", 0)),
                **fields,
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: not a valid model registry ({exc})") from exc
    return entries


def registry() -> dict[str, RegistryEntry]:
    """The named models: the package's registry, plus ``$LAMOST_RRNET_REGISTRY`` if set."""
    shipped = resources.files("lamost_rrnet").joinpath("data", "models.json")
    entries = _parse_registry(json.loads(shipped.read_text(encoding="utf-8")), str(shipped))
    extra = os.environ.get(REGISTRY_ENV)
    if extra:
        try:
            data = json.loads(Path(extra).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{extra}: cannot read this model registry ({exc})") from exc
        entries.update(_parse_registry(data, extra))
    return entries


def get_entry(name: str) -> RegistryEntry:
    entries = registry()
    if name not in entries:
        raise ModelError(f"unknown model {name!r}: known models are {', '.join(entries)}")
    return entries[name]


def model_cache_dir(name: str) -> Path:
    """Where the files of the named model are (or will be) cached."""
    from lamost_rrnet.cache import cache_dir

    return cache_dir("models", name)


# -- hashes --------------------------------------------------------------------------------


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git blob SHA-1 of a file: sha1(b"blob <size>\\0" + content)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | os.PathLike[str], kind: str) -> str:
    """``kind:hex`` of a file, for ``kind`` gitsha1 or sha256."""
    if kind == "gitsha1":
        return f"gitsha1:{git_blob_sha1(path)}"
    from lamost_rrnet.ensemble import sha256_file

    return f"sha256:{sha256_file(path)}"


@dataclass(frozen=True)
class FileStatus:
    path: Path
    status: str  # "ok", "missing" or "mismatch"
    expected: str
    actual: str | None = None


def verify(name: str) -> list[FileStatus]:
    """Re-hash every cached file of the named model against the registry."""
    entry = get_entry(name)
    root = model_cache_dir(name)
    result = []
    for f in entry.files:
        path = root / f.path
        if not path.is_file():
            result.append(FileStatus(path, "missing", f.hash))
            continue
        actual = file_hash(path, f.hash.partition(":")[0])
        result.append(FileStatus(path, "ok" if actual == f.hash else "mismatch", f.hash, actual))
    return result


def cached_files(name: str) -> int:
    """How many of the named model's files are in the cache (present, not re-hashed)."""
    root = model_cache_dir(name)
    return sum((root / f.path).is_file() for f in get_entry(name).files)


# -- download ------------------------------------------------------------------------------


class _Bar:
    """A rich progress task with the interface pooch expects of a progress bar."""

    def __init__(self, progress, description: str):
        self._progress = progress
        self._task = progress.add_task(description, total=None)
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        self._progress.update(self._task, total=value)

    def update(self, n: int) -> None:
        self._progress.update(self._task, advance=n)

    def reset(self) -> None:
        self._progress.reset(self._task, total=self._total)

    def close(self) -> None:
        self._progress.stop_task(self._task)


class _Retryable(Exception):
    """A transfer that broke off, or a server error worth another try."""


class _ResumableDownloader:
    """A pooch downloader that resumes into ``partial`` with HTTP ranges and retries."""

    def __init__(self, partial: Path, bar: _Bar, timeout: float, retries: int):
        self.partial = partial
        self.bar = bar
        self.timeout = timeout
        self.retries = retries

    def __call__(self, url: str, output_file: str, pooch: Any, check_only: bool = False) -> None:
        import requests

        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
            try:
                self._attempt(url)
            except (requests.ConnectionError, requests.Timeout, _Retryable) as exc:
                error = exc
                continue
            except requests.RequestException as exc:
                raise _DownloadFailed(url, exc) from exc
            os.replace(self.partial, output_file)
            return
        raise _DownloadFailed(url, error)

    def _attempt(self, url: str) -> None:
        import requests

        have = self.partial.stat().st_size if self.partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if have and response.status_code == 416:
                return  # the partial file already holds everything; the hash will tell
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            response.raise_for_status()
            resumed = response.status_code == 206 and response.headers.get(
                "Content-Range", ""
            ).startswith(f"bytes {have}-")
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            self.bar.total = total
            self.bar.reset()
            self.bar.update(have)
            broken = None
            with open(self.partial, "ab" if resumed else "wb") as fh:
                try:
                    for block in response.iter_content(1 << 16):
                        fh.write(block)
                        self.bar.update(len(block))
                except requests.RequestException as exc:
                    broken = exc
        size = self.partial.stat().st_size
        if total is not None and size != total:
            raise _Retryable(f"connection closed after {size} of {total} bytes")
        if broken is not None:
            raise _Retryable(str(broken))


class _DownloadFailed(Exception):
    def __init__(self, url: str, cause: Exception | None):
        super().__init__(f"{url}: {cause}")
        self.url = url
        self.cause = cause


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download at INFO on stderr; our progress bar says it already."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _offline_message(entry: RegistryEntry, root: Path, reason: str) -> str:
    lines = [
        f"could not download model {entry.name!r}: {reason}",
        f"Without internet here, fetch these files elsewhere and put them under {root}, "
        "keeping their paths:",
    ]
    lines += [f"  {f.url}\n    -> {root / f.path}" for f in entry.files]
    lines.append(f"then check them with: lamost-rrnet models verify {entry.name}")
    if entry.layout == "published" and entry.repository:
        at = f" at commit {entry.commit}" if entry.commit else ""
        lines.append(
            f"Or clone {entry.repository}{at} (with its model_log/) and pass its directory as "
            "--model."
        )
    return "\n".join(lines)


def fetch(
    name: str, *, progress: bool = True, retries: int = RETRIES, timeout: float = TIMEOUT
) -> Path:
    """Make sure every file of the named model is cached and verified; return its directory.

    Cached files whose hash is wrong are deleted and fetched again. A download whose hash is
    wrong is deleted and raises :class:`ModelError`; so does a failed download, with a message
    naming the URLs and where to put the files by hand.
    """
    import pooch
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from lamost_rrnet.progress import stderr_console

    entry = get_entry(name)
    root = model_cache_dir(name)
    todo = []
    for f in entry.files:
        target = root / f.path
        if not (target.is_file() and file_hash(target, f.hash.partition(":")[0]) == f.hash):
            todo.append(f)
    if not todo:
        return root
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with (
        Progress(*columns, console=stderr_console, disable=not progress) as bars,
        _quiet_pooch(),
    ):
        for f in todo:
            target = root / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            # Many tasks of a job array may start at once on an empty cache: one downloads
            # each file, the others wait for it and then only verify what it finished.
            with exclusive(target, wait=True):
                if target.is_file():
                    if file_hash(target, f.hash.partition(":")[0]) == f.hash:
                        continue
                    target.unlink()
                _download(entry, root, f, bars, pooch, timeout, retries)
    return root


def _download(
    entry: RegistryEntry,
    root: Path,
    f: RegistryFile,
    bars: Any,
    pooch: Any,
    timeout: float,
    retries: int,
) -> None:
    """Download one file of a model into the cache and verify it (the caller holds its lock)."""
    target = root / f.path
    partial = target.with_name(target.name + ".partial")
    bar = _Bar(bars, f"{entry.name}: {'/'.join(Path(f.path).parts[-2:])}")
    downloader = _ResumableDownloader(partial, bar, timeout, retries)
    try:
        pooch.retrieve(
            f.url, known_hash=None, fname=target.name, path=target.parent, downloader=downloader
        )
    except _DownloadFailed as exc:
        raise ModelError(_offline_message(entry, root, str(exc))) from exc
    finally:
        bar.close()
    actual = file_hash(target, f.hash.partition(":")[0])
    if actual != f.hash:
        target.unlink()
        raise ModelError(
            f"{target}: downloaded from {f.url}, but its hash is {actual}, not "
            f"{f.hash}; the file was removed"
        )


# -- the published files -------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    try:  # NumPy 2 moved numpy.core to numpy._core; pickles name either spelling.
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows exactly the three globals of a pickled dict of NumPy arrays (docs/models.md)."""

    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise ModelError(
            f"{self.path}: refused to unpickle {module}.{name}: a normalization file may only "
            "hold NumPy arrays"
        )


def load_label_config(path: str | os.PathLike[str], n_pixels: int = 7200) -> dict[str, Any]:
    """The published ``label_config.pkl``, through the restricted unpickler, checked."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = _NumpyOnlyUnpickler(fh, path).load()
    except ModelError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable label_config pickle ({exc})") from exc
    keys = ("label_list", "label_mean", "label_std", "flux_mean", "flux_std")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ModelError(f"{path}: a label_config must be a dict with {', '.join(keys)}")
    labels = data["label_list"]
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise ModelError(f"{path}: label_list must be a list of names")
    for key, size in (("label_mean", len(labels)), ("label_std", len(labels))) + tuple(
        (k, n_pixels) for k in ("flux_mean", "flux_std")
    ):
        value = data[key]
        if not isinstance(value, np.ndarray) or value.shape != (size,):
            raise ModelError(f"{path}: {key} must be an array of {size} values")
    return data


def published_label_ranges(
    normalization: Normalization, labels: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """The published model's label ranges for the flag (docs/models.md)."""
    ranges = {}
    for label, row in zip(labels, normalization.index(labels), strict=True):
        if label in PUBLISHED_RANGES:
            ranges[label] = PUBLISHED_RANGES[label]
        else:
            mean = float(normalization.label_mean[row])
            spread = PUBLISHED_RANGE_STDS * float(normalization.label_std[row])
            ranges[label] = (mean - spread, mean + spread)
    return ranges


def _run_members(run_dir: Path, group: str) -> list[Path]:
    found = []
    for folder in run_dir.glob(f"{group}*"):
        index = folder.name[len(group) :]
        if index.isdigit() and (folder / MEMBER_FILE).is_file():
            found.append((int(index), folder / MEMBER_FILE))
    return [path for _, path in sorted(found)]


def _has_members(run_dir: Path) -> bool:
    return any(_run_members(run_dir, group) for group in PAPER_GROUPS)


def published_runs(root: str | os.PathLike[str]) -> list[str]:
    """The runs with member weights under ``root/model_log``."""
    logs = Path(root) / "model_log"
    if not logs.is_dir():
        return []
    return sorted(d.name for d in logs.iterdir() if d.is_dir() and _has_members(d))


def load_published(
    root: str | os.PathLike[str],
    run: str | None = None,
    *,
    name: str = "RRNet",
    version: str | None = None,
    provenance: dict | None = None,
    device: str | torch.device = "cpu",
) -> Ensemble:
    """An :class:`Ensemble` from a directory in the published repository's layout.

    ``root`` holds ``model_log/<run>/SP<i>|CA<i>/weight_best.pkl`` and
    ``data/refer_set/label_config.pkl``; it may also be ``root/model_log/<run>`` itself. Without
    ``run``, the paper's run is taken, or the only one; several others are an error that
    lists them.
    """
    from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
    from lamost_rrnet.models.published import (
        PUBLISHED_RUN,
        architecture_from_run,
        load_published_member,
    )
    from lamost_rrnet.spectra.preprocess import RRNET2022

    root = Path(root)
    if run is None and root.parent.name == "model_log" and _has_members(root):
        root, run = root.parent.parent, root.name
    runs = published_runs(root)
    if run is None:
        if PUBLISHED_RUN in runs:
            run = PUBLISHED_RUN
        elif len(runs) == 1:
            run = runs[0]
        elif not runs:
            raise ModelError(f"{root / 'model_log'}: no run with SP<i>/{MEMBER_FILE} or CA<i>")
        else:
            raise ModelError(
                f"{root / 'model_log'}: {len(runs)} runs and none is the paper's "
                f"({PUBLISHED_RUN}); choose one with --model {root / 'model_log'}/<run>: "
                + ", ".join(runs)
            )
    elif run not in runs:
        raise ModelError(f"{root / 'model_log' / run}: no member weights in this run")
    try:
        architecture = architecture_from_run(run)
    except ValueError as exc:
        raise ModelError(f"{root / 'model_log' / run}: {exc}") from exc
    config = load_label_config(root / LABEL_CONFIG, RRNET2022.n_pixels)
    normalization = Normalization(
        config["flux_mean"],
        config["flux_std"],
        config["label_list"],
        config["label_mean"],
        config["label_std"],
    )
    groups = []
    for group, labels in PAPER_GROUPS.items():
        files = _run_members(root / "model_log" / run, group)
        if files:
            members = [load_published_member(p, len(labels), architecture) for p in files]
            groups.append(LabelGroup(group, list(labels), members))
    labels = [label for g in groups for label in g.labels]
    return Ensemble(
        name,
        version or run,
        architecture,
        groups,
        normalization,
        RRNET2022,
        published_label_ranges(normalization, labels),
        provenance or {"source": str(root), "run": run},
    ).to(device)


# -- what --model accepts ------------------------------------------------------------------


def load_registered(
    name: str, device: str | torch.device = "auto", progress: bool = True
) -> Ensemble:
    """A model of the registry, downloaded and verified into the cache first if needed."""
    from lamost_rrnet.ensemble import Ensemble

    entry = get_entry(name)
    root = fetch(name, progress=progress)
    if entry.layout == "lamost-rrnet":
        return Ensemble.from_directory(root, device=device)
    provenance = {
        "registry": name,
        "repository": entry.repository,
        "commit": entry.commit,
        "license": entry.license,
        "run": entry.run,
    }
    return load_published(
        root,
        entry.run,
        name=name,
        version=entry.version,
        provenance={k: v for k, v in provenance.items() if v},
        device=device,
    )


def looks_like_path(spec: str) -> bool:
    """``./rrnet2022``, ``/x/y``, ``runs/m``, ``.``, ``~/m``: a path, never a registry name."""
    return (
        os.sep in spec
        or "/" in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec in (os.curdir, os.pardir)
        or spec.startswith("~")
    )


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Ensemble:
    """What ``--model`` accepts: a registry name such as ``rrnet2022``, else a directory (ours,
    with ``model.yaml``, or one in the published repository's layout).

    A registered name always means the verified registry model, even when a folder of that
    name is in the working directory: give a path (``./rrnet2022``) for the folder.
    """
    from lamost_rrnet.ensemble import MODEL_FILE, Ensemble

    text = os.fspath(spec)
    names = registry()
    if text in names:  # a registry name cannot look like a path
        return load_registered(text, device=device, progress=progress)
    path = Path(text).expanduser()
    if not looks_like_path(text) and not path.is_dir():
        raise ModelError(
            f"unknown model {text!r}: not a registered name ({', '.join(names)}) nor a "
            "directory; give a directory as a path, e.g. ./my_model"
        )
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return Ensemble.from_directory(path, device=device)
        if published_runs(path) or (path.parent.name == "model_log" and _has_members(path)):
            return load_published(path, device=device)
        raise ModelError(
            f"{path}: neither a model directory (no {MODEL_FILE}) nor the published "
            "repository's layout (no model_log/<run>/SP0/weight_best.pkl)"
        )
    if path.exists():
        raise ModelError(f"{path}: a model is a directory or a registered name, not a file")
    raise ModelError(f"{text}: no such model directory")
