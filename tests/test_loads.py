"""Issue 10: every whole model weightport writes loads in the Keras it is for, and `convert`
proves it by loading it before the output takes OUT's place."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import pytest

import weightport
import weightport.api
from weightport.config import parse_model_config
from weightport.keras_load import LoadFailed, load_in_keras
from weightport.cli import main
from weightport.shapes import free_input_axes
from conftest import FIXTURES, SHARED_FILES, import_or_skip, load_maker, run_cli
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


def test_convert_json_says_which_keras_loaded_the_whole_model(tmp_path: Path) -> None:
    done = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "fcn.keras"), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] and document["output"]["written"]
    assert document["load"]["loaded_by"].startswith("Keras 3") and document["load"]["failure"] is None


def test_convert_json_of_a_whole_model_keras_cannot_load_is_one_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """The load failure is in the document (ok false, nothing written), and exit 1."""
    monkeypatch.setattr(weightport.api, "as_keras3", lambda config: config)
    status = main(["convert", str(FIXTURES / "seq__k3.h5"), "-o", str(tmp_path / "fx.keras"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 1 and document["ok"] is False and document["output"]["written"] is False
    assert "Could not locate class 'Sequential'" in document["load"]["failure"] and document["load"]["loaded_by"] is None
    assert list(tmp_path.iterdir()) == []


def test_a_model_keras_cannot_load_at_all_is_refused_as_input(tmp_path: Path) -> None:
    """When the source does not load either (a custom layer's code missing, here a damaged file),
    the environment cannot check the model: the input is refused, weightport is not blamed."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a model")
    with pytest.raises(weightport.WeightportError, match="cannot load this model here"):
        load_in_keras("keras", junk, Path("fcn.keras"), str(junk), None)


def test_without_keras_the_numpy_check_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("weightport.keras_load.installed", lambda module: False)
    built = weightport.convert(FIXTURES / "seq__k3.keras", tmp_path / "fcn.keras")
    assert built.verification.ok and built.loaded_by is None


# --- case 2: data formats mixed in one model ------------------------------------------------

def _mixed_model(folder: Path) -> Path:
    """A Keras 2.0.6-style classifier (tf_keras): Conv2D channels_last, then MaxPooling2D with
    data_format channels_first (it pools the width and the filters, taking the height as its
    channels), Flatten, Dense."""
    K = import_or_skip("tf_keras")
    K.backend.clear_session()
    model = K.Sequential([K.layers.InputLayer(input_shape=(12, 10, 3)), K.layers.Conv2D(4, 3, activation="relu"),
                          K.layers.MaxPooling2D(2, data_format="channels_first"), K.layers.Flatten(),
                          K.layers.Dense(8, activation="relu"), K.layers.Dense(5)], name="mixed")
    load_maker().fill_weights(K, model, 10)
    path = folder / "mixed.h5"
    model.save(str(path))
    return path


def _model_config(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def test_free_input_axes_follow_each_layers_data_format() -> None:
    """The pooling takes the height as its channels but has no weights, so the height stays
    free; a width that a later Conv takes as its channels (dl4j's file) does not."""
    mixed = parse_model_config({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 12, 10, 3]}},
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, "kernel_size": [3, 3]}},
        {"class_name": "MaxPooling2D", "config": {"name": "p", "data_format": "channels_first"}},
        {"class_name": "Conv2D", "config": {"name": "w", "filters": 2, "kernel_size": [4, 1]}}]}}, "m.h5")
    assert free_input_axes(mixed, "m.h5") == {"in": (0, 1)}  # the head's Conv (channels_last) sizes the pooled filters only
    assert free_input_axes(mixed, "m.h5", ["p"]) == {"in": (0, 1)}
    mixed.raw["config"]["layers"][3]["config"]["data_format"] = "channels_first"
    flipped = parse_model_config(mixed.raw, "m.h5")
    assert free_input_axes(flipped, "m.h5") == {"in": (1,)}  # a channels_first head Conv would size the height


