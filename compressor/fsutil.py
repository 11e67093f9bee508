"""Atomic writes: a crash never leaves a half-written file or folder that looks whole.

Files get the mode any new file gets (0666 less the umask), not mkstemp's private 0600, so
an output replaces or sits beside a user's files like one `open(path, "w")` would have made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import DataError


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting, then restore at once
    os.umask(mask)
    return mask


def check_output(target: Path, overwrite: bool) -> Path:
    """An output file path the user may write: DataError (one line) if not.

    Checked before the work, so a long encode does not end in a refusal. A missing parent
    folder is created (like every other output of this toolkit); a parent that is a file is
    refused.
    """
    target = Path(target)
    if target.is_dir():
        raise DataError(f"output {target} is a directory; give a file name")
    if target.exists() and not overwrite:
        raise DataError(f"output {target} exists; pass --overwrite to replace it")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"cannot write {target}: {parent} is not a directory")
            break
    return target


@contextlib.contextmanager
def atomic_file(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    overwrite=False: never replace an existing file, even one created while we worked
    (FileExistsError then, and the temporary file is removed).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        yield tmp
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, target: Path) -> None:
    """Put tmp at target unless target exists; atomic where hard links work."""
    try:
        os.link(tmp, target)  # fails if target exists, where a rename would replace it
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise FileExistsError(f"{target} exists") from None
        os.replace(tmp, target)


def temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new folder in `parent` with the mode any new folder gets (0777 less the umask), not
    mkdtemp's private 0700: it is renamed into place as a user's output."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it becomes `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".{target.name}.", ".partial")
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} exists")
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: Path, data: bytes, overwrite: bool = True) -> None:
    with atomic_file(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
