"""Downloading a registered model into the cache: resumable, retried, verified, locked.

pooch fetches each missing file with ``known_hash=None``: pooch's ``sha1:`` hashes the plain
content, while the registry holds git blob SHA-1s, so we verify ourselves, and delete the file
and raise on a mismatch. Interrupted transfers are retried and resumed with HTTP ranges where
the server allows them. Each file is downloaded under a lock beside it (``.<file>.lock``):
processes that start at once on an empty cache wait for the one downloading, then verify its
file instead of fetching (and writing) it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lamost_rrnet.errors import ModelError
from lamost_rrnet.hashing import file_hash
from lamost_rrnet.hub import RegistryEntry, RegistryFile, get_entry, model_cache_dir
from lamost_rrnet.locking import exclusive

#: Attempts per file after the first, and the first wait (doubled each time), in seconds.
RETRIES = 3
RETRY_WAIT = 1.0
TIMEOUT = 30.0


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
    name: str, *, progress: bool = False, retries: int = RETRIES, timeout: float = TIMEOUT
) -> Path:
    """Make sure every file of the named model is cached and verified; return its directory.
    ``progress`` shows a bar per file downloaded.

    Cached files whose hash is wrong are deleted and fetched again. A download whose hash is
    wrong is deleted and raises :class:`ModelError`; so does a failed download, with a message
    naming the URLs and where to put the files by hand.
    """
    import pooch

    from lamost_rrnet.progress import make_download_progress

    entry = get_entry(name)
    root = model_cache_dir(name)
    todo = []
    for f in entry.files:
        target = root / f.path
        if not (target.is_file() and file_hash(target, f.hash.partition(":")[0]) == f.hash):
            todo.append(f)
    if not todo:
        return root
    with make_download_progress(progress) as bars, _quiet_pooch():
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
