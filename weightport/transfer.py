"""Moving tensor bytes from a source file into the output, through one small buffer.

Keras writes every dataset contiguous and uncompressed, so a tensor is a run of bytes at a
known offset, and every streamable rule is a set of row moves (`rules.Run`). Those moves are
done on the raw bytes through one reusable `BLOCK_BYTES` buffer, whatever the model's size:
plain `pread`/`pwrite`, because tensor offsets in the source and the output rarely agree modulo
the page size, and there `copy_file_range` is measured slower than a copy through a buffer that
stays in the CPU cache. While the bytes go in, the kernel is asked to start writing them to disk
(`sync_file_range`, Linux), so the final fsync finds little left to do: the disk works while the
copy goes on instead of after it. The bytes of any tensor whose storage lies in place
(`Storage.offset`) move that way, whatever its container. Tensors that are not in place (chunked
or compressed datasets, a compressed `.keras` member) and the in-memory rules (Keras 1 `th`
kernels) are read through their storage and written whole.

A compressed output (`--compression`) cannot take raw bytes: `write_pieces` fills its chunked
datasets through h5py instead, a piece of whole target rows at a time (about `BLOCK_BYTES`),
each piece gathered from the source rows the rule maps it from (`Storage.read_rows`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from . import digests
from .errors import WeightportError
from .hdf5 import as_storage, damaged_hdf5
from .rules import RULES, Run, rows_of
from .storage import Storage, truncated
from .view import ModelView, Tensor

__all__ = ["BLOCK_BYTES", "Output", "keeps_order", "open_data_files", "piece_shape", "raw_location", "transfer", "write_pieces"]

BLOCK_BYTES = 1 << 20  # small enough to stay in the CPU cache between the read and the write
TRANSPOSE_BYTES = 4 << 20  # a tile a transposing rule moves at once (read, and again transposed)
WRITEBACK_BYTES = 32 << 20  # start the disk on what was written every this many bytes
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Optional[Callable[[int, int, int, int], int]]:
    """libc's sync_file_range, or None where there is none (not Linux): then the fsync does it all."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


class Output:
    """The output file being filled: its descriptor, the one buffer every move goes through,
    and the writeback started so far (none with `writeback` False: a file about to be copied
    into an archive need not reach the disk)."""

    def __init__(self, fd: int, writeback: bool = True, advance: Optional[Callable[[int], None]] = None) -> None:
        self.fd = fd
        self.buffer = memoryview(bytearray(BLOCK_BYTES))
        self._start_writeback = _sync_file_range() if writeback else None
        self._advance = advance  # told every byte count written (a progress bar)
        self._unstarted = 0  # bytes written since writeback was last started
        self._span: Optional[Tuple[int, int]] = None  # the byte range they lie in

    def write(self, offset: int, data: np.ndarray) -> None:
        """Write a contiguous array's bytes at `offset`; after every `WRITEBACK_BYTES` written,
        start writeback of the whole pages of the range they lie in (a partly written last page
        may still get more bytes, so it waits for the next start, or the fsync; scattered writes
        may see a page started and written again, which only costs speed)."""
        view = memoryview(data.reshape(-1).view(np.uint8))
        _pwrite(self.fd, view, offset)
        self.written(offset, offset + len(view))

    def write_rows(self, offsets: Sequence[int], data: np.ndarray, cuts: Optional[Sequence[int]] = None) -> None:
        """Write pieces of the rows of `data` (contiguous, 2-D) each at its offset, one call each:
        rows cuts[k] to cuts[k + 1] at offsets[k] (by default, each row at its own), and nothing
        more: the caller tells `written` once a range is whole (a transposed tile's pieces of
        target rows are whole rows only with the other tiles of their band)."""
        view, size = memoryview(data.reshape(-1).view(np.uint8)), data.shape[1] * data.itemsize
        bounds = range(len(offsets) + 1) if cuts is None else cuts
        for offset, low, high in zip(offsets, bounds, bounds[1:]):
            _pwrite(self.fd, view[low * size:high * size], offset)

    def written(self, start: int, end: int, count: Optional[int] = None) -> None:
        """Account for `count` bytes written within [start, end) (all of it by default): the
        progress, and the writeback started every `WRITEBACK_BYTES`."""
        count = end - start if count is None else count
        if self._advance is not None:
            self._advance(count)
        if self._start_writeback is None:
            return
        low, high = self._span or (start, end)
        self._span, self._unstarted = (min(low, start), max(high, end)), self._unstarted + count
        low, high = self._span[0] - self._span[0] % mmap.PAGESIZE, self._span[1] - self._span[1] % mmap.PAGESIZE
        if self._unstarted >= WRITEBACK_BYTES and high > low:
            self._start_writeback(self.fd, low, high - low, _SYNC_FILE_RANGE_WRITE)  # errors only cost speed
            self._span, self._unstarted = None, 0


