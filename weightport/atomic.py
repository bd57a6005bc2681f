"""Atomic output: a file appears whole at its destination, or not at all, and never over a
file it was not asked to replace.

The output is built in temporary files beside the destination (same filesystem, so the last
step is atomic), flushed and fsynced, then moved into place. Without `force` that move claims
OUT: `renameat2(RENAME_NOREPLACE)`, or link-then-unlink where the filesystem refuses it, so an
OUT that appeared while the output was written is kept and the run refused; with `force` OUT is
replaced. On any failure the temporaries are removed and the destination is left as it was.

Each temporary is owned by a shared `flock` on it, held from its creation until it is gone.
A run killed outright (SIGKILL, power loss) leaves temporaries named `.OUT.weightport-TOKEN.tmp*`
with no lock; the next run writing OUT removes those it can lock exclusively, so it never takes
a live writer's file, whatever process, PID namespace or container that writer runs in. HDF5's
own file lock would collide with this one: the writers open a temporary with `locking=False`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import Iterator, List, Optional

from .errors import WeightportError

__all__ = ["atomic_output", "remove_stale", "cannot_write", "TMP_MARK"]

TMP_MARK = ".weightport-"
_TOKEN_HEX = 8
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file would exceed the size limit",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_PLACE_ERRORS = {
    errno.ENOENT: "this folder takes no new files",  # /proc, /sys
    errno.ENAMETOOLONG: "the name is too long",
}
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


def _prefix(out: Path) -> str:
    """The start of OUT's temporaries' names: `.OUT.weightport-`, OUT's name shortened so that
    a temporary's name fits in the folder's name limit even when OUT's own name nearly fills it."""
    try:
        limit = os.pathconf(out.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len(f".{TMP_MARK}{'0' * _TOKEN_HEX}.tmp.9")
    name = out.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}{TMP_MARK}"


def remove_stale(out: Path) -> List[Path]:
    """Delete the temporaries a killed run left for `out` (those no writer holds locked); return them."""
    pattern = re.compile(re.escape(_prefix(out)) + f"[0-9a-f]{{{_TOKEN_HEX}}}" + r"\.tmp(\.\d+)?$")
    try:
        names = os.listdir(out.parent)
    except OSError:  # a folder that cannot be listed (a write-only drop-box) shows no temporaries to remove
        return []
    return [out.parent / name for name in names if pattern.match(name) and _remove_unlocked(out.parent / name)]


def _remove_unlocked(path: Path) -> bool:
    """Unlink `path` if it is a regular file nobody holds locked (a live writer holds it shared)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or os.stat(path, follow_symlinks=False).st_ino != info.st_ino:
            return False
        os.unlink(path)  # still locked: a writer creating this name again waits, then sees it gone
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create_locked(path: Path) -> int:
    """Create `path` and hold it shared-locked; the descriptor keeps the lock until it is closed."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another run's cleanup holds it
            if os.fstat(fd).st_nlink:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # that cleanup removed it before it was locked: create it again


def _renameat2(src: Path, dst: Path) -> None:
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if rename(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def _claim(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out` only if no `out` exists (FileExistsError otherwise), atomically: by
    `renameat2(RENAME_NOREPLACE)`, else by a hard link then an unlink. A filesystem with neither
    (FAT, some network ones) gets a check then a rename, which a writer could race."""
    try:
        _renameat2(tmp, out)
        return
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    try:
        os.link(tmp, out)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        if os.path.lexists(out):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out)) from None
        os.rename(tmp, out)
        return
    os.unlink(tmp)


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


def cannot_write(out: Path, exc: OSError) -> WeightportError:
    """A folder or name the output cannot take (too long a name, /proc, no permission)."""
    reason = _WRITE_ERRORS.get(exc.errno) or _PLACE_ERRORS.get(exc.errno) or (exc.strerror or str(exc)).lower()
    return WeightportError(out, f"cannot write the output here: {reason}", "choose another folder or a shorter name; nothing was written")


def _place(tmp: Path, out: Path, force: bool) -> None:
    """The last step: `tmp` becomes `out`, claiming it unless `force`."""
    try:
        if force:
            os.replace(tmp, out)
        else:
            _claim(tmp, out)
    except FileExistsError:
        raise WeightportError(out, "appeared while the output was being written, and was kept",
                              "pass --force to replace it; nothing was written") from None
    except OSError as exc:
        raise cannot_write(out, exc) from None


@contextlib.contextmanager
def atomic_output(out: Path, parts: int = 1, force: bool = False) -> Iterator[List[Path]]:
    """Yield `parts` temporary paths beside `out`, each created empty and locked; on success the
    first becomes `out` (replacing an existing one only with `force`).

    Write failures of the filesystem (full, quota, size limit, read-only) become a
    `WeightportError` naming `out`; every temporary is removed on any failure.
    """
    remove_stale(out)
    stem = out.parent / f"{_prefix(out)}{os.urandom(_TOKEN_HEX // 2).hex()}.tmp"  # what secrets.token_hex does, without loading OpenSSL (3.6 MiB)
    paths = [stem] + [stem.with_name(f"{stem.name}.{i}") for i in range(1, parts)]
    created: List[Path] = []
    with contextlib.ExitStack() as locks:  # released after the temporaries are removed, never before
        try:
            for path in paths:
                created.append(path)
                try:
                    locks.callback(os.close, _create_locked(path))
                except OSError as exc:
                    raise cannot_write(out, exc) from None
            yield paths
            with open(paths[0], "rb+") as fh:
                os.fsync(fh.fileno())
            _place(paths[0], out, force)
            _fsync_dir(out.parent)
        except (OSError, RuntimeError) as exc:  # HDF5 reports its own write failures as RuntimeError
            reason = _WRITE_ERRORS.get(_errno_of(exc))
            if reason is None:
                raise
            raise WeightportError(out, f"cannot write the output: {reason}", "free some space or choose another folder; nothing was written") from None
        finally:
            for path in created:
                with contextlib.suppress(OSError):
                    path.unlink()
