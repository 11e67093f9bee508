"""Atomic writes: whole or absent, the umask's mode, no clobbering unless asked."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from compressor.errors import DataError
from compressor.fsutil import atomic_file, check_output, umask, write_bytes, write_text


@pytest.fixture
def mask() -> Iterator[int]:
    """A known umask for the test, the old one restored after."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_umask_is_read_without_changing_it(mask: int) -> None:
    assert umask() == mask
    assert umask() == mask


def test_new_files_get_the_umask_mode_not_0600(tmp_path: Path, mask: int) -> None:
    write_bytes(tmp_path / "a.bin", b"x")
    write_text(tmp_path / "b.txt", "y")
    for name in ("a.bin", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask == 0o640
    os.umask(0o002)
    write_bytes(tmp_path / "c.bin", b"z")
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o664


def test_overwrite_false_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "keep.bin"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_bytes(target, b"new", overwrite=False)
    assert target.read_bytes() == b"precious" and leftovers(tmp_path) == []
    # a file created while the work ran is not replaced either
    with pytest.raises(FileExistsError), atomic_file(tmp_path / "late.bin", overwrite=False) as tmp:
        tmp.write_bytes(b"ours")
        (tmp_path / "late.bin").write_bytes(b"theirs")
    assert (tmp_path / "late.bin").read_bytes() == b"theirs" and leftovers(tmp_path) == []
    write_bytes(tmp_path / "fresh.bin", b"new", overwrite=False)
    assert (tmp_path / "fresh.bin").read_bytes() == b"new"
    write_bytes(target, b"replaced")  # the default: replace, as before
    assert target.read_bytes() == b"replaced"


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not (tmp_path / "new.bin").exists() and leftovers(tmp_path) == []


def test_check_output(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"x")
    assert check_output(tmp_path / "new.png", overwrite=False) == tmp_path / "new.png"
    assert check_output(tmp_path / "there.png", overwrite=True) == tmp_path / "there.png"
    assert check_output(tmp_path / "a" / "b" / "c.png", overwrite=False)  # parents get made
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        check_output(tmp_path / "there.png", overwrite=False)
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is a directory"):
            check_output(tmp_path, overwrite=overwrite)
    with pytest.raises(DataError, match=r"there\.png is not a directory"):
        check_output(tmp_path / "there.png" / "sub" / "c.png", overwrite=True)


def test_missing_parents_are_created(tmp_path: Path) -> None:
    write_bytes(tmp_path / "a" / "b" / "c.bin", b"x", overwrite=False)
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"x"


def test_atomic_dir_makes_a_folder_with_the_umask_mode(tmp_path: Path) -> None:
    from compressor.fsutil import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