def _pwrite(fd: int, view: memoryview, offset: int) -> None:
    """All of `view` at `offset` (a write may take fewer bytes than given)."""
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


@contextlib.contextmanager
def open_data_files(views: Iterable[ModelView]) -> Iterator[Dict[str, Tuple[int, int]]]:
    """{file: (read-only descriptor, size)} for each view's data file and every file a tensor lies
    in place in (`Storage.offset`), each opened once; a file that is no longer the one its
    reader opened is refused."""
    files: Dict[str, Tuple[int, int]] = {}
    try:
        for view in views:
            wanted = {view.data_file: view.data_identity} if view.data_file else {}
            for tensor in view.tensors:
                if tensor.storage.offset is not None:
                    wanted.setdefault(tensor.storage.file, tensor.storage.identity)
            for file, identity in wanted.items():
                if file not in files:
                    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO put in its place cannot block
                    files[file] = (fd, os.fstat(fd).st_size)
                    if identity is not None and digests.identity(file, fd) != identity:
                        raise digests.changed(file)  # the raw bytes would come from another file than the one planned
        yield files
    finally:
        for fd, _ in files.values():
            os.close(fd)


def raw_location(tensor: Tensor, files: Dict[str, Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """(open descriptor, byte offset) of a tensor whose storage lies contiguous in place in one of
    `files` (from `open_data_files`), else None."""
    storage = tensor.storage
    if storage.offset is None:
        return None
    fd, size = files[storage.file]
    if storage.offset + storage.size * storage.dtype.itemsize > size:
        raise WeightportError(storage.file, f"tensor {tensor.path} ends past the end of the file (truncated file)",
                              "the file is damaged; save or download it again")
    return fd, storage.offset


def keeps_order(rule_name: str, shape: Tuple[int, ...], params: dict) -> bool:
    """Whether the rule leaves every element where it is (a copy, a reshape, a Dense kernel to a
    1x1 or an hwc-flattened window's conv): the target's bytes are then the source's, same dtype."""
    runs = RULES[rule_name].runs
    return runs is not None and runs(shape, params) == [Run(0, 1, 0, 1, rows_of(shape)[0])]


def transfer(rule_name: str, params: dict, storage: Union[Storage, h5py.Dataset], source: Optional[Tuple[int, int]],
             output: Output, out_offset: int, out_dtype: np.dtype, source_file: str) -> None:
    """Write the target tensor made by `rule_name` from `storage` (a tensor's storage, or an h5py
    dataset) at `out_offset` of `output`.

    `source` is (open fd, byte offset) when the tensor can be read in place (`raw_location`), else
    None; `source_file` names the file in the error when its values cannot be read (a damaged
    compressed chunk, say).
    """
    storage = as_storage(storage)
    rule = RULES[rule_name]
    if storage.size == 0:
        return
    if rule.columns is not None and source is not None:
        _columns(rule.columns(tuple(storage.shape), params), source, storage, output, out_offset, out_dtype, source_file)
        return
    if rule.runs is None or source is None:
        output.write(out_offset, _whole(rule_name, params, storage, source_file, out_dtype))
        return
    mover = _Mover(source[0], source[1], storage.dtype, output, out_offset, out_dtype, rows_of(storage.shape)[1], source_file)
    for run in rule.runs(tuple(storage.shape), params):
        mover.move(run)


def _whole(rule_name: str, params: dict, storage: Storage, source_file: str, dtype: np.dtype) -> np.ndarray:
    """The whole target tensor in memory, for what is not moved in place (small tensors, the
    in-memory rules, tensors stored chunked or compressed in the source)."""
    with damaged_hdf5(source_file):
        values = storage.read()
    return np.ascontiguousarray(RULES[rule_name].apply(values, params), dtype=dtype)


def _columns(columns: np.ndarray, source: Tuple[int, int], storage: Storage, output: Output, out_offset: int, out_dtype: np.dtype,
             source_file: str) -> None:
    """A target made of the source's columns (the source seen as (its first axis, the rest): a
    PyTorch weight), target row r being source column columns[r], moved a tile at a time
    (`_tile`): a tile's source rows read with one call each (one call for them all when they are
    whole), transposed, and its pieces of target rows written with one call each (one call for
    them all when they are whole rows that follow each other in the target). The tiles of a band
    of columns go one after the other, so the band's target rows are whole when the output is
    told to start their writeback (never a page half written)."""
    fd, offset = source
    rows = storage.shape[0]
    width, itemsize = storage.size // rows, storage.dtype.itemsize
    place = np.empty(width, np.int64)
    place[columns] = np.arange(width)  # the target row of each source column
    tile_rows, tile_columns = _tile(rows, width, TRANSPOSE_BYTES // max(itemsize, out_dtype.itemsize))
    read_into, made_into = np.empty(tile_rows * tile_columns, storage.dtype), np.empty(tile_rows * tile_columns, out_dtype)  # reused
    row_bytes = rows * out_dtype.itemsize
    for start in range(0, width, tile_columns):
        count = min(tile_columns, width - start)
        targets = place[start:start + count]
        at = out_offset + targets * row_bytes
        for first_row in range(0, rows, tile_rows):
            count_rows = min(tile_rows, rows - first_row)
            block = read_into[:count_rows * count].reshape(count_rows, count)
            _read_tile(fd, offset + (first_row * width + start) * itemsize, width * itemsize, block, source_file)
            made = made_into[:count_rows * count].reshape(count, count_rows)
            np.copyto(made, block.T, casting="unsafe")
            if count_rows == rows:  # whole target rows: those that follow each other in one call
                cuts = [0, *(np.flatnonzero(np.diff(targets) != 1) + 1).tolist(), count]
                output.write_rows(at[cuts[:-1]].tolist(), made, cuts)
            else:
                output.write_rows((at + first_row * out_dtype.itemsize).tolist(), made)
        output.written(int(at.min()), int(at.max()) + row_bytes, count * row_bytes)


def _tile(rows: int, width: int, elements: int) -> Tuple[int, int]:
    """(source rows, source columns) of a tile of at most `elements`. A tile of R rows and C
    columns takes R reads and C writes, but one read where its rows are whole (C = width) and
    one write where the target rows are (R = rows): whole on the side shorter than the square
    tile's, else the square, which takes the fewest calls."""
    if rows * width <= elements:
        return rows, width
    side = max(1, math.isqrt(elements))
    if rows <= side:
        return rows, elements // rows
    if width <= side:
        return elements // width, width
    return side, side


def _read_tile(fd: int, at: int, stride: int, block: np.ndarray, source_file: str) -> None:
    """Read `block` (rows, columns) from source rows `stride` bytes apart, the first at `at`:
    one call when its rows are whole (they follow each other in the file), else one a row."""
    view, size = memoryview(block.reshape(-1).view(np.uint8)), block.shape[1] * block.itemsize
    spans = [(view, at)] if size == stride else [(view[i * size:(i + 1) * size], at + i * stride) for i in range(block.shape[0])]
    for into, where in spans:
        got = os.preadv(fd, [into], where)
        if got != len(into):
            raise truncated(source_file, got, len(into), where)


class _Mover:
    """Executes row runs between two raw byte regions, converting dtype when they differ.
    Offsets are counted in elements; bytes only at the system calls."""

    def __init__(self, src_fd: int, src_offset: int, src_dtype: np.dtype, output: Output, dst_offset: int,
                 dst_dtype: np.dtype, row: int, source_file: str) -> None:
        self.src_fd, self.src_offset, self.src_dtype, self.source_file = src_fd, src_offset, src_dtype, source_file
        self.output, self.dst_offset, self.dst_dtype = output, dst_offset, dst_dtype
        self.row = row
        self.block = len(output.buffer) // max(src_dtype.itemsize, dst_dtype.itemsize)  # elements per buffer

    def move(self, run: Run) -> None:
        if run.src_stride == 1 and run.dst_stride == 1:
            self._span(run.src_row * self.row, run.dst_row * self.row, run.count * self.row)
            return
        rows = self.block // self.row
        if rows == 0:  # rows longer than the buffer: each row is a span of its own
            for k in range(run.count):
                self._span((run.src_row + k * run.src_stride) * self.row, (run.dst_row + k * run.dst_stride) * self.row, self.row)
            return
        for start in range(0, run.count, rows):
            self._rows(run.src_row + start * run.src_stride, run.src_stride, run.dst_row + start * run.dst_stride,
                       run.dst_stride, min(rows, run.count - start))

    def _span(self, src: int, dst: int, count: int) -> None:
        """`count` consecutive elements, a buffer at a time."""
        for start in range(0, count, self.block):
            n = min(self.block, count - start)
            self._fill(src + start, n)
            self._write(dst + start, self._converted(n))

    def _rows(self, src: int, src_stride: int, dst: int, dst_stride: int, count: int) -> None:
        """`count` rows that fit in the buffer: gathered, then scattered (one call per side where contiguous)."""
        row = self.row
        if src_stride == 1:
            self._fill(src * row, count * row)
        else:
            for k in range(count):
                self._fill((src + k * src_stride) * row, row, at=k * row)
        data = self._converted(count * row)
        if dst_stride == 1:
            self._write(dst * row, data)
            return
        for k in range(count):
            self._write((dst + k * dst_stride) * row, data[k * row:(k + 1) * row])

    def _fill(self, element: int, count: int, at: int = 0) -> None:
        """Read `count` source elements, from element `element` on, into the buffer at element `at`."""
        size = self.src_dtype.itemsize
        target = self.output.buffer[at * size:(at + count) * size]
        at_byte = self.src_offset + element * size
        got = os.preadv(self.src_fd, [target], at_byte)
        if got != len(target):
            raise truncated(self.source_file, got, len(target), at_byte)

    def _converted(self, count: int) -> np.ndarray:
        """The buffer's first `count` elements in the output's dtype."""
        values = np.frombuffer(self.output.buffer, self.src_dtype, count)
        return values if self.src_dtype == self.dst_dtype else values.astype(self.dst_dtype)

    def _write(self, element: int, values: np.ndarray) -> None:
        self.output.write(self.dst_offset + element * self.dst_dtype.itemsize, values)


def write_pieces(rule_name: str, params: dict, storage: Union[Storage, h5py.Dataset], target: h5py.Dataset, source_file: str,
                 advance: Optional[Callable[[int], None]] = None) -> None:
    """Write the target tensor made by `rule_name` from `storage` (a tensor's storage, or an h5py
    dataset) into the h5py dataset `target` (chunked, compressed), a piece of whole rows at a
    time, calling `advance(bytes)` after each. Vectors, scalars, the in-memory rules and reshapes
    that change the row length (a vector alpha to (1, 1, n) or (n, 1, 1): small) are written whole."""
    storage = as_storage(storage)
    rule = RULES[rule_name]
    if storage.size == 0:
        return
    if rule.runs is None or target.ndim < 2 or storage.ndim < 1 or storage.shape[-1] != target.shape[-1]:
        target[()] = _whole(rule_name, params, storage, source_file, target.dtype)
        if advance is not None:
            advance(target.nbytes)
        return
    source_rows = _source_rows(rule.runs(tuple(storage.shape), params), rows_of(target.shape)[0])
    for index, first, count in _pieces(target.shape, target.dtype.itemsize):
        rows = np.arange(first, first + count) if source_rows is None else source_rows[first:first + count]
        with damaged_hdf5(source_file):
            values = storage.read_rows(rows).astype(target.dtype)
        target[index] = values.reshape((-1,) + target.shape[len(index):])
        if advance is not None:
            advance(values.nbytes)


def _source_rows(runs: List[Run], rows: int) -> Optional[np.ndarray]:
    """For every target row, the source row it comes from (one int64 a row); None when every
    row stays where it is, the common case."""
    if runs == [Run(0, 1, 0, 1, rows)]:
        return None
    mapping = np.full(rows, -1, np.int64)
    for run in runs:
        mapping[run.dst_row:run.dst_row + run.count * run.dst_stride:run.dst_stride] = run.src_row + run.src_stride * np.arange(run.count)
    if (mapping < 0).any():
        raise RuntimeError("the rule's runs leave target rows unfilled")
    return mapping


def _layout(shape: Tuple[int, ...], itemsize: int) -> Tuple[int, int, int]:
    """How a tensor (at least 2-D) seen as rows is cut into pieces of about `BLOCK_BYTES`, or one
    row where a row is bigger: (the axis a piece ranges over, the rows under one index of that
    axis, how many of its indices a piece takes); the axes before it are fixed in a piece."""
    lead = shape[:-1]
    wanted = max(1, BLOCK_BYTES // max(1, shape[-1] * itemsize))  # rows per piece
    axis = next(k for k in range(len(lead)) if int(np.prod(lead[k + 1:], dtype=np.int64)) <= wanted)
    inner = int(np.prod(lead[axis + 1:], dtype=np.int64))
    return axis, inner, max(1, wanted // inner)


def piece_shape(shape: Tuple[int, ...], itemsize: int) -> Tuple[int, ...]:
    """The shape of a full piece: the chunk shape of a compressed output dataset, so that every
    piece is written as whole chunks (never read back, decompressed and compressed again)."""
    axis, _, step = _layout(shape, itemsize)
    return (1,) * axis + (min(step, shape[axis]),) + tuple(shape[axis + 1:])


def _pieces(shape: Tuple[int, ...], itemsize: int) -> Iterator[Tuple[tuple, int, int]]:
    """The pieces of a tensor seen as rows, each consecutive whole rows: (index into the tensor,
    first row, number of rows)."""
    lead = shape[:-1]
    axis, inner, step = _layout(shape, itemsize)
    for prefix in np.ndindex(*lead[:axis]):
        base = (int(np.ravel_multi_index(prefix, lead[:axis])) if prefix else 0) * lead[axis] * inner
        for start in range(0, lead[axis], step):
            stop = min(lead[axis], start + step)
            yield prefix + (slice(start, stop),), base + start * inner, (stop - start) * inner
