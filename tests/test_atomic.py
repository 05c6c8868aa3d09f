"""Atomic writes: all or nothing, and ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from lamost_rrnet.atomic import atomic_directory, atomic_path, atomic_write_bytes


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
