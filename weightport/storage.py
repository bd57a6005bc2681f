"""Where a tensor's values lie, and how to read them: the one object a reader hands to the view.

Every later stage asks a tensor's storage, never its container: the byte mover (`transfer`)
streams any tensor stored contiguous and uncompressed in place (`offset`), whatever file format
holds it, and everything else reads through `read` / `read_rows`. HDF5 is one storage
(`hdf5.HDF5Storage`); a format that keeps raw little- or big-endian bytes at known offsets
(safetensors, say) uses `RawFileStorage` as it is.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np

from . import digests
from .errors import WeightportError

__all__ = ["Storage", "RawFileStorage", "StridedFileStorage", "Widened", "ArrayStorage", "as_rows", "truncated"]


class Storage:
    """A tensor's values as stored: the file whose bytes hold them (`file`, for the digest, the
    identity check and errors), that file as the reader opened it (`identity`, `digests.identity`:
    a replaced file is noticed), the absolute byte offset of its C-order bytes when they lie
    contiguous and uncompressed in `file` (`offset`, else None), its shape and its dtype as stored
    (byte order included). Plain attributes: a model has hundreds of tensors, each asked often."""

    __slots__ = ("file", "identity", "offset", "shape", "dtype", "size")

    def __init__(self, file: str, identity: Optional[tuple], offset: Optional[int], shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.file = file
        self.identity = identity
        self.offset = offset
        self.shape: Tuple[int, ...] = shape
        self.dtype: np.dtype = dtype
        self.size = math.prod(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self) -> np.ndarray:
        """The whole tensor, in its stored dtype."""
        raise NotImplementedError

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The given distinct rows of the tensor seen as (prod(shape[:-1]), shape[-1]), in the
        order given (a vector is one row). This default reads the whole tensor: storages of big
        tensors read just the rows."""
        return as_rows(self.read())[np.asarray(rows, dtype=np.int64)]


def as_rows(values: np.ndarray) -> np.ndarray:
    """`values` seen as rows along its last axis: (prod(shape[:-1]), shape[-1]); a scalar is one row of one."""
    return values.reshape(-1, values.shape[-1] if values.ndim else 1)


def truncated(file: str, got: int, wanted: int, at: int) -> WeightportError:
    """The error for a file that gave fewer bytes than its tensor holds (cut short, or rewritten meanwhile)."""
    return WeightportError(file, f"changed or truncated while being read ({got} of {wanted} bytes at offset {at})",
                           "convert again once the file is complete and no longer being written")


class RawFileStorage(Storage):
    """A tensor whose C-order bytes lie at `offset` of `file` (a raw-byte format: safetensors).
    Each read opens `file` again (nothing is kept open), refuses a file that is no longer the one
    read (`identity`), and reads with `os.pread` within the file's size: a file shorter than the
    tensor is an error naming it, not a short array."""

    __slots__ = ()

    def __init__(self, file: str, identity: Optional[tuple], offset: int, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__(file, identity, offset, tuple(int(n) for n in shape), np.dtype(dtype))

    def read(self) -> np.ndarray:
        return self._read(np.zeros(1, np.int64), self.size).reshape(self.shape)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        width = self.shape[-1] if self.shape else 1
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():  # consecutive (a block): one read
            return self._read(rows[:1] * width, len(rows) * width).reshape(len(rows), width)
        return self._read(rows * width, width)

    def _read(self, starts: np.ndarray, count: int) -> np.ndarray:
        """`count` elements from each of the elements `starts`, one row each."""
        values = np.empty((len(starts), count), self.dtype)
        size = count * self.dtype.itemsize
        fd = os.open(self.file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO put in its place cannot block
        try:
            if self.identity is not None and digests.identity(self.file, fd) != self.identity:
                raise digests.changed(self.file)
            end = os.fstat(fd).st_size
            for k, element in enumerate(starts):
                at = self.offset + int(element) * self.dtype.itemsize
                got = os.preadv(fd, [values[k]], at) if at + size <= end else 0
                if got != size:
                    raise truncated(self.file, got, size, at)
        finally:
            os.close(fd)
        return values


class StridedFileStorage(Storage):
    """A tensor that is a strided view of elements stored in place (a PyTorch tensor saved
    transposed, or a view of a bigger storage): `span` holds the elements from the view's first to
    its last, and `strides` (in elements) say where each value lies among them. Read whole (the span
    is no bigger than the stored storage) and copied into C order: nothing lies in place for the byte mover."""

    __slots__ = ("_span", "_strides")

    def __init__(self, span: RawFileStorage, shape: Tuple[int, ...], strides: Tuple[int, ...]) -> None:
        super().__init__(span.file, span.identity, None, shape, span.dtype)
        self._span, self._strides = span, strides

    def read(self) -> np.ndarray:
        step = self.dtype.itemsize
        return np.lib.stride_tricks.as_strided(self._span.read(), self.shape, [s * step for s in self._strides], writeable=False).copy()


class Widened(Storage):
    """A bfloat16 tensor given as float32, exactly: a bfloat16 is the high 16 bits of the float32 of
    the same value, so each stored uint16 shifted up is that float32. Numpy has no bfloat16, and
    the byte mover copies bytes as they are: nothing here lies in place (`offset` None), values
    are read through `read` / `read_rows`, which widen what the storage of the bits (`raw`, of
    uint16 in either byte order) reads. Both PyTorch formats store bfloat16 so."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Storage) -> None:
        super().__init__(raw.file, raw.identity, None, raw.shape, np.dtype("<f4"))
        self._raw = raw

    def read(self) -> np.ndarray:
        return _widen(self._raw.read())

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        return _widen(self._raw.read_rows(rows))


def _widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


class ArrayStorage(Storage):
    """Values already in memory (a tensor made on the way: the units `--units` keeps), named
    after the file they came from. Nothing lies in place: the byte mover never sees them."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray, file: str) -> None:
        super().__init__(file, None, None, tuple(values.shape), values.dtype)
        self.values = values

    def read(self) -> np.ndarray:
        return self.values
