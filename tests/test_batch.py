"""Checkpoint sweeps: `convert A B C --out-dir DIR [-j N]`, each file on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli

GOOD = ["seq__k3.keras", "gap__k3.keras", "nested__tfk.h5", "conv1d__k3.h5"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sweep_converts_every_file_and_reports_the_bad_one(jobs: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.h5"
    bad.write_text("not a weights file")
    sources = [str(FIXTURES / name) for name in GOOD] + [str(bad)]
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", *sources, "--out-dir", str(out), "-j", jobs)
    assert result.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(GOOD)
    assert result.stderr.count("weightport: error:") == 1 and "broken.h5: not an HDF5 file" in result.stderr
    assert result.stdout.count("(verified)") == len(GOOD)
    for name in GOOD:
        assert run_cli("verify", str(FIXTURES / name), str(out / name)).returncode == 0


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "o.h5"), "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    result = run_cli("convert", *(str(FIXTURES / n) for n in GOOD), "--out-dir", str(tmp_path), "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_out_and_out_dir_are_exclusive(tmp_path: Path) -> None:
    assert run_cli("convert", str(FIXTURES / "seq__k3.keras")).returncode == 2
    two = [str(FIXTURES / n) for n in GOOD[:2]]
    result = run_cli("convert", *two, "-o", str(tmp_path / "o.h5"))
    assert result.returncode == 2 and "--out-dir" in result.stderr
