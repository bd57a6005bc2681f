"""Shared test helpers: where the data lives, and running the CLI for real."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SHARED_FILES = ROOT.parent / "shared" / "keras-files"


def cli_command(*args: str, python: Sequence[str] = ()) -> dict:
    """The Popen arguments of `python [PYTHON...] -m weightport ARGS`, with this checkout importable."""
    return dict(args=[sys.executable, *python, "-m", "weightport", *args], env=dict(os.environ, PYTHONPATH=str(ROOT)))


def run_cli(*args: str, cwd: Path = ROOT, python: Sequence[str] = (), stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """Run `python -m weightport ARGS` in a fresh interpreter, as a user would (`python`: options
    before `-m`, such as `-m cProfile`; `stdout`: where its output goes, captured by default)."""
    return subprocess.run(**cli_command(*args, python=python), stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)


def shared_files() -> List[Path]:
    if not SHARED_FILES.is_dir():
        return []
    return sorted(p for p in SHARED_FILES.iterdir() if p.suffix in (".h5", ".hdf5"))


def sidecar_config(path: Path) -> Path | None:
    """Keras 1 weights-only files ship their architecture as `<stem>_config.json`."""
    candidate = path.with_name(path.name.replace("_weights.h5", "_config.json"))
    return candidate if candidate != path and candidate.exists() else None


def keras_required() -> bool:
    """CI sets WEIGHTPORT_REQUIRE_KERAS=1 so a missing Keras fails instead of skipping."""
    return os.environ.get("WEIGHTPORT_REQUIRE_KERAS") == "1"


def import_or_skip(module: str):
    if keras_required():
        return __import__(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")


def load_maker():
    """fixtures/make_fixtures.py as a module (its builders, fill_weights, save ...)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module
