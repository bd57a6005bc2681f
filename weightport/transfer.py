"""Moving tensor bytes from a source file into the output, in bounded blocks.

Keras writes every dataset contiguous and uncompressed, so a tensor is a run of bytes at a
known offset, and every streamable rule is a set of row moves (`rules.Run`). Those moves are
done on the raw bytes (`copy_file_range` where the kernel offers it), never holding more than
`BLOCK_BYTES` at a time, whatever the model's size. Tensors that are not in place (chunked or
compressed datasets, a compressed `.keras` member) and the in-memory rules (Keras 1 `th`
kernels) are read through h5py and written whole.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import h5py
import numpy as np

from .errors import WeightportError
from .hdf5 import damaged_hdf5
from .rules import RULES, Run, rows_of
from .view import ModelView

__all__ = ["BLOCK_BYTES", "raw_location", "transfer"]

BLOCK_BYTES = 16 << 20
KERNEL_COPY_BYTES = 1 << 30


def raw_location(view: ModelView, dataset: h5py.Dataset) -> Optional[Tuple[str, int]]:
    """(file, byte offset) of a dataset stored contiguously in place, else None."""
    offset = dataset.id.get_offset()
    if offset is None or view.data_base is None or view.data_file is None:
        return None
    if dataset.id.get_storage_size() != dataset.size * dataset.dtype.itemsize:
        return None
    start = view.data_base + offset
    if start + dataset.size * dataset.dtype.itemsize > os.path.getsize(view.data_file):
        raise WeightportError(view.path, f"tensor {dataset.name} ends past the end of the file (truncated file)",
                              "the file is damaged; save or download it again")
    return view.data_file, start


def transfer(rule_name: str, params: dict, dataset: h5py.Dataset, source: Optional[Tuple[int, int]],
             out_fd: int, out_offset: int, out_dtype: np.dtype, source_file: str) -> None:
    """Write the target tensor made by `rule_name` from `dataset` at `out_offset` of `out_fd`.

    `source` is (open fd, byte offset) when the dataset can be read in place, else None;
    `source_file` names the file in the error when h5py cannot read the tensor (a damaged
    compressed chunk, say).
    """
    rule = RULES[rule_name]
    if dataset.size == 0:
        return
    if rule.runs is None or source is None:
        with damaged_hdf5(source_file):
            values = dataset[()]
        array = rule.apply(values, params)
        _write_all(out_fd, out_offset, np.ascontiguousarray(array, dtype=out_dtype).tobytes())
        return
    row = rows_of(dataset.shape)[1]
    mover = _Mover(source[0], source[1], dataset.dtype, out_fd, out_offset, out_dtype, row)
    for run in rule.runs(tuple(dataset.shape), params):
        mover.move(run)


class _Mover:
    """Executes row runs between two raw byte regions, converting dtype when they differ."""

    def __init__(self, src_fd: int, src_offset: int, src_dtype: np.dtype, dst_fd: int, dst_offset: int,
                 dst_dtype: np.dtype, row: int) -> None:
        self.src_fd, self.src_offset, self.src_dtype = src_fd, src_offset, src_dtype
        self.dst_fd, self.dst_offset, self.dst_dtype = dst_fd, dst_offset, dst_dtype
        self.src_row, self.dst_row = row * src_dtype.itemsize, row * dst_dtype.itemsize
        self.same = src_dtype == dst_dtype
        self.max_rows = max(1, BLOCK_BYTES // max(self.src_row, self.dst_row))

    def move(self, run: Run) -> None:
        if run.src_stride == 1 and run.dst_stride == 1 and self.same:  # one byte range: the kernel copies it
            _copy_range(self.src_fd, self.src_offset + run.src_row * self.src_row, self.dst_fd,
                        self.dst_offset + run.dst_row * self.dst_row, run.count * self.src_row)
            return
        for start in range(0, run.count, self.max_rows):
            count = min(self.max_rows, run.count - start)
            self._strided(run.src_row + start * run.src_stride, run.src_stride, run.dst_row + start * run.dst_stride, run.dst_stride, count)

    def _strided(self, src: int, src_stride: int, dst: int, dst_stride: int, count: int) -> None:
        if src_stride == 1:
            data = _read(self.src_fd, self.src_offset + src * self.src_row, count * self.src_row)
        else:
            data = b"".join(_read(self.src_fd, self.src_offset + (src + k * src_stride) * self.src_row, self.src_row)
                            for k in range(count))
        if not self.same:
            data = np.frombuffer(data, self.src_dtype).astype(self.dst_dtype).tobytes()
        if dst_stride == 1:
            _write_all(self.dst_fd, self.dst_offset + dst * self.dst_row, data)
            return
        view = memoryview(data)
        for k in range(count):
            _write_all(self.dst_fd, self.dst_offset + (dst + k * dst_stride) * self.dst_row,
                       view[k * self.dst_row:(k + 1) * self.dst_row])


def _read(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes at offset {offset}")
    return data


def _write_all(fd: int, offset: int, data) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:BLOCK_BYTES], offset)
        view, offset = view[written:], offset + written


def _copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, size: int) -> None:
    """Copy bytes file to file in the kernel where possible (no user memory, so in large
    requests), else through a buffer of at most `BLOCK_BYTES`."""
    while size > 0:
        try:
            done = os.copy_file_range(src_fd, dst_fd, min(size, KERNEL_COPY_BYTES), src_offset, dst_offset)
        except (AttributeError, OSError):
            done = 0
        if done <= 0:
            done = min(size, BLOCK_BYTES)
            _write_all(dst_fd, dst_offset, _read(src_fd, src_offset, done))
        src_offset, dst_offset, size = src_offset + done, dst_offset + done, size - done
