"""The byte mover: the same file whatever the buffer size, with or without started writeback."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import weightport
from conftest import FIXTURES

transfer = importlib.import_module("weightport.transfer")


@pytest.mark.parametrize("source_order", [None, "chw"])
@pytest.mark.parametrize("block, writeback", [(100, None), (64, 1), (4 << 20, 0)])
def test_buffer_size_and_writeback_do_not_change_the_file(monkeypatch, tmp_path: Path, source_order, block, writeback) -> None:
    """Tiny buffers split every run (rows longer than the buffer become spans of their own),
    writeback started after every write or not at all (no sync_file_range: not Linux):
    the output is byte for byte the default one, and verifies."""
    reference = tmp_path / "reference.h5"
    weightport.convert(FIXTURES / "seq__k3.keras", reference, source_order=source_order)
    monkeypatch.setattr(transfer, "BLOCK_BYTES", block)
    if writeback is None:
        monkeypatch.setattr(transfer, "_sync_file_range", lambda: None)
    else:
        monkeypatch.setattr(transfer, "WRITEBACK_BYTES", writeback)
    other = tmp_path / "other.h5"
    built = weightport.convert(FIXTURES / "seq__k3.keras", other, source_order=source_order)
    assert built.verification.ok
    with weightport.read(reference) as a, weightport.read(other) as b:
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert x.path == y.path and x.shape == y.shape
            assert (x.read() == y.read()).all()


def test_writeback_is_started_on_the_output(monkeypatch, tmp_path: Path) -> None:
    """The kernel is asked to start writing the output while it is filled: each time the range
    just written, on the output's one descriptor."""
    calls = []
    real = transfer._sync_file_range()
    if real is None:
        pytest.skip("this platform has no sync_file_range (not Linux): the fsync writes everything")

    def spy():
        def start(fd, offset, size, flags):
            calls.append((fd, offset, size, flags))
            return real(fd, offset, size, flags)
        return start

    monkeypatch.setattr(transfer, "_sync_file_range", spy)
    monkeypatch.setattr(transfer, "WRITEBACK_BYTES", 1)
    weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "out.h5")
    assert calls and all(flags == transfer._SYNC_FILE_RANGE_WRITE and size > 0 for _, _, size, flags in calls)
    assert all(offset % 4096 == 0 and size % 4096 == 0 for _, offset, size, _ in calls)  # whole pages only
    assert len({fd for fd, *_ in calls}) == 1


CASES = [  # (rule, params, source shape, target shape)
    ("copy", {}, (6, 5), (6, 5)),
    ("reshape-singleton", {"shape": [1, 1, 30]}, (30,), (1, 1, 30)),
    ("dense-to-1x1", {"shape": [1, 1, 6, 5]}, (6, 5), (1, 1, 6, 5)),
    ("dense-to-conv", {"window": [2, 3], "order": "hwc"}, (24, 5), (2, 3, 4, 5)),
    ("dense-to-conv", {"window": [2, 3], "order": "chw"}, (24, 5), (2, 3, 4, 5)),
    ("conv-to-dense", {"order": "chw"}, (2, 3, 4, 5), (24, 5)),
    ("kernel-flip", {}, (2, 3, 4, 5), (2, 3, 4, 5)),
    ("reshape-singleton", {"shape": [6, 1, 1]}, (6,), (6, 1, 1)),  # the row length changes (channels-first alpha)
    ("reshape-singleton", {"shape": [1, 6]}, (6, 1), (1, 6)),
    ("reshape-singleton", {"shape": [1, 1]}, (), (1, 1)),
]


IDS = [f"{c[0]}-{c[1].get('order', '')}-{'x'.join(map(str, c[2]))}" for c in CASES]


