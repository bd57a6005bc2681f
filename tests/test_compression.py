"""`--compression`: chunked, compressed output datasets holding exactly what the default writes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import importlib

import weightport
from conftest import FIXTURES, run_cli

transfer = importlib.import_module("weightport.transfer")

SEQ = FIXTURES / "seq__k3.keras"


def _datasets(path: Path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.setdefault(name, obj) if isinstance(obj, h5py.Dataset) else None)
        return {name: (ds[()], ds.compression, ds.compression_opts, ds.shuffle, ds.chunks) for name, ds in found.items()}


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
@pytest.mark.parametrize("compression, opts", [("gzip", 4), ("GZIP=9", 9), ("lzf", None)])
def test_compressed_output_holds_the_same_tensors(monkeypatch, tmp_path: Path, suffix: str, compression: str, opts) -> None:
    """Pieces of 64 bytes cut every kernel into many chunks, gathered out of order for the chw
    flatten; the values are exactly the default output's, the chunks the pieces."""
    plain, packed = tmp_path / f"plain{suffix}", tmp_path / f"packed{suffix}"
    weightport.convert(SEQ, plain, source_order="chw")
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 64)
    built = weightport.convert(SEQ, packed, source_order="chw", compression=compression)
    assert built.verification.ok
    want, got = _datasets(plain), _datasets(packed)
    assert want.keys() == got.keys()
    for name, (values, *_) in want.items():
        data, filter_name, level, shuffle, chunks = got[name]
        np.testing.assert_array_equal(data, values)
        if values.ndim > 1:
            assert (filter_name, level, shuffle, chunks) == (compression.lower().split("=")[0], opts, True, transfer.piece_shape(values.shape, 4))
            assert np.prod(chunks) < values.size  # several pieces
        elif values.ndim:
            assert (filter_name, level, shuffle) == (compression.lower().split("=")[0], opts, True)


def test_cli_compression_and_its_refusals(tmp_path: Path) -> None:
    out = tmp_path / "fcn.weights.h5"
    done = run_cli("convert", str(SEQ), "-o", str(out), "--compression", "gzip=1", "--quiet")
    assert done.returncode == 0 and done.stderr == ""
    assert run_cli("verify", str(SEQ), str(out)).returncode == 0
    for bad in ("zip", "gzip=10", "lzf=3", "gzip="):
        refused = run_cli("convert", str(SEQ), "-o", str(tmp_path / "x.h5"), "--compression", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"unknown compression '{bad}'" in refused.stderr.splitlines()[-1]
        assert not (tmp_path / "x.h5").exists()


def test_sweep_passes_compression_on(tmp_path: Path) -> None:
    """A sweep writes each file under its own name: here a .keras archive, whose weights are compressed."""
    (tmp_path / "out").mkdir()
    done = run_cli("convert", str(SEQ), "--out-dir", str(tmp_path / "out"), "--compression", "lzf", "--quiet", keras_load=False)
    assert done.returncode == 0
    with weightport.read(tmp_path / "out" / SEQ.name) as view:
        assert {t.dataset.compression for t in view.tensors if t.dataset.ndim} == {"lzf"}
