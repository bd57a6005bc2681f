"""The transposing byte mover (PyTorch's layouts into Keras's), tile by tile: whatever the tile
budget (tiles of whole source rows, of whole target rows, square ones, edges left over), dtype
and byte order, the output bytes are exactly the rule applied in memory, the writeback and the
progress are told every byte once, and the check reads tensors in place from the open files."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import weightport
from weightport import checks

transfer = importlib.import_module("weightport.transfer")

CASES = [  # (rule, params, PyTorch shape)
    ("torch-linear", {}, (37, 53)),
    ("torch-linear", {"shape": [1, 1, 53, 37]}, (37, 53)),
    ("torch-conv", {}, (11, 7, 3, 3)),
    ("torch-conv", {}, (5, 4, 3)),
    ("torch-conv-transpose", {}, (7, 6, 4, 4)),
    ("torch-linear-flatten", {"window": [3, 4], "order": "chw", "target_order": "hwc"}, (9, 60)),
    ("torch-linear-to-conv", {"window": [3, 4], "order": "chw", "shape": [3, 4, 5, 9]}, (9, 60)),
]
# tile budgets in bytes: a few values (square tiles, both sides cut), a few rows (whole target
# rows), a few source rows whole, everything at once
BUDGETS = [16, 64, 400, 3000, 1 << 22]


@pytest.mark.parametrize("rule, params, shape", CASES, ids=[f"{c[0]}-{'x'.join(map(str, c[2]))}" for c in CASES])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("src_dtype, out_dtype", [("<f4", "<f4"), (">f4", "<f4"), ("<f8", "<f2"), ("<f2", "<f4")])
def test_tiles_give_what_the_rule_gives(monkeypatch, tmp_path: Path, rule, params, shape, budget, src_dtype, out_dtype) -> None:
    monkeypatch.setattr(transfer, "TRANSPOSE_BYTES", budget)
    values = np.random.default_rng(1).normal(size=shape).astype(src_dtype)
    expected = np.ascontiguousarray(transfer.RULES[rule].apply(values, params), dtype=out_dtype)
    source_offset, out_offset = 13, 100  # not aligned, as in the files
    (tmp_path / "src.bin").write_bytes(b"\xff" * source_offset + values.tobytes())
    storage = weightport.storage.RawFileStorage(str(tmp_path / "src.bin"), None, source_offset, shape, np.dtype(src_dtype))
    told = []
    with open(tmp_path / "src.bin", "rb") as src, open(tmp_path / "out.bin", "wb+") as out:
        output = transfer.Output(out.fileno(), advance=told.append)
        transfer.transfer(rule, params, storage, (src.fileno(), source_offset), output, out_offset, np.dtype(out_dtype), "src.bin")
        out.seek(out_offset)
        written = np.frombuffer(out.read(), out_dtype).reshape(expected.shape)
    np.testing.assert_array_equal(written, expected)
    assert sum(told) == expected.nbytes


@pytest.mark.parametrize("rows, width, budget, tile", [
    (4096, 25088, 1 << 20, (1024, 1024)),  # VGG16's fc1: square tiles, 1,024 reads and 1,024 writes of 4 KiB each
    (512, 4608, 1 << 20, (512, 2048)),  # a 3x3 conv of 512 -> 512: whole target rows (one write a tile)
    (1000, 4096, 1 << 20, (1000, 1048)),
    (200000, 10, 1 << 20, (104857, 10)),  # narrow rows: whole source rows (one read a tile)
    (25088, 10, 1 << 20, (25088, 10)),  # all of it at once
    (6, 5, 1 << 20, (6, 5)),
])
def test_tiles_take_few_calls(rows, width, budget, tile) -> None:
    """A tile is whole on its short side where the square would be longer than it, else square:
    the fewest reads and writes for its size."""
    assert transfer._tile(rows, width, budget) == tile


def test_the_writeback_starts_on_whole_bands_only(monkeypatch, tmp_path: Path) -> None:
    """Square tiles write pieces of target rows; writeback is started only on the target rows
    every tile of their band has written (a page at a time, never one half written)."""
    monkeypatch.setattr(transfer, "TRANSPOSE_BYTES", 16 << 10)  # 64 x 64 float32 tiles
    monkeypatch.setattr(transfer, "WRITEBACK_BYTES", 1)
    started = []
    monkeypatch.setattr(transfer, "_sync_file_range", lambda: lambda fd, start, length, flags: started.append((start, length)))
    values = np.random.default_rng(3).normal(size=(1024, 256)).astype("<f4")  # a target row is 4 KiB: a page
    (tmp_path / "src.bin").write_bytes(values.tobytes())
    storage = weightport.storage.RawFileStorage(str(tmp_path / "src.bin"), None, 0, values.shape, values.dtype)
    with open(tmp_path / "src.bin", "rb") as src, open(tmp_path / "out.bin", "wb+") as out:
        transfer.transfer("torch-linear", {}, storage, (src.fileno(), 0), transfer.Output(out.fileno()), 0, values.dtype, "src.bin")
    assert transfer._tile(1024, 256, 4096) == (64, 64)
    assert started == [(band * (256 << 10), 256 << 10) for band in range(4)]  # 4 bands of 64 target rows, once each
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.bin", "<f4").reshape(256, 1024), values.T)


def test_the_check_reads_tensors_in_place(tmp_path: Path) -> None:
    """`checks.in_place`: a block of consecutive rows in one read, scattered rows one each, the
    same values as the storage's own reads; a file cut short is the error naming it."""
    values = np.random.default_rng(2).normal(size=(6, 5)).astype(">f4")
    (tmp_path / "t.bin").write_bytes(b"\0" * 7 + values.tobytes())
    storage = weightport.storage.RawFileStorage(str(tmp_path / "t.bin"), None, 7, values.shape, values.dtype)
    with open(tmp_path / "t.bin", "rb") as f:
        placed = checks.in_place(storage, (f.fileno(), 7))
        for rows in ([2, 3, 4], [5, 0, 3], [1]):
            np.testing.assert_array_equal(placed.read_rows(np.array(rows)), values[rows])
        np.testing.assert_array_equal(placed.read(), values)
        np.testing.assert_array_equal(checks.leading(placed, 1, 4), values[1:4])
    assert checks.in_place(storage, None) is storage
    (tmp_path / "t.bin").write_bytes(b"\0" * 7 + values.tobytes()[:-8])
    with open(tmp_path / "t.bin", "rb") as f, pytest.raises(weightport.WeightportError, match="t.bin: changed or truncated while being verified"):
        checks.in_place(storage, (f.fileno(), 7)).read()
