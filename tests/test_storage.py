"""The storage seam: a tensor stored in no HDF5 file at all (raw bytes at an offset, as a
safetensors file keeps them) streams through the byte mover and is verified like any other."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import FIXTURES
from weightport import digests
from weightport.storage import RawFileStorage
from weightport.view import Tensor

api = importlib.import_module("weightport.api")
transfer = importlib.import_module("weightport.transfer")
SOURCE = FIXTURES / "seq__k3.keras"


def _raw_reader(raw: Path, spoil: bool = False):
    """`weightport.read`, but the source's tensors moved into `raw` (every other one big-endian,
    each at an odd offset) and its view pointed there: no tensor of it is in HDF5 any more.
    With `spoil`, the Dense kernel's bytes in `raw` are not the source's."""
    read = api.read

    def read_raw(path, config=None):
        view = read(path, config=config)
        if Path(path) != SOURCE:
            return view
        places = []
        with open(raw, "wb") as fh:
            for i, tensor in enumerate(view.tensors):
                values = tensor.read().astype(">f4" if i % 2 else "<f4")
                if spoil and tensor.path.endswith("dense/vars/0"):
                    values = values[::-1].copy()
                fh.write(b"\0" * 3)
                places.append((fh.tell(), values.dtype))
                fh.write(values.tobytes())
        identity = digests.identity(str(raw))
        for layer in view.layers:
            layer.weights = [Tensor(t.name, t.role, t.path, RawFileStorage(str(raw), identity, offset, t.shape, dtype), t.k3_var)
                             for t, (offset, dtype) in zip(layer.weights, places[:len(layer.weights)])]
            places = places[len(layer.weights):]
        view.data_file, view.data_identity = str(raw), identity
        return view

    return read_raw


@pytest.mark.parametrize("source_order", [None, "chw"])
def test_raw_bytes_stream_through_the_byte_mover_and_verify(monkeypatch, tmp_path: Path, source_order) -> None:
    """Converted from raw-byte storages: every tensor moved in place by the byte mover (never read
    whole), the output's values those of the HDF5 source's own conversion, and verified."""
    reference = tmp_path / "reference.h5"
    weightport.convert(SOURCE, reference, source_order=source_order)
    moved = []

    class Mover(transfer._Mover):
        def __init__(self, src_fd, *args) -> None:
            moved.append(src_fd)
            super().__init__(src_fd, *args)

    monkeypatch.setattr(transfer, "_Mover", Mover)
    monkeypatch.setattr(api, "read", _raw_reader(tmp_path / "raw.bin"))
    out = tmp_path / "out.h5"
    built = weightport.convert(SOURCE, out, source_order=source_order)
    assert built.verification.ok and len(moved) == len(built.steps)
    with weightport.read(reference) as a, weightport.read(out) as b:
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert x.path == y.path and x.shape == y.shape and y.dtype == np.dtype("<f4")
            np.testing.assert_array_equal(x.read(), y.read())
        assert b.recorded_digests[digests.ATTRIBUTE] == digests.file_digest(str(tmp_path / "raw.bin"))


def test_verification_reads_raw_bytes(monkeypatch, tmp_path: Path) -> None:
    """The check reads the raw storage itself: a kernel whose raw bytes differ from the output fails."""
    out = tmp_path / "out.h5"
    weightport.convert(SOURCE, out)
    monkeypatch.setattr(api, "read", _raw_reader(tmp_path / "raw.bin", spoil=True))
    result = weightport.verify(SOURCE, out)
    assert [(p.source_layer, p.ok) for p in result.pairs if not p.ok] == [("dense", False)]


def test_raw_file_storage_reads_rows_and_refuses_a_short_or_replaced_file(tmp_path: Path) -> None:
    values = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    path = tmp_path / "t.bin"
    path.write_bytes(b"xy" + values.tobytes())
    storage = RawFileStorage(str(path), digests.identity(str(path)), 2, (2, 3, 4), ">f4")
    np.testing.assert_array_equal(storage.read(), values)
    np.testing.assert_array_equal(storage.read_rows(np.array([5, 0, 3])), values.reshape(6, 4)[[5, 0, 3]])
    short = RawFileStorage(str(path), None, 8, (2, 3, 4), ">f4")
    with pytest.raises(weightport.WeightportError, match=r"t.bin: changed or truncated while being read \(0 of 96 bytes at offset 8\)"):
        short.read()
    path.write_bytes(values.tobytes())  # rewritten since it was read
    with pytest.raises(weightport.WeightportError, match="changed while being converted"):
        storage.read_rows(np.array([0]))