@pytest.mark.parametrize("rule, params, shape, target", CASES, ids=IDS)
@pytest.mark.parametrize("src_dtype", ["<f4", ">f4", "<f2"])
@pytest.mark.parametrize("block", [8, 24, 64, 1 << 20])
def test_raw_moves_give_what_the_rule_gives(monkeypatch, tmp_path: Path, rule, params, shape, target, src_dtype, block) -> None:
    """On raw bytes, through buffers smaller than a row, a few rows or all of them, gathering
    strided rows (conv-to-dense) and scattering them (dense-to-conv chw), converting dtype on
    the way: the output bytes are exactly the rule applied in memory."""
    import h5py
    import numpy as np

    monkeypatch.setattr(transfer, "BLOCK_BYTES", block)
    values = np.random.default_rng(0).normal(size=shape).astype(src_dtype)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["t"] = values
    out_dtype = np.dtype("<f4")
    expected = np.ascontiguousarray(transfer.RULES[rule].apply(values, params), dtype=out_dtype)
    assert expected.shape == target
    offset = 100  # not page-aligned, as HDF5 places data
    with h5py.File(tmp_path / "src.h5", "r") as f, open(tmp_path / "src.h5", "rb") as src, open(tmp_path / "out.bin", "wb+") as out:
        start = f["t"].id.get_offset()
        transfer.transfer(rule, params, f["t"], (src.fileno(), start), transfer.Output(out.fileno()), offset, out_dtype, "src.h5")
        out.seek(offset)
        written = np.frombuffer(out.read(), out_dtype).reshape(target)
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("block", [8, 24, 1 << 20])
def test_any_run_strides(monkeypatch, tmp_path: Path, block) -> None:
    """Runs are general (the rules today make only contiguous sources): rows gathered from a
    strided source into contiguous or strided targets land where the run says."""
    import numpy as np

    monkeypatch.setattr(transfer, "BLOCK_BYTES", block)
    source = np.arange(12 * 3, dtype="<f4").reshape(12, 3)
    runs = [transfer.Run(0, 4, 0, 1, 3), transfer.Run(1, 4, 3, 3, 3), transfer.Run(2, 4, 4, 3, 3), transfer.Run(3, 4, 5, 3, 3)]
    expected = np.full_like(source, np.nan)
    for run in runs:
        for k in range(run.count):
            expected[run.dst_row + k * run.dst_stride] = source[run.src_row + k * run.src_stride]
    (tmp_path / "src.bin").write_bytes(source.tobytes())
    with open(tmp_path / "src.bin", "rb") as src, open(tmp_path / "out.bin", "wb+") as out:
        out.write(np.full_like(source, np.nan).tobytes())
        out.flush()
        mover = transfer._Mover(src.fileno(), 0, source.dtype, transfer.Output(out.fileno()), 0, source.dtype, 3, "src.bin")
        for run in runs:
            mover.move(run)
        out.seek(0)
        assert not np.isnan(expected).any()
        np.testing.assert_array_equal(np.frombuffer(out.read(), "<f4").reshape(12, 3), expected)


@pytest.mark.parametrize("rule, params, shape, target", CASES, ids=IDS)
@pytest.mark.parametrize("block", [8, 24, 100, 1 << 20])
def test_pieces_give_what_the_rule_gives(monkeypatch, tmp_path: Path, rule, params, shape, target, block) -> None:
    """A compressed output is filled through h5py a piece of whole rows at a time (one row per
    piece when rows are bigger than the block, a few rows with a shorter last piece, or the whole
    tensor), each piece one chunk: exactly the rule applied in memory, from a contiguous or a
    compressed source, reporting every byte to the progress callback."""
    import h5py
    import numpy as np

    monkeypatch.setattr(transfer, "BLOCK_BYTES", block)
    values = np.random.default_rng(1).normal(size=shape).astype("<f2")
    expected = np.asarray(transfer.RULES[rule].apply(values, params), dtype="<f4")
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["plain"] = values
        if values.ndim:
            f.create_dataset("packed", data=values, chunks=True, compression="gzip")
    chunks = transfer.piece_shape(target, 4)
    with h5py.File(tmp_path / "src.h5", "r") as src, h5py.File(tmp_path / "out.h5", "w") as out:
        for name in src:
            written = out.create_dataset(name, shape=target, dtype="<f4", chunks=chunks, compression="lzf", shuffle=True)
            reported = []
            transfer.write_pieces(rule, params, src[name], written, "src.h5", reported.append)
            np.testing.assert_array_equal(written[()], expected)
            assert sum(reported) == expected.nbytes


def test_a_source_shorter_than_its_tensor_is_a_clear_error(tmp_path: Path) -> None:
    """A file truncated or rewritten under the conversion: the file named, not an internal error."""
    import numpy as np

    (tmp_path / "src.bin").write_bytes(b"\0" * 40)  # 10 float32 where 12 are expected
    with open(tmp_path / "src.bin", "rb") as src, open(tmp_path / "out.bin", "wb+") as out:
        mover = transfer._Mover(src.fileno(), 0, np.dtype("<f4"), transfer.Output(out.fileno()), 0, np.dtype("<f4"), 3, "src.bin")
        with pytest.raises(weightport.WeightportError, match="src.bin: changed or truncated while being read"):
            mover.move(transfer.Run(0, 1, 0, 1, 4))


@pytest.mark.parametrize("compression", [None, "lzf"])
def test_progress_is_told_every_byte_as_it_goes(monkeypatch, tmp_path: Path, compression) -> None:
    """`progress(bytes_written, total)`: increments that add up to the total, several per tensor
    when tensors take several blocks (a 4 GB kernel moves the bar as it goes)."""
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 256)
    calls = []
    built = weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "out.h5", compression=compression,
                               progress=lambda size, total: calls.append((size, total)))
    total = {t for _, t in calls}
    assert len(total) == 1 and sum(size for size, _ in calls) == total.pop()
    assert len(calls) > len(built.steps)


def test_no_writeback_for_the_weights_inside_an_archive(monkeypatch, tmp_path: Path) -> None:
    """A .keras output's weights file is copied into the archive and deleted: starting its
    writeback would only send to disk what is thrown away (the archive itself is fsynced)."""
    calls = []
    monkeypatch.setattr(transfer, "_sync_file_range", lambda: lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(transfer, "WRITEBACK_BYTES", 1)
    weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "out.keras")
    assert calls == []
    weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "out.h5")
    assert calls  # the same conversion to an .h5 does start it