def test_mixed_data_formats_full_model_loads_and_is_right_window_by_window(tmp_path: Path) -> None:
    """Case 2: the --full-model output opens only the input axes no layer sizes its weights by,
    its head Conv reads the window channels_last (the pooled filters as channels), tf_keras
    loads it (convert's own final check), and at twice the input it is right window by window.
    tf_keras on a CPU cannot run the channels_first pooling (of the source either), so the
    numbers come from Keras 3 (JAX backend), which loads the same legacy file."""
    source, out = _mixed_model(tmp_path), tmp_path / "fcn.h5"
    done = run_cli("convert", str(source), "--full-model", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "loaded: tf_keras" in done.stdout
    layers = _model_config(out)["config"]["layers"]
    assert layers[0]["config"]["batch_input_shape"] == [None, None, None, 3]
    assert (layers[-2]["class_name"], layers[-2]["config"]["data_format"], layers[-2]["config"]["kernel_size"]) == ("Conv2D", "channels_last", [10, 4])
    job = {"id": "mixed", "output": str(out), "reference": str(source), "train": [12, 10, 3], "dtype": "float32"}
    results = run_consumers({"tf_keras": [job], "k3-jax": [job]}, tmp_path)
    assert results["tf_keras"]["mixed"]["loaded"], results["tf_keras"]["mixed"]
    assert "only supports NHWC" in results["tf_keras"]["mixed"]["reference_error"]
    jax = results["k3-jax"]["mixed"]
    assert jax["loaded"] and jax["train_rel_error"] < 1e-5, jax
    assert jax["big"]["input"] == [24, 20, 3] and jax["big"]["map"] == [13, 6] and jax["big"]["rel_error"] < 1e-5, jax


def test_verify_keras_names_the_cpu_limit_and_blames_weightport_for_its_own_output(tmp_path: Path) -> None:
    """`verify --keras` on the mixed model: the channels_first pooling that TensorFlow's CPU
    kernels cannot run is named as the environment's limit (exit 2); an output whose config
    Keras cannot build (the input opened on the channels, as before the fix) is weightport's
    fault (exit 1), not "Keras cannot build this model here"."""
    source, out = _mixed_model(tmp_path), tmp_path / "fcn.h5"
    assert run_cli("convert", str(source), "--full-model", "-o", str(out), "--no-verify").returncode == 0
    done = run_cli("verify", str(source), str(out), "--keras")
    assert done.returncode == 2, done.stderr
    assert "TensorFlow on this CPU cannot run channels_first layers" in done.stderr and "NHWC" in done.stderr
    config = _model_config(out)
    config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 12, None, None]
    with h5py.File(out, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
    done = run_cli("verify", str(source), str(out), "--keras")
    assert done.returncode == 1, done.stderr
    assert "cannot build the twin" in done.stdout and "though it builds the source" in done.stdout
    assert "cannot build this model here" not in done.stdout + done.stderr


@pytest.mark.skipif(not (SHARED_FILES / "dl4j__simpleconv2d.hdf5").exists(), reason="../shared/keras-files is not here")
def test_dl4j_mixed_formats_full_model_loads_in_tf_keras(tmp_path: Path) -> None:
    """A real Keras 2.3.1 file: Conv2D channels_first on 1x28x28, then channels_last layers that
    take the width as channels. Only the height may grow; tf_keras loads the output."""
    out = tmp_path / "fcn.h5"
    done = run_cli("convert", str(SHARED_FILES / "dl4j__simpleconv2d.hdf5"), "--full-model", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "loaded: tf_keras" in done.stdout
    assert _model_config(out)["config"]["layers"][0]["config"]["batch_input_shape"] == [None, 1, None, 28]


def test_a_whole_model_holding_code_is_not_loaded_to_check_it(tmp_path: Path) -> None:
    """Loading a config with a Lambda would run the code the file carries: the final check
    declines (and says why) rather than run it; the numpy verification still runs."""
    K = import_or_skip("tf_keras")
    marker = tmp_path / "marker"
    writes_marker = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    inputs = K.Input((8, 8, 3))
    x = K.layers.Lambda(writes_marker, name="evil")(K.layers.Conv2D(4, 3, name="conv")(inputs))
    source = tmp_path / "src.h5"
    K.Model(inputs, K.layers.Dense(5, name="fc")(K.layers.Flatten(name="flat")(x))).save(source)
    marker.unlink()
    done = run_cli("convert", str(source), "--full-model", "-o", str(tmp_path / "fcn.h5"))
    assert done.returncode == 0, done.stderr
    assert "not loaded in Keras (the model config holds a Lambda layer 'evil'" in done.stdout and "verified:" in done.stdout
    assert not marker.exists()
