"""Bad input gets one line naming the file and the problem, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli


def _plain_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(10.0)
        f.attrs["note"] = "not keras"


def _text(path: Path) -> None:
    path.write_text("conv1 weights go here\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        g["dense/kernel:0"] = np.ones((64, 64), dtype="float32")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _zip_without_weights(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")


CASES = {
    "missing": (None, "no such file"),
    "directory": ("dir", "is a directory"),
    "empty": (_empty, "empty file"),
    "text": (_text, "not an HDF5 file"),
    "plain_hdf5": (_plain_hdf5, "not a Keras weights file"),
    "truncated": (_truncated, "damaged HDF5 file"),
    "zip_without_weights": (_zip_without_weights, "without model.weights.h5"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case: str, tmp_path: Path) -> None:
    make, expected = CASES[case]
    path = tmp_path / f"{case}.h5"
    if make == "dir":
        path.mkdir()
    elif make is not None:
        make(path)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"weightport: error: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_sidecar_config_names_the_config(tmp_path: Path) -> None:
    weights = tmp_path / "w.h5"
    _plain_hdf5(weights)
    result = run_cli("inspect", str(weights), "--config", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"weightport: error: {tmp_path / 'nope.json'}: config file not found")


def test_usage_error_exits_2() -> None:
    result = run_cli("inspect")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_help_and_version_exit_0() -> None:
    assert run_cli("--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("weightport ")


def test_reader_going_away_is_not_an_error() -> None:
    """`weightport inspect FILE --json | true`: the reader is gone before anything is written;
    no traceback, status 0."""
    import os
    import subprocess
    import sys

    from conftest import FIXTURES, ROOT

    child = subprocess.Popen([sys.executable, "-m", "weightport", "inspect", str(FIXTURES / "seq__k3.keras"), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    child.stdout.close()
    assert child.wait(timeout=120) == 0
    assert b"Traceback" not in child.stderr.read()


def test_a_profiler_still_reports() -> None:
    """The console script skips the interpreter's teardown, but not under a profiler, which
    prints after the program returns."""
    import os
    import subprocess
    import sys

    from conftest import FIXTURES, ROOT

    done = subprocess.run([sys.executable, "-m", "cProfile", "-m", "weightport", "inspect", str(FIXTURES / "seq__k3.keras")],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert done.returncode == 0 and "function calls" in done.stdout
