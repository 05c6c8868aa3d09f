"""Atomic writes: all or nothing, and ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from lamost_rrnet.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    remove_stale_temporaries,
)


def test_written_file_gets_the_umask_mode_not_0600(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_bytes() == b"data"


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_on_success(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
        raise RuntimeError
    assert path.read_bytes() == b"old"
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_content_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    file_ino, dir_ino = (tmp_path / "out.bin").stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]


def test_temporaries_left_by_a_kill_are_removed(tmp_path):
    path = tmp_path / "d[1].h5"
    stale = tmp_path / ".d[1].h5.x8k2_q0z.part"
    stale.write_bytes(b"half")
    (tmp_path / ".other.h5.abcd.part").write_bytes(b"not ours")
    path.write_bytes(b"done")
    assert remove_stale_temporaries(path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.h5.abcd.part", "d[1].h5"]


def test_a_directory_appears_whole_with_the_umask_mode_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "a").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["a"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


def test_an_existing_directory_or_file_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "new").write_bytes(b"new")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_directory(target) as tmp:
        (tmp / "new").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    target_file = tmp_path / "file"
    target_file.write_bytes(b"x")
    with atomic_directory(target_file) as tmp:
        (tmp / "new").write_bytes(b"new")
    assert target_file.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["file", "model"]
