"""`--version`, `--help` and `inspect` must never import TensorFlow or Keras (5-7 s, 0.5 GB)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import FIXTURES, ROOT, import_or_skip

PROBE = """
import sys
from weightport.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in HEAVY if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args: str, heavy: tuple = ("tensorflow", "keras", "tf_keras", "jax", "torch")) -> subprocess.CompletedProcess:
    """Run the CLI with ARGS; stderr ends with `HEAVY:` and which of the `heavy` modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", f"HEAVY = {heavy!r}\n{PROBE}", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "--help"], ["inspect", str(FIXTURES / "seq__k3.keras")], ["inspect", str(FIXTURES / "seq__tfk.h5"), "--json"]], ids=" ".join)
def test_no_heavy_imports(args) -> None:
    result = _probe(*args)
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stderr, result.stderr


def test_version_names_the_package() -> None:
    from weightport import __version__

    result = _probe("--version")
    assert result.stdout.strip() == f"weightport {__version__}"


def test_a_bad_compression_is_refused_before_numpy_and_h5py_import(tmp_path) -> None:
    """The option is checked by argparse with weightport.compression alone, so the refusal is
    quick and the source's hash would not wait behind the imports."""
    result = _probe("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "x.h5"), "--compression", "zstd", heavy=("numpy", "h5py"))
    assert result.returncode == 2 and "unknown compression 'zstd'" in result.stderr
    assert "HEAVY:\n" in result.stderr, result.stderr


def test_version_starts_without_the_modules_only_other_paths_need() -> None:
    """Every command starts by importing weightport.cli and building its parser: typing (type hints
    only), traceback (--debug's), shutil (argparse's terminal width; it loads zlib, bz2, lzma) and
    the bytes-and-arrays stack are left out of that start (~17 ms of CPU of ~90 here)."""
    result = _probe("--version", heavy=("typing", "traceback", "shutil", "bz2", "lzma", "numpy", "h5py", "blake3"))
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stderr, result.stderr


@pytest.mark.parametrize("columns", ["60", "100"])
def test_help_is_wrapped_to_columns_as_argparse_does(columns) -> None:
    """The help's width comes from COLUMNS (else the terminal, else 80), minus 2, as argparse's own
    (shutil-based) formatter gives it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=columns)
    result = subprocess.run([sys.executable, "-m", "weightport", "convert", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    widths = [len(line) for line in result.stdout.splitlines()]
    assert max(widths) <= int(columns) - 2 and max(widths) > int(columns) - 20, widths


def _seq_state_dict(torch, path) -> None:
    """A torch.save state dict of fixtures/seq__tfk.h5's network in PyTorch (conv, NCHW flatten of 7x7x4, two Linear)."""
    nn = torch.nn
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(196, 8), nn.Linear(8, 5)).state_dict(), path)


def test_a_pytorch_checkpoint_is_read_and_converted_without_torch(tmp_path) -> None:
    """weightport reads a .pth with its own unpickler: `inspect` and `convert` (with its
    verification) import neither PyTorch (seconds, half a gigabyte) nor anything of Keras's."""
    torch = import_or_skip("torch")
    path, out = tmp_path / "model.pth", tmp_path / "out.h5"
    _seq_state_dict(torch, path)
    for args in (["inspect", str(path)], ["convert", str(path), "--target", str(FIXTURES / "seq__tfk.h5"), "-o", str(out)]):
        result = _probe(*args)
        assert result.returncode == 0, result.stderr
        assert "HEAVY:\n" in result.stderr, result.stderr
    assert out.exists()
