"""An exclusive lock on an output, so that two runs never write (or resume) it at once.

Runs on one output refuse to wait for each other; downloads into one cache file wait.

The lock is an advisory ``flock`` on a hidden file beside the output, holding the owner's PID.
The kernel drops it when its process ends, even by SIGKILL, so a killed run never leaves a
stale lock behind. Where ``fcntl`` is missing (Windows) runs are not guarded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lamost_rrnet.errors import OutputBusyError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of ``output`` (absolute, so that ``.`` or ``dir/..`` gets a name)."""
    output = Path(os.path.abspath(output))
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def exclusive(output: str | os.PathLike[str], *, wait: bool = False) -> Iterator[None]:
    """Hold the lock of ``output`` for the block; :class:`OutputBusyError` if another has it,
    or, with ``wait``, block until the other lets go."""
    if fcntl is None:
        yield
        return
    lock = lock_path(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"{output}: another run (PID {owner}) is writing it; wait for it to finish, or "
                "stop it and use --resume"
            ) from None
        # A previous holder removes the file as it lets go: if it did so after our open, the
        # lock we hold is on a file nobody else will see, so take the one that is there now.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
