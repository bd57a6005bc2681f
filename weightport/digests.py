"""SHA-256 of source files for the provenance attributes, started as soon as a file is named.

Hashing is the longest single piece of a conversion: SHA-256 runs at ~1.3 GB/s on one core
here, so a 553 MB VGG16 file takes ~0.43 s, longer than copying it. Started when the command
line names the file (`start`), it runs on a second core while Python imports numpy and h5py,
reads and plans, and the writer (`sha256`) finds it done or nearly. A started hash belongs to
the file as it was (device, inode, size, mtime, ctime): if the file changed since, it is hashed
again. A conversion that fails stops its hash (`discard`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from typing import Dict, Optional, Tuple

from .errors import WeightportError

__all__ = ["start", "sha256", "discard", "identity", "changed"]

BLOCK_BYTES = 1 << 20  # read into one buffer that stays in the CPU cache
_Key = Tuple[str, int, int, int, int, int]
_pending: Dict[_Key, "_Hash"] = {}
_lock = threading.Lock()


class _Hash:
    """One file's SHA-256 computed in a daemon thread (a refused conversion exits without waiting)."""

    def __init__(self, path: str) -> None:
        self.done = threading.Event()
        self.stop = threading.Event()
        self.hexdigest = ""
        self.error: Optional[BaseException] = None
        threading.Thread(target=self._run, args=(path,), name="weightport-sha256", daemon=True).start()

    def _run(self, path: str) -> None:
        try:
            self.hexdigest = _file_sha256(path, self.stop)
        except BaseException as error:  # kept for the caller, who reports it; never printed from the thread
            self.error = error
        finally:
            self.done.set()

    def result(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.hexdigest


def _file_sha256(path: str, stop: Optional[threading.Event] = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while count := fh.readinto(buffer):
            if stop is not None and stop.is_set():
                raise _Stopped(path)  # never the digest of part of the file
            digest.update(view[:count])  # hashlib releases the GIL on large updates
    return digest.hexdigest()


class _Stopped(Exception):
    """A discarded hash ended early; nobody waits for its result."""


def _key(path: str, info: os.stat_result) -> _Key:
    return os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def identity(path: str, fd: Optional[int] = None) -> _Key:
    """Which file `path` names, as it is: through the open descriptor `fd` when given (the file
    actually being read, even if the name now points elsewhere)."""
    return _key(path, os.fstat(fd) if fd is not None else os.stat(path))


def changed(path: str) -> WeightportError:
    """The refusal when a source is replaced or rewritten while it is converted."""
    return WeightportError(path, "changed while being converted (rewritten or replaced since it was read)",
                           "convert again once the file is no longer being written; nothing was written")


def start(path: str) -> None:
    """Begin hashing `path` in the background. Anything but a regular file (missing, a
    directory, a pipe that would never end) is left alone, for the reader to report."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    key = _key(path, info)
    with _lock:
        if key not in _pending:
            _pending[key] = _Hash(path)


def sha256(path: str, expected: Optional[_Key] = None) -> str:
    """The hex SHA-256 of `path` as it is now: the started hash if the file is unchanged, else
    computed here (and a hash started on an older state of the file is stopped). With
    `expected` (the `identity` of the file that was read), a file that is no longer that one is
    refused: its hash would not describe what was converted."""
    key = _key(path, os.stat(path))
    if expected is not None and key != expected:
        discard(path)
        raise changed(path)
    with _lock:
        pending = _pending.pop(key, None)
    discard(path)
    return pending.result() if pending is not None else _file_sha256(path)


def discard(path: str) -> None:
    """Stop and forget every hash started for `path`."""
    real = os.path.realpath(path)
    with _lock:
        for key in [k for k in _pending if k[0] == real]:
            _pending.pop(key).stop.set()


def _forget_after_fork() -> None:
    """A forked child has none of the parent's threads: their hashes would never finish."""
    global _lock
    _lock = threading.Lock()
    _pending.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
