"""Atomic output: a file appears whole at its destination, or not at all.

The output is built in a temporary file beside the destination (same filesystem, so the final
rename is atomic), flushed and fsynced, then renamed over the destination. On any failure the
temporary files are removed and the destination is left as it was. A run killed outright
(SIGKILL, power loss) leaves temporaries named `.OUT.weightport-PID-TOKEN.tmp*`; the next run
writing OUT removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import Iterator, List, Optional

from .errors import WeightportError

__all__ = ["atomic_output", "TMP_MARK"]

TMP_MARK = ".weightport-"
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file would exceed the size limit",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> List[Path]:
    """Delete the temporaries an earlier, killed run left for `out`; return what was removed."""
    pattern = re.compile(re.escape(f".{out.name}{TMP_MARK}") + r"(\d+)-[0-9a-f]+\.tmp(\..*)?$")
    removed = []
    for path in out.parent.iterdir() if out.parent.is_dir() else []:
        match = pattern.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _errno_of(exc: Exception) -> Optional[int]:
    """The errno of a failed write, from Python or from an HDF5 message (`errno = 28`)."""
    if getattr(exc, "errno", None):
        return exc.errno
    match = re.search(r"errno = (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(out: Path, parts: int = 1) -> Iterator[List[Path]]:
    """Yield `parts` temporary paths beside `out`; on success the first replaces `out`.

    Write failures of the filesystem (full, quota, size limit, read-only) become a
    `WeightportError` naming `out`; every temporary is removed on any failure.
    """
    remove_stale(out)
    stem = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    paths = [stem] + [stem.with_name(f"{stem.name}.{i}") for i in range(1, parts)]
    try:
        yield paths
        with open(paths[0], "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(paths[0], out)
        _fsync_dir(out.parent)
    except (OSError, RuntimeError) as exc:  # HDF5 reports its own write failures as RuntimeError
        reason = _WRITE_ERRORS.get(_errno_of(exc))
        if reason is None:
            raise
        raise WeightportError(out, f"cannot write the output: {reason}", "free some space or choose another folder; nothing was written") from None
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
