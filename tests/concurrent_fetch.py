"""A process of the concurrent-download test: wait for the others, then fetch one model.

A module of its own, so that the spawned processes import only the package, not the tests.
"""

from __future__ import annotations


def fetch_when_all_ready(name: str, barrier, results) -> None:
    from lamost_rrnet import hub
    from lamost_rrnet.download import fetch

    barrier.wait()
    try:
        root = fetch(name, progress=False)
        results.put((str(root), [s.status for s in hub.verify(name)]))
    except Exception as exc:  # reported to the test, which asserts there was none
        results.put(("error", repr(exc)))
