"""The downloadable models by name, and their cache.

- **Registry.** ``data/models.json`` in the package names the downloadable models, their files,
  URLs and hashes. ``$LAMOST_RRNET_REGISTRY`` may name a JSON file of the same form whose
  entries are added to (or replace) the shipped ones, e.g. to point at a local mirror.
- **Cache.** Files go to ``<cache>/models/<name>/<path in the repository>``, where ``<cache>``
  is ``$LAMOST_RRNET_CACHE`` or the platform's user cache. The published model's cache is thus
  itself a copy of the published repository's layout.

Downloading is :mod:`lamost_rrnet.download`, what ``--model`` accepts
:mod:`lamost_rrnet.model_resolution`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lamost_rrnet import hashing
from lamost_rrnet._moved import moved_names
from lamost_rrnet.errors import ModelError
from lamost_rrnet.paths import stays_inside

REGISTRY_ENV = "LAMOST_RRNET_REGISTRY"
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


def downloadable_models() -> dict[str, RegistryEntry]:
    """The downloadable models by name: the package's registry, plus
    ``$LAMOST_RRNET_REGISTRY`` if set."""
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
    entries = downloadable_models()
    if name not in entries:
        raise ModelError(f"unknown model {name!r}: known models are {', '.join(entries)}")
    return entries[name]


# -- the cache -----------------------------------------------------------------------------


def model_cache_dir(name: str) -> Path:
    """Where the files of the named model are (or will be) cached."""
    from lamost_rrnet.cache import cache_dir

    return cache_dir("models", name)


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
        actual = hashing.file_hash(path, f.hash.partition(":")[0])
        result.append(FileStatus(path, "ok" if actual == f.hash else "mismatch", f.hash, actual))
    return result


def cached_files(name: str) -> int:
    """How many of the named model's files are in the cache (present, not re-hashed)."""
    root = model_cache_dir(name)
    return sum((root / f.path).is_file() for f in get_entry(name).files)


# -- names that moved out of this module ---------------------------------------------------

# Old name -> its new module (":new_name" when renamed too); importable here for one release.
__getattr__ = moved_names(
    __name__,
    {
        "registry": "lamost_rrnet.hub:downloadable_models",
        "git_blob_sha1": "lamost_rrnet.hashing",
        "file_hash": "lamost_rrnet.hashing",
        "fetch": "lamost_rrnet.download",
        "RETRIES": "lamost_rrnet.download",
        "RETRY_WAIT": "lamost_rrnet.download",
        "TIMEOUT": "lamost_rrnet.download",
        "PUBLISHED_RANGES": "lamost_rrnet.published_layout",
        "PUBLISHED_RANGE_STDS": "lamost_rrnet.published_layout",
        "LABEL_CONFIG": "lamost_rrnet.published_layout",
        "MEMBER_FILE": "lamost_rrnet.published_layout",
        "load_label_config": "lamost_rrnet.published_layout",
        "published_label_ranges": "lamost_rrnet.published_layout",
        "published_runs": "lamost_rrnet.published_layout",
        "load_published": "lamost_rrnet.published_layout",
        "load_registered": "lamost_rrnet.model_resolution",
        "looks_like_path": "lamost_rrnet.model_resolution",
        "load_model": "lamost_rrnet.model_resolution",
        "DEFAULT_MODEL": "lamost_rrnet.names",
    },
)
