"""Issue 10: every whole model weightport writes loads in the Keras it is for, and `convert`
proves it by loading it before the output takes OUT's place."""

from __future__ import annotations

import zipfile
import json
from pathlib import Path

import pytest

import weightport
import weightport.api
from weightport.keras_load import LoadFailed, load_in_keras
from conftest import FIXTURES, import_or_skip, run_cli
from consumers import run_consumers

import_or_skip("keras")
import_or_skip("jax")


def test_keras3_h5_to_keras_loads_on_tensorflow_and_jax(tmp_path: Path) -> None:
    """Case 1: a Keras 3 full-model .h5 (whose model_config has no `module` keys) into a .keras
    that keras.models.load_model reads, Sequential and Functional, on both backends."""
    jobs = []
    for name in ("seq", "func_names"):
        out = tmp_path / f"{name}.keras"
        done = run_cli("convert", str(FIXTURES / f"{name}__k3.h5"), "-o", str(out), "--no-verify", "--quiet")
        assert done.returncode == 0, done.stderr
        config = json.loads(zipfile.ZipFile(out).read("config.json"))
        assert config["module"] and all("module" in layer for layer in config["config"]["layers"])
        train = json.loads(zipfile.ZipFile(FIXTURES / f"{name}__k3.keras").read("config.json"))["config"]["layers"][0]["config"]["batch_shape"][1:]
        jobs.append({"id": name, "output": str(out), "reference": str(FIXTURES / f"{name}__k3.keras"), "train": train, "dtype": "float32"})
    results = run_consumers({"k3-tensorflow": jobs, "k3-jax": jobs}, tmp_path)
    for consumer, by_id in results.items():
        for name, result in by_id.items():
            assert result["loaded"], f"{consumer} {name}: {result.get('error')}"
            assert result["train_rel_error"] < 1e-5, (consumer, name, result)
            assert result["big"]["rel_error"] < 1e-5 and result["big"]["windows"] > 1, (consumer, name, result)


def test_convert_refuses_a_whole_model_keras_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final load check: the config written without its Keras 3 keys (the bug of case 1) is
    caught, nothing is written, and the failure is weightport's (LoadFailed, exit 1)."""
    monkeypatch.setattr(weightport.api, "as_keras3", lambda config: config)
    out = tmp_path / "fx.keras"
    with pytest.raises(LoadFailed, match="cannot load what weightport wrote .*Could not locate class 'Sequential'.*though it loads the source"):
        weightport.convert(FIXTURES / "seq__k3.h5", out)
    assert list(tmp_path.iterdir()) == []


def test_convert_reports_which_keras_loaded_the_whole_model(tmp_path: Path) -> None:
    done = run_cli("convert", str(FIXTURES / "seq__tfk.h5"), "--full-model", "-o", str(tmp_path / "fcn.h5"))
    assert done.returncode == 0, done.stderr
    assert "loaded: tf_keras 2." in done.stdout


def test_a_model_keras_cannot_load_at_all_is_refused_as_input(tmp_path: Path) -> None:
    """When the source does not load either (a custom layer's code missing, here a damaged file),
    the environment cannot check the model: the input is refused, weightport is not blamed."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a model")
    with pytest.raises(weightport.WeightportError, match="cannot load this model here"):
        load_in_keras("keras", junk, Path("fcn.keras"), str(junk), None)


def test_without_keras_the_numpy_check_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("weightport.keras_load.importlib.util.find_spec", lambda name: None)
    built = weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "fcn.keras")
    assert built.verification.ok and built.loaded_by is None
