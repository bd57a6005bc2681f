"""Numerical equivalence with real Keras models, Keras 3 and tf_keras both.

For each classifier: save it, convert it (to the derived twin, and into a `--target`
template saved by the FCN model itself), build the FCN in Keras, `load_weights` the output
with no by_name and no skip_mismatch, and compare outputs with the classifier's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

import weightport
from conftest import import_or_skip, load_maker, run_cli

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")
maker = load_maker()
KERAS = {"k3": keras, "tfk": tf_keras}


@dataclass(frozen=True)
class Case:
    """A classifier, its FCN twin, and how close their outputs must be."""

    source: Callable[[Any], Any]
    fcn: Callable[[Any], Any]
    input_shape: tuple
    rtol: float = 1e-5
    dtype: str = "float32"
    source_order: Optional[str] = None  # what a weights-only source cannot tell (--source-order)


def _seq(K, layers):
    return K.Sequential(layers)


CASES = {
    "flatten": Case(
        lambda K: _seq(K, [K.Input((16, 16, 3)), K.layers.Conv2D(4, 3, activation="relu"), K.layers.MaxPooling2D(2),
                           K.layers.Flatten(), K.layers.Dense(8, activation="relu"), K.layers.Dense(5, activation="softmax")]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3, activation="relu"), K.layers.MaxPooling2D(2),
                           K.layers.Conv2D(8, 7, activation="relu"), K.layers.Conv2D(5, 1, activation="softmax")]),
        (16, 16, 3)),
    "gap": Case(
        lambda K: _seq(K, [K.Input((10, 10, 3)), K.layers.Conv2D(4, 3, use_bias=False), K.layers.BatchNormalization(),
                           K.layers.ReLU(), K.layers.GlobalAveragePooling2D(), K.layers.Dense(3)]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3, use_bias=False), K.layers.BatchNormalization(),
                           K.layers.ReLU(), K.layers.Conv2D(3, 1), K.layers.GlobalAveragePooling2D()]),
        (10, 10, 3)),
    "chw": Case(  # Permute((3, 1, 2)) + Flatten lists the window channels-first: the raw NCHW flatten order
        lambda K: _seq(K, [K.Input((8, 8, 3)), K.layers.Conv2D(4, 3), K.layers.Permute((3, 1, 2)), K.layers.Flatten(),
                           K.layers.Dense(6, activation="relu"), K.layers.Dense(3)]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3), K.layers.Conv2D(6, 6, activation="relu"), K.layers.Conv2D(3, 1)]),
        (8, 8, 3), source_order="chw"),
    "reshape_flatten": Case(  # a Reshape before the Flatten keeps the row-major order: the window is the conv's output
        lambda K: _seq(K, [K.Input((8, 8, 3)), K.layers.Conv2D(4, 3), K.layers.Reshape((36, 4)), K.layers.Flatten(), K.layers.Dense(5)]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3), K.layers.Conv2D(5, 6)]),
        (8, 8, 3)),
    "conv1d": Case(
        lambda K: _seq(K, [K.Input((20, 3)), K.layers.Conv1D(4, 3, activation="relu"), K.layers.MaxPooling1D(2),
                           K.layers.Flatten(), K.layers.Dense(6, activation="relu"), K.layers.Dense(2)]),
        lambda K: _seq(K, [K.Input((None, 3)), K.layers.Conv1D(4, 3, activation="relu"), K.layers.MaxPooling1D(2),
                           K.layers.Conv1D(6, 9, activation="relu"), K.layers.Conv1D(2, 1)]),
        (20, 3)),
    "bn_dropout_head": Case(
        lambda K: _seq(K, [K.Input((12, 12, 3)), K.layers.Conv2D(4, 3), K.layers.ReLU(), K.layers.MaxPooling2D(), K.layers.Flatten(),
                           K.layers.Dense(8), K.layers.BatchNormalization(), K.layers.ReLU(), K.layers.Dropout(0.5), K.layers.Dense(3)]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3), K.layers.ReLU(), K.layers.MaxPooling2D(),
                           K.layers.Conv2D(8, 5), K.layers.BatchNormalization(), K.layers.ReLU(), K.layers.Dropout(0.5), K.layers.Conv2D(3, 1)]),
        (12, 12, 3)),
    "nested": Case(
        lambda K: _nested(K, head=lambda x: K.layers.Dense(3)(K.layers.Dense(6, activation="relu")(K.layers.Flatten()(x))), size=12),
        lambda K: _nested(K, head=lambda x: K.layers.Conv2D(3, 1)(K.layers.Conv2D(6, 4, activation="relu")(x)), size=None),
        (12, 12, 3)),
    "custom_names": Case(
        lambda K: _named(K, ["img", "my_conv", "my_flat", "fc6", "predictions"]),
        lambda K: _seq(K, [K.Input((None, None, 3)), K.layers.Conv2D(4, 3, name="renamed_conv"), K.layers.Conv2D(5, 10, name="fcn_6"),
                           K.layers.Conv2D(2, 1, name="score")]),
        (12, 12, 3)),
    "fp16": Case(
        lambda K: _seq(K, [K.Input((8, 8, 2), dtype="float16"), K.layers.Conv2D(3, 3, dtype="float16"), K.layers.Flatten(dtype="float16"),
                           K.layers.Dense(4, dtype="float16")]),
        lambda K: _seq(K, [K.Input((None, None, 2), dtype="float16"), K.layers.Conv2D(3, 3, dtype="float16"), K.layers.Conv2D(4, 6, dtype="float16")]),
        (8, 8, 2), rtol=2e-3, dtype="float16"),
}


def _nested(K, head, size: Optional[int]):
    backbone = K.Sequential([K.layers.Conv2D(4, 3), K.layers.Conv2D(4, 3), K.layers.MaxPooling2D()], name="backbone")
    inputs = K.Input((size, size, 3))
    x = K.layers.Conv2D(4, 1, name="between")(backbone(inputs))
    return K.Model(inputs, head(x))


def _named(K, names):
    inputs = K.Input((12, 12, 3), name=names[0])
    x = K.layers.Flatten(name=names[2])(K.layers.Conv2D(4, 3, name=names[1])(inputs))
    outputs = K.layers.Dense(2, name=names[4])(K.layers.Dense(5, name=names[3])(x))
    return K.Model(inputs, outputs, name="renamed_model")


def _save_source(writer: str, model, folder: Path) -> tuple:
    """(a file with the config, a weights-only file) as each Keras writes them."""
    if writer == "k3":
        full, weights = folder / "src.keras", folder / "src.weights.h5"
    else:
        full, weights = folder / "src.h5", folder / "src_weights.h5"
    model.save(str(full))
    model.save_weights(str(weights))
    return full, weights


def _saved(name: str, writer: str, seed: int, folder: Path) -> tuple:
    """(Keras module, the case's classifier with fresh weights, its full file, its weights-only file)."""
    K = KERAS[writer]
    K.backend.clear_session()
    source = CASES[name].source(K)
    maker.fill_weights(K, source, seed)
    return (K, source) + _save_source(writer, source, folder)


def _outputs(model, x) -> np.ndarray:
    y = np.asarray(model(x, training=False)).astype("float64")
    return y.reshape(y.shape[0], -1)


def _close(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert error < rtol, f"max relative error {error:.3g}"


@pytest.mark.parametrize("writer", sorted(KERAS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_fcn_twin_reproduces_the_classifier(name: str, writer: str, tmp_path: Path) -> None:
    case = CASES[name]
    _, source, full, weights_only = _saved(name, writer, zlib.crc32(name.encode()), tmp_path)
    x = np.random.default_rng(0).normal(size=(3,) + case.input_shape).astype(case.dtype)
    want = _outputs(source, x)

    outputs = [weightport.convert(full, tmp_path / "twin.weights.h5") and tmp_path / "twin.weights.h5",
               weightport.convert(full, tmp_path / "twin.h5") and tmp_path / "twin.h5"]
    for reader in KERAS.values():  # both layouts load into both Keras lines
        template = tmp_path / f"template_{reader.__name__}.weights.h5"
        fcn = case.fcn(reader)
        fcn.save_weights(str(template))
        target_out = tmp_path / f"into_{reader.__name__}.weights.h5"
        weightport.convert(weights_only, target_out, target=template, source_order=case.source_order)
        for out in outputs + [target_out]:
            fcn = case.fcn(reader)
            fcn.load_weights(str(out))
            _close(_outputs(fcn, x), want, case.rtol)


@pytest.mark.parametrize("writer", sorted(KERAS))
def test_compressed_outputs_load_and_reproduce(writer: str, tmp_path: Path) -> None:
    """`compression`: gzip and lzf outputs, both layouts, load into both Keras lines as they are."""
    case = CASES["chw"]
    _, source, full, _ = _saved("chw", writer, 13, tmp_path)
    x = np.random.default_rng(4).normal(size=(3,) + case.input_shape).astype("float32")
    want = _outputs(source, x)
    outputs = [tmp_path / "gzip.weights.h5", tmp_path / "lzf.h5"]
    for out, compression in zip(outputs, ("gzip=9", "lzf")):
        weightport.convert(full, out, compression=compression)
        with weightport.read(out) as view:
            assert {t.dataset.compression for t in view.tensors} == {compression.split("=")[0]}
    for reader in KERAS.values():
        for out in outputs:
            fcn = case.fcn(reader)
            fcn.load_weights(str(out))
            _close(_outputs(fcn, x), want, case.rtol)


@pytest.mark.parametrize("writer", sorted(KERAS))
def test_global_pooling_head_per_location(writer: str, tmp_path: Path) -> None:
    """Conv 1x1 before the pooling gives a class map whose every location is the Dense
    applied to that location's features."""
    K, source, full, _ = _saved("gap", writer, 7, tmp_path)
    weightport.convert(full, tmp_path / "out.h5")
    fcn = CASES["gap"].fcn(K)
    fcn.load_weights(str(tmp_path / "out.h5"))
    x = np.random.default_rng(1).normal(size=(2, 17, 13, 3)).astype("float32")
    class_map = np.asarray(K.Model(fcn.inputs, fcn.layers[-2].output)(x))
    features = np.asarray(K.Model(fcn.inputs, fcn.layers[-3].output)(x))  # the backbone, source weights
    kernel, bias = source.layers[-1].get_weights()
    assert class_map.shape == (2, 15, 11, 3)
    _close(class_map.astype("float64"), features.astype("float64") @ kernel + bias, 1e-5)


def test_permute_flatten_order_comes_from_the_config(tmp_path: Path) -> None:
    """The `chw` case (Permute + Flatten) takes its order from the config; the plan says so."""
    _, _, full, _ = _saved("chw", "k3", 3, tmp_path)
    steps = weightport.plan(full).steps
    rules = [(s.rule, s.params.get("order")) for s in steps]
    assert ("dense-to-conv", "chw") in rules


@pytest.mark.parametrize("writer", sorted(KERAS))
def test_convert_into_a_live_model(writer: str, tmp_path: Path) -> None:
    """The pipeline convenience: the live FCN is the target, and ends up loaded."""
    case = CASES["flatten"]
    K, source, full, _ = _saved("flatten", writer, 11, tmp_path)
    fcn = case.fcn(K)
    built = weightport.convert_into_model(full, fcn)
    assert [s.rule for s in built.steps][2] == "dense-to-conv"
    x = np.random.default_rng(2).normal(size=(2,) + case.input_shape).astype("float32")
    _close(_outputs(fcn, x), _outputs(source, x), 1e-5)


def test_whole_legacy_model_with_bn_and_dropout_head(tmp_path: Path) -> None:
    """tf_keras full .h5 classifier -> `--full-model` FCN .h5 -> tf_keras load_model, any input size."""
    case = CASES["bn_dropout_head"]
    _, source, full, _ = _saved("bn_dropout_head", "tfk", 5, tmp_path)
    out = tmp_path / "fcn.h5"
    weightport.convert(full, out, full_model=True)
    fcn = tf_keras.models.load_model(str(out), compile=False)
    assert fcn.input_shape == (None, None, None, 3)
    x = np.random.default_rng(4).normal(size=(3,) + case.input_shape).astype("float32")
    _close(_outputs(fcn, x), _outputs(source, x), 1e-5)
    assert np.asarray(fcn(np.zeros((1, 20, 20, 3), "float32"))).shape == (1, 5, 5, 3)


def _verified_with_keras(name: str, writer: str, seed: int, out: Path) -> tuple:
    """(the case's full source file, `verify --keras` output) for a right conversion into `out`."""
    _, _, full, _ = _saved(name, writer, seed, out.parent)
    weightport.convert(full, out)
    result = run_cli("verify", str(full), str(out), "--keras")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "agree end to end" in result.stdout
    return full, result.stdout


@pytest.mark.parametrize("writer", sorted(KERAS))
def test_verify_with_keras_end_to_end(writer: str, tmp_path: Path) -> None:
    full, _ = _verified_with_keras("chw", writer, 9, tmp_path / "out.h5")
    wrong = tmp_path / "wrong.h5"
    weightport.convert(full, wrong, source_order="hwc")
    result = run_cli("verify", str(full), str(wrong), "--keras")
    assert result.returncode == 1 and "FAILED" in result.stdout


@pytest.mark.parametrize("writer", sorted(KERAS))
def test_verify_with_keras_per_location_for_pooling_heads(writer: str, tmp_path: Path) -> None:
    _, report = _verified_with_keras("gap", writer, 13, tmp_path / "out.weights.h5")
    assert "agree per location" in report
