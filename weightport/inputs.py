"""Opening the files a user names (a source, `--config`, `--target`, verify's OUT): regular files only.

A FIFO, a device or a socket is refused before anything is read from it: a read from one can
block for ever (a pipe nobody writes, which Ctrl-C does not interrupt inside HDF5) or never end
(/dev/zero). Kept free of numpy and h5py, so the configuration reader can use it too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from .errors import WeightportError

__all__ = ["open_regular", "open_input", "by_descriptor"]

# What a missing path and a directory are told, per kind of input.
_ROLES = {
    "weights": ("no such file", "check the path", "is a directory, not a weights file", "give the .h5, .weights.h5 or .keras file inside it"),
    "config": ("config file not found", "check the --config path", "is a directory, not a JSON config", "give the config file"),
}
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def open_regular(path: Union[str, Path], role: str = "weights") -> int:
    """A read-only descriptor on `path`, once it is known to be a regular file.

    A FIFO, a device or a socket is refused, never read: a read from one can block for ever (a
    pipe nobody writes) or never end (/dev/zero). The name is checked first, so a device is not
    even opened; then the descriptor itself, opened with O_NONBLOCK so that opening a FIFO cannot
    block, is checked again, which holds whatever the name points to by then."""
    missing, look, directory, inside = _ROLES[role]
    try:
        _check_kind(path, os.stat(path), directory, inside)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise WeightportError(path, missing, look) from None
    except PermissionError:
        raise WeightportError(path, "permission denied", "make the file readable") from None
    except OSError as exc:
        raise WeightportError(path, f"cannot be opened ({exc.strerror or exc})", look) from None
    try:
        _check_kind(path, os.fstat(fd), directory, inside)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_kind(path: Union[str, Path], info: os.stat_result, directory: str, inside: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise WeightportError(path, directory, inside)
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL if test(info.st_mode)), "a special file")
        raise WeightportError(path, f"is {kind}, not a regular file", "give the file itself (weightport reads only regular files)")


def open_input(path: Union[str, Path]) -> int:
    """`open_regular` for a weights file, which is refused when empty (a save that never finished)."""
    fd = open_regular(path)
    if os.fstat(fd).st_size == 0:
        os.close(fd)
        raise WeightportError(path, "empty file (0 bytes)", "the file was not written completely; save the weights again")
    return fd


def by_descriptor(path: Union[str, Path], fd: int) -> str:
    """A name that opens the very file `fd` is open on, whatever `path` names by now (another file,
    a FIFO put in its place): /proc/self/fd/N on Linux, else `path` itself. Libraries that open by
    name (HDF5, zipfile) are given it, so what they open is the file that was checked."""
    name = f"/proc/self/fd/{fd}"
    return name if os.path.exists(name) else str(path)
