"""The byte mover: kernel copies where offered, bounded buffers otherwise, same result."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path

import pytest

import weightport
from conftest import FIXTURES

transfer = importlib.import_module("weightport.transfer")


@pytest.mark.parametrize("source_order", [None, "chw"])
def test_small_blocks_and_no_copy_file_range_give_the_same_file(monkeypatch, tmp_path: Path, source_order) -> None:
    """With `copy_file_range` refused (another filesystem, an old kernel) and 100-byte blocks,
    every run is split and moved through the buffer path; the output still verifies."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    fast = tmp_path / "fast.h5"
    weightport.convert(FIXTURES / "seq__k3.keras", fast, source_order=source_order)
    monkeypatch.setattr(transfer.os, "copy_file_range", refuse)
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 100)
    slow = tmp_path / "slow.h5"
    built = weightport.convert(FIXTURES / "seq__k3.keras", slow, source_order=source_order)
    assert built.verification.ok
    with weightport.read(fast) as a, weightport.read(slow) as b:
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert (x.read() == y.read()).all()
