"""The suite itself: under CI it cannot pass by skipping what CI requires."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_ci_fails_without_the_shared_files(tmp_path: Path) -> None:
    """A checkout with no ../shared/keras-files beside it: its tests skip on a laptop, and under
    CI (CI=true) the run fails, naming the folder."""
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    for name in ("conftest.py", "test_shared_files.py"):
        shutil.copy(ROOT / "tests" / name, tests / name)

    def pytest_run(ci: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT), CI=ci)
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tests.parent,
                              capture_output=True, text=True, env=env, timeout=300)

    laptop = pytest_run("false")
    assert laptop.returncode == 0 and " skipped" in laptop.stdout and " passed" not in laptop.stdout, laptop.stdout[-2000:]
    ci = pytest_run("true")
    assert ci.returncode not in (0, 5), ci.stdout[-2000:]
    assert f"{tmp_path / 'shared' / 'keras-files'} is absent, and CI=true requires it" in ci.stdout, ci.stdout[-2000:]
