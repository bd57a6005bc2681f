"""The source's cryptographic digest for the provenance attributes, started as soon as a file is named.

The output records the BLAKE3 of its source (`weightport_source_blake3`): a cryptographic hash
that runs at ~3-4 GB/s on one core here, where SHA-256 (what weightport recorded before, still
checked by `verify` in older outputs) runs at ~1.3 GB/s and was the longest single piece of a
conversion. Started when the command line names the file (`start`), it runs on a second core
while Python imports numpy and h5py, reads and plans, and the writer (`source_digest`) finds it
done. A started hash belongs to the file as it was (device, inode, size, mtime, ctime): if the
file changed since, it is hashed again. A conversion that fails stops its hash (`discard`).
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from blake3 import blake3

from . import budgets
from .errors import WeightportError

__all__ = ["ALGORITHM", "ATTRIBUTE", "RECORDED", "start", "source_digest", "file_digest", "discard", "identity", "changed"]

ALGORITHM = "blake3"
ATTRIBUTE = f"weightport_source_{ALGORITHM}"  # the output's attribute names its algorithm
# the attributes weightport has written, and the hash each one holds (older outputs: SHA-256)
RECORDED: Dict[str, Callable[[], Any]] = {ATTRIBUTE: blake3, "weightport_source_sha256": lambda: _hashlib().sha256()}


def _hashlib() -> Any:
    """hashlib, imported when an older output's SHA-256 is checked: it loads OpenSSL's libcrypto,
    3.6 MiB of every conversion's resident memory otherwise."""
    import hashlib

    return hashlib

BLOCK_BYTES = 1 << 20  # read into one buffer that stays in the CPU cache
_Key = Tuple[str, int, int, int, int, int]
_pending: Dict[_Key, "_Hash"] = {}
_lock = threading.Lock()


class _Hash:
    """One file's digest computed in a daemon thread (a refused conversion exits without waiting)."""

    def __init__(self, path: str) -> None:
        self.done = threading.Event()
        self.stop = threading.Event()
        self.hexdigest = ""
        self.error: Optional[BaseException] = None
        threading.Thread(target=self._run, args=(path,), name="weightport-digest", daemon=True).start()

    def _run(self, path: str) -> None:
        try:
            self.hexdigest = file_digest(path, ATTRIBUTE, self.stop)
        except BaseException as error:  # kept for the caller, who reports it; never printed from the thread
            self.error = error
        finally:
            self.done.set()

    def result(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.hexdigest


def file_digest(path: str, attribute: str = ATTRIBUTE, stop: Optional[threading.Event] = None) -> str:
    """The hex digest of the file at `path` by the hash that the provenance `attribute` holds
    (a key of RECORDED), read a block at a time; `stop` set ends it early (with `_Stopped`)."""
    digest = RECORDED[attribute]()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb", buffering=0) as fh:  # a FIFO put in its place cannot block
        while count := fh.readinto(buffer):
            if stop is not None and stop.is_set():
                raise _Stopped(path)  # never the digest of part of the file
            digest.update(view[:count])  # blake3 and hashlib release the GIL on large updates
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
    if not stat.S_ISREG(info.st_mode) or budgets.hollow(info):  # a file of holes is refused unread, not hashed
        return
    key = _key(path, info)
    with _lock:
        if key not in _pending:
            _pending[key] = _Hash(path)


def source_digest(path: str, expected: Optional[_Key] = None) -> str:
    """The hex digest (ALGORITHM) of `path` as it is now: the started hash if the file is unchanged, else
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
    return pending.result() if pending is not None else file_digest(path)


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
