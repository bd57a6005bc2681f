"""The README's fine-tuning recipes run as written (docs/recipes/*.py). The FCN-32s recipe runs
in tests/test_fcn32s.py, on the VGG16 that module builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, import_or_skip

keras = import_or_skip("keras")


def test_the_score_map_recipe_runs_as_written(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "recipes" / "score_map.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "score map (45, 61, 10) for a 96x128 input" in result.stdout
    assert "every location equals the classifier's head on its features" in result.stdout
    assert "agree per location" in result.stdout  # weightport verify --keras --score-map, run by the recipe


def test_the_from_pytorch_recipe_runs_as_written(tmp_path: Path) -> None:
    import_or_skip("torch")
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "recipes" / "from_pytorch.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch-linear-flatten" in result.stdout  # the plan: the Linear's rows reordered chw -> hwc
    assert "Keras computes PyTorch's outputs" in result.stdout
