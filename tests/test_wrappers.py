"""Wrapper layers (issue 10, case 5): Bidirectional LSTM/GRU and TimeDistributed, read in every
layout Keras 3 and tf_keras write, tensor for tensor the live model's `get_weights`; copies
into the same architecture (and TimeDistributed(Dense) into a Dense or a 1x1 Conv1D) load in
Keras with equal outputs; what weightport cannot pair exactly is refused by name."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

import weightport
from conftest import FIXTURES, import_or_skip, load_maker, run_cli

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")
maker = load_maker()
KERAS = {"k3": keras, "tfk": tf_keras}
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
WRAPPER_FILES = sorted(name for name in EXPECTED["files"] if name.startswith(("birnn__", "timedist__")))
_LIVE: Dict[str, Any] = {}


def _live(key: str) -> Any:
    """The fixture model `key` (`birnn__k3`) rebuilt with the values make_fixtures gave it."""
    if key not in _LIVE:
        name, writer = key.split("__")
        fixture = next(f for f in maker.FIXTURES if f.name == name)
        K, seed = KERAS[writer], zlib.crc32(name.encode())
        K.utils.set_random_seed(seed)
        model = fixture.build(K)
        maker.fill_weights(K, model, seed)
        _LIVE[key] = model
    return _LIVE[key]


def _untrained(K: Any, build, path: Path, seed: int = 7) -> Any:
    """A model of the architecture `build` makes, with other (random) values, saved at `path`."""
    K.utils.set_random_seed(seed)
    model = build(K)
    maker.save(model, path)
    return model


def _assert_same_outputs(a: Any, b: Any, shape: tuple) -> None:
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", WRAPPER_FILES)
def test_tensors_are_the_live_models_weights(name: str) -> None:
    """Every layout lists a wrapper's tensors where and in the order Keras's `get_weights` does
    (forward layer before backward, each cell's kernel, recurrent kernel, bias)."""
    want = _live(EXPECTED["files"][name]["model"]).get_weights()
    with weightport.read(FIXTURES / name) as view:
        got = [t.read() for t in view.tensors]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_inspect_names_the_wrapped_classes() -> None:
    """The issue's file kind: a .keras with Bidirectional layers failed inspect outright."""
    result = run_cli("inspect", str(FIXTURES / "birnn__k3.keras"), "--json")
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert [(l["class"], l["wrapped"]) for l in layers] == [("Bidirectional", "LSTM"), ("Bidirectional", "GRU"), ("TimeDistributed", "Dense")]
    assert [w["name"] for w in layers[0]["weights"]][::3] == ["forward_layer/cell/vars/0", "backward_layer/cell/vars/0"]
    assert [w["role"] for w in layers[1]["weights"]] == ["kernel", "recurrent_kernel", "bias"] * 2
    table = run_cli("inspect", str(FIXTURES / "birnn__k3.keras")).stdout
    assert "Bidirectional(LSTM)" in table and "TimeDistributed(Dense)" in table and "backward_layer 0 (kernel) 3x16" in table


@pytest.mark.parametrize("name", ["birnn__k3.weights.h5", "birnn__tfk.weights.h5"])
def test_weights_h5_without_a_config_keeps_each_wrapper_one_layer(name: str) -> None:
    """No config: the wrapper's class still comes from its group, its sub-objects stay inside it."""
    result = run_cli("inspect", str(FIXTURES / name), "--json")
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert [l["class"] for l in layers] == ["Bidirectional", "Bidirectional", "TimeDistributed"]
    assert [len(l["weights"]) for l in layers] == [6, 6, 2]


# (writer, source file, target suffix, output suffix): every reader on the source side, both
# output layouts, and a tf_keras source into a Keras 3 target.
COPIES = [
    ("k3", "birnn__k3.keras", ".weights.h5", ".weights.h5"),
    ("k3", "birnn__k3.weights.h5", ".keras", ".h5"),
    ("k3", "birnn__k3.h5", ".weights.h5", ".weights.h5"),
    ("tfk", "birnn__tfk.h5", "_weights.h5", ".h5"),
    ("tfk", "birnn__tfk_weights.h5", ".h5", ".h5"),
    ("tfk", "birnn__tfk.weights.h5", ".weights.h5", ".weights.h5"),
    ("k3", "birnn__tfk.h5", ".weights.h5", ".weights.h5"),
    ("k3", "timedist__tfk.h5", ".keras", ".weights.h5"),
]


@pytest.mark.parametrize("writer,source,target_suffix,out_suffix", COPIES)
def test_copy_into_the_same_architecture_loads_with_equal_outputs(tmp_path: Path, writer: str, source: str, target_suffix: str, out_suffix: str) -> None:
    K = KERAS[writer]
    fixture = next(f for f in maker.FIXTURES if f.name == source.split("__")[0])
    target = tmp_path / f"target{target_suffix}"
    model = _untrained(K, fixture.build, target)
    out = tmp_path / f"out{out_suffix}"
    result = run_cli("convert", str(FIXTURES / source), "--target", str(target), "-o", str(out))
    assert result.returncode == 0, result.stderr
    model.load_weights(str(out))
    _assert_same_outputs(_live(EXPECTED["files"][source]["model"]), model, tuple(model.input_shape[1:]))


def _timedist_as(K: Any, last: str) -> Any:
    """timedist with its TimeDistributed(Dense(5)) replaced by a Dense(5) or a Conv1D(5, 1)."""
    head = K.layers.Dense(5) if last == "dense" else K.layers.Conv1D(5, 1)
    return K.Sequential([K.Input(shape=(10, 3)), K.layers.Conv1D(4, 3, activation="relu"), head])


@pytest.mark.parametrize("writer,last,target_suffix,out_suffix", [
    ("k3", "conv1d", ".keras", ".weights.h5"), ("k3", "dense", ".weights.h5", ".h5"), ("tfk", "conv1d", ".h5", ".h5")])
def test_timedistributed_dense_is_a_dense(tmp_path: Path, writer: str, last: str, target_suffix: str, out_suffix: str) -> None:
    """A TimeDistributed(Dense) on a sequence is a Dense on each step: it pairs with a Dense (copy)
    or a 1x1 Conv1D (dense-to-1x1), and the output computes the same."""
    K = KERAS[writer]
    target = tmp_path / f"target{target_suffix}"
    model = _untrained(K, lambda K: _timedist_as(K, last), target)
    out = tmp_path / f"out{out_suffix}"
    source = FIXTURES / f"timedist__{writer}.h5"
    result = run_cli("convert", str(source), "--target", str(target), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rules = [s.rule for s in weightport.plan(source, target).steps]
    assert rules == ["copy", "copy", "dense-to-1x1" if last == "conv1d" else "copy", "copy"]
    model.load_weights(str(out))
    _assert_same_outputs(_live(f"timedist__{writer}"), model, (10, 3))


def test_a_different_recurrent_layer_is_refused_by_name(tmp_path: Path) -> None:
    """Bidirectional(LSTM) into Bidirectional(GRU): no rule makes it exact; one line, exit 2, nothing written."""
    def build(K: Any) -> Any:
        inputs = K.Input(shape=(6, 3))
        x = K.layers.Bidirectional(K.layers.GRU(4, return_sequences=True))(inputs)
        x = K.layers.Bidirectional(K.layers.GRU(2, return_sequences=True), merge_mode="sum")(x)
        return K.Model(inputs, K.layers.TimeDistributed(K.layers.Dense(3))(x))

    target = tmp_path / "gru.keras"
    _untrained(keras, build, target)
    out = tmp_path / "out.weights.h5"
    result = run_cli("convert", str(FIXTURES / "birnn__k3.keras"), "--target", str(target), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("weightport: error: ")
    assert re.search(r"layer pair bidirectional -> bidirectional\w*: no exact rule takes kernel 3x16 to 3x12", result.stderr), result.stderr
    assert not out.exists()


@keras.saving.register_keras_serializable(package="weightport_tests")
class Block(keras.layers.Layer):
    """A custom layer holding two sublayers: its tensors sit in sub-objects weightport does not know."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(4)
        self.outer = keras.layers.Dense(4)

    def build(self, input_shape: Any) -> None:
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], 4))

    def call(self, x: Any) -> Any:
        return self.outer(self.inner(x))


def _block_model() -> Any:
    return keras.Sequential([keras.Input(shape=(4,)), Block(), keras.layers.Dense(2)])


def test_sublayers_of_an_unknown_layer_pair_only_by_their_places(tmp_path: Path) -> None:
    """A custom layer's sublayers: Keras 3 files name each tensor's place, so a .weights.h5 copies
    into another exactly (and loads); a legacy file lists them by position in an order a Keras 3
    file does not record, so that pair is refused by name, either way."""
    keras.utils.set_random_seed(1)
    source_model = _block_model()
    source, archive, legacy = tmp_path / "source.weights.h5", tmp_path / "source.keras", tmp_path / "legacy.h5"
    source_model.save_weights(str(source))
    source_model.save(str(archive))
    source_model.save(str(legacy))
    target_model = _untrained(keras, lambda K: _block_model(), tmp_path / "target.weights.h5")
    with weightport.read(source) as view:
        assert [(l.class_name, l.order_known, len(l.weights)) for l in view.layers] == [(None, False, 4), ("Dense", True, 2)]
    out = tmp_path / "out.weights.h5"
    result = run_cli("convert", str(source), "--target", str(tmp_path / "target.weights.h5"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    target_model.load_weights(str(out))
    _assert_same_outputs(source_model, target_model, (4,))
    for src, tgt in ((archive, legacy), (legacy, archive)):
        refused = run_cli("convert", str(src), "--target", str(tgt), "-o", str(tmp_path / "x.h5"))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "layer pair block -> block" in refused.stderr and "order weightport cannot establish" in refused.stderr


def _recurrent_classifier(K: Any, twin: bool = False) -> Any:
    """Conv1D, a Bidirectional LSTM and a TimeDistributed Dense over the steps, global average
    pooling and a Dense head (a sleep-stage classifier's shape), or its twin built in code."""
    inputs = K.Input(shape=(None if twin else 12, 4))
    x = K.layers.Conv1D(8, 3)(inputs)
    x = K.layers.Bidirectional(K.layers.LSTM(4, return_sequences=True))(x)
    x = K.layers.TimeDistributed(K.layers.Dense(6))(x)
    x = K.layers.GlobalAveragePooling1D(keepdims=twin)(x)
    return K.Model(inputs, K.layers.Conv1D(3, 1)(x) if twin else K.layers.Dense(3)(x))


@pytest.mark.parametrize("writer,source_name,out_name,extra", [
    ("k3", "classifier.keras", "fcn.keras", ()), ("k3", "classifier.keras", "fcn.weights.h5", ()),
    ("tfk", "classifier.h5", "fcn.h5", ("--full-model",))])
def test_a_twin_with_wrappers_in_its_trunk_loads_with_equal_outputs(tmp_path: Path, writer: str, source_name: str, out_name: str, extra: tuple) -> None:
    """The derived twin keeps the wrappers (their tensors where Keras looks for them, in a whole
    model their config) and turns the pooled head into a 1x1 Conv1D."""
    K = KERAS[writer]
    source, out = tmp_path / source_name, tmp_path / out_name
    model = _untrained(K, _recurrent_classifier, source, seed=11)
    result = run_cli("convert", str(source), "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    if out_name == "fcn.weights.h5":
        twin = _recurrent_classifier(K, twin=True)
        twin.load_weights(str(out))
    else:
        twin = K.models.load_model(str(out))
    x = np.random.default_rng(0).normal(size=(2, 12, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(twin(x)).reshape(2, 3), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
