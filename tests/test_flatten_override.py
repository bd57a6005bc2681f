"""`--flatten` where the config stops shape inference (issue 10, case 6): a custom class
(`ConvDNA`) or a `TFOpLambda` before the Flatten; the window given is used, in the rank the
model has, and checked against inference where inference works; every hint asks for the
window in the model's rank (L,C for 1-D, H,W,C for 2-D; 1,C / 1,1,C for a global-pooling head)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import FIXTURES, import_or_skip, run_cli

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")


@keras.saving.register_keras_serializable(package="weightport_tests")
class ConvDNA(keras.layers.Conv1D):
    """A custom convolution over a DNA sequence: a class weightport cannot infer shapes through."""


def _dna(fcn: bool = False) -> Any:
    """Input(20, 4) -> ConvDNA(8, 5) -> MaxPooling1D(2) -> Flatten -> Dense(3) (window 8x8), or
    its fully-convolutional twin built in code."""
    head = [keras.layers.Conv1D(3, 8, name="out")] if fcn else [keras.layers.Flatten(), keras.layers.Dense(3, name="out")]
    return keras.Sequential([keras.Input(shape=(None if fcn else 20, 4)), ConvDNA(8, 5, name="dna"), keras.layers.MaxPooling1D(2), *head])


@pytest.fixture(scope="module")
def dna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("dna") / "dna.keras"
    _dna().save(str(path))
    return path


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("weightport: error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_an_unknown_class_asks_for_the_window_in_the_models_rank(dna: Path) -> None:
    err = _one_line_error(run_cli("plan", str(dna)))
    assert "layer 'dna' (ConvDNA)" in err and "give --flatten L,C" in err and "--flatten 1,C" in err and "H,W,C" not in err


def test_flatten_overrides_inference_through_an_unknown_class(dna: Path, tmp_path: Path) -> None:
    """The window given is the Dense's: the twin's Conv1D covers 8 steps of 8 channels, and the
    FCN built in code loads the output and computes what the classifier does."""
    out = tmp_path / "fcn.weights.h5"
    result = run_cli("convert", str(dna), "--flatten", "8,8", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "window given by --flatten" in run_cli("plan", str(dna), "--flatten", "8,8").stdout
    source, fcn = keras.models.load_model(str(dna)), _dna(fcn=True)
    fcn.load_weights(str(out))
    x = np.random.default_rng(0).normal(size=(2, 20, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(fcn(x))[:, 0, :], np.asarray(source(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window,message", [
    ("8,8,1", "--flatten 8,8,1 is 2-D, but the layers before Flatten 'flatten"),
    ("7,8", "Dense 'out' has 64 inputs but the window 7x8 holds 56; give --flatten L,C"),
])
def test_a_wrong_window_is_refused_by_name(dna: Path, window: str, message: str) -> None:
    assert message in _one_line_error(run_cli("plan", str(dna), "--flatten", window))


def test_flatten_must_agree_with_inference_where_it_works() -> None:
    source = FIXTURES / "conv1d__k3.keras"  # Conv1D(4, 3) over 20 steps, MaxPooling1D(2): a 9x4 window
    assert run_cli("plan", str(source), "--flatten", "9,4").returncode == 0
    err = _one_line_error(run_cli("plan", str(source), "--flatten", "8,4"))
    assert "--flatten 8,4 disagrees with the shape 9,4 the config gives before Flatten" in err and "give --flatten 9,4" in err


def test_a_tfoplambda_is_stepped_over_with_flatten(tmp_path: Path) -> None:
    """tf_keras records `tf.nn.relu(x)` as a TFOpLambda: inference stops there, --flatten takes over."""
    import tensorflow as tf

    tf_keras.utils.set_random_seed(4)
    inputs = tf_keras.Input(shape=(8, 8, 3))
    x = tf_keras.layers.MaxPooling2D(2)(tf.nn.relu(tf_keras.layers.Conv2D(4, 3)(inputs)))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(5)(tf_keras.layers.Flatten()(x)))
    source, out = tmp_path / "op.h5", tmp_path / "fcn.h5"
    model.save(str(source))
    err = _one_line_error(run_cli("plan", str(source)))
    assert "(TFOpLambda)" in err and "give --flatten H,W,C" in err and "--flatten 1,1,C" in err
    result = run_cli("convert", str(source), "--flatten", "3,3,4", "-o", str(out))
    assert result.returncode == 0, result.stderr
    fcn_in = tf_keras.Input(shape=(None, None, 3))
    y = tf_keras.layers.MaxPooling2D(2)(tf.nn.relu(tf_keras.layers.Conv2D(4, 3)(fcn_in)))
    fcn = tf_keras.Model(fcn_in, tf_keras.layers.Conv2D(5, 3)(y))
    fcn.load_weights(str(out))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(fcn.predict(x, verbose=0)[:, 0, 0, :], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_weights_only_global_pooling_head_is_asked_in_its_rank(tmp_path: Path) -> None:
    """No config: the rank comes from the convolutions (Conv1D here), the pooled window is 1,C."""
    keras.utils.set_random_seed(5)
    path = tmp_path / "gap1d.weights.h5"
    keras.Sequential([keras.Input(shape=(16, 3)), keras.layers.Conv1D(4, 3), keras.layers.GlobalAveragePooling1D(),
                      keras.layers.Dense(2)]).save_weights(str(path))
    err = _one_line_error(run_cli("plan", str(path)))
    assert "give --flatten L,C" in err and "--flatten 1,C" in err and "H,W,C" not in err
    assert run_cli("plan", str(path), "--flatten", "1,4").returncode == 0
