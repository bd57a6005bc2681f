"""Bad input gets one line naming the file and the problem, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import FIXTURES, ROOT, cli_command, run_cli


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
    "text": (_text, "not an HDF5 file; give a Keras weights file (.h5, .hdf5, .weights.h5), a .keras archive, a .safetensors file or a PyTorch checkpoint"),
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
    child = subprocess.Popen(**cli_command("inspect", str(FIXTURES / "seq__k3.keras"), "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    child.stdout.close()
    assert child.wait(timeout=120) == 0
    assert b"Traceback" not in child.stderr.read()


def test_output_that_cannot_be_written_is_an_error() -> None:
    """`weightport plan SRC --json > /dev/full`: the JSON never arrives, so the status says so."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        done = run_cli("plan", str(FIXTURES / "seq__k3.keras"), "--json", stdout=full)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("weightport: error: cannot write standard output: No space left")


def test_closed_standard_output_is_no_traceback() -> None:
    """`weightport plan SRC >&-`: nowhere to print the plan, so it is not a success: the one
    error line and exit 2, as for an output that cannot be written; no traceback."""
    done = subprocess.run(**cli_command("plan", str(FIXTURES / "seq__k3.keras")), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, timeout=300, pass_fds=(), preexec_fn=lambda: os.close(1))
    assert done.returncode == 2, done.stderr
    assert done.stderr == "weightport: error: cannot write standard output: it is closed; send the output to a file or a pipe\n"


def test_a_profiler_still_reports() -> None:
    """The console script skips the interpreter's teardown, but not under a profiler, which
    prints after the program returns."""
    done = run_cli("inspect", str(FIXTURES / "seq__k3.keras"), python=("-m", "cProfile"))
    assert done.returncode == 0 and "function calls" in done.stdout
