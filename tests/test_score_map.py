"""--score-map and --units with real Keras models, Keras 3 and tf_keras.

--score-map: a GAP -> Dense(relu) -> Dense classifier and ResNet50(weights=None) become whole
models (`.keras`, `--full-model .h5`) that `load_model` opens; at a larger input the map has the
expected size, and every location equals the source's own head on the backbone's features there.
--units: an 11-way classifier into a 10-way target without unit 0 gives the source's other ten
outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import weightport
from conftest import import_or_skip, scratch
from weightport.keras_check import check_end_to_end

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")
KERAS = {"k3": keras, "tfk": tf_keras}


def small_backbone(K, shape: Tuple[Any, ...]):
    inputs = K.Input(shape)
    x = K.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inputs)
    x = K.layers.BatchNormalization(name="bn_a")(x)
    x = K.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_b")(x)
    return K.Model(inputs, x, name="backbone")


def small_classifier(K):
    """GAP -> Dense(relu) -> Dense, the seed question's network, at a 16x16 input."""
    backbone = small_backbone(K, (16, 16, 3))
    x = K.layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    x = K.layers.Dense(12, activation="relu", name="hidden")(x)
    return K.Model(backbone.input, K.layers.Dense(5, name="scores")(x))


def resnet_backbone(K, shape):
    return K.applications.ResNet50(weights=None, include_top=False, input_shape=shape)


def resnet_classifier(K):
    return K.applications.ResNet50(weights=None, input_shape=(64, 64, 3))


# name: (classifier, backbone(K, input shape), pooling layer, head [(layer, activation)], source input, larger input, map size)
MODELS: Dict[str, Tuple[Callable, Callable, str, List[Tuple[str, str]], int, int, int]] = {
    "gap-dense-dense": (small_classifier, small_backbone, "gap", [("hidden", "relu"), ("scores", "linear")], 16, 27, 12),
    "resnet50": (resnet_classifier, resnet_backbone, "avg_pool", [("predictions", "softmax")], 64, 96, 3),
}


def _randomise(model, rng: np.random.Generator) -> None:
    """Non-trivial biases and normalisation statistics, so a mistake cannot hide in zeros and ones."""
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and type(layer).__name__ in ("Dense", "Conv2D", "BatchNormalization"):
            layer.set_weights([w if w.ndim > 1 else (rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) and len(weights) == 4
                                                     else rng.normal(0, 0.1, w.shape)).astype(w.dtype) for i, w in enumerate(weights)])


def _head(features: np.ndarray, classifier, head: List[Tuple[str, str]]) -> np.ndarray:
    """The source's own head layers at every location of the features (numpy, float64)."""
    x = features.astype("float64")
    for name, activation in head:
        kernel, bias = classifier.get_layer(name).get_weights()
        x = x @ kernel + bias
        if activation == "relu":
            x = np.maximum(x, 0)
        elif activation == "softmax":
            x = np.exp(x - x.max(-1, keepdims=True))
            x /= x.sum(-1, keepdims=True)
    return x


@pytest.fixture(scope="module", params=[(k, m) for m in MODELS for k in KERAS], ids=lambda p: f"{p[1]}-{p[0]}")
def score_map(request, tmp_path_factory):
    with scratch(tmp_path_factory, "score_map") as folder:
        yield _converted(*request.param, folder)


@pytest.fixture(scope="module", params=list(KERAS))
def small_score_map(request, tmp_path_factory):
    with scratch(tmp_path_factory, "small_score_map") as folder:
        yield _converted(request.param, "gap-dense-dense", folder)


def _converted(flavour: str, name: str, folder):
    """The classifier, converted with --score-map into its Keras's whole-model formats, and
    its backbone alone at any input size, with the classifier's weights."""
    K = KERAS[flavour]
    K.backend.clear_session()
    build, backbone, pooling, head, size, larger, cells = MODELS[name]
    classifier = build(K)
    _randomise(classifier, np.random.default_rng(7))
    outputs = []
    if flavour == "k3":
        source = folder / "classifier.keras"
        classifier.save(str(source))
        outputs.append(folder / "map.keras")
        weightport.convert(source, outputs[-1], score_map=True)
    else:
        source = folder / "classifier.h5"
        classifier.save(str(source))
    if flavour == "tfk" or name != "resnet50":  # a Keras 3 full-model .h5 too, where it costs little
        outputs.append(folder / "map.h5")
        weightport.convert(source, outputs[-1], score_map=True, full_model=True)
    features = backbone(K, (None, None, 3))
    for layer in features.layers:
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())
    return K, classifier, features, source, outputs, pooling, head, size, larger, cells


def test_score_map_every_location_is_the_source_head(score_map) -> None:
    K, classifier, features, _, outputs, pooling, head, _, larger, cells = score_map
    x = np.random.default_rng(1).uniform(-1, 1, (2, larger, larger, 3)).astype("float32")
    feature_map = np.asarray(features(x))
    want = _head(feature_map, classifier, head)
    for out in outputs:
        model = K.models.load_model(str(out), compile=False)
        assert model.input_shape == (None, None, None, 3), out.name
        got = np.asarray(model(x), "float64")
        assert got.shape == (2, cells, cells, want.shape[-1]), out.name
        per_location = np.abs(got - want).max(-1) / np.abs(want).max(-1)
        assert per_location.max() <= 1e-5, (out.name, per_location.max())


def test_verify_proves_the_score_map_per_location(small_score_map) -> None:
    """`verify --keras --score-map` (shown on the small classifier: ResNet50 would cost two more builds)."""
    K, _, _, source, outputs, *_ = small_score_map
    for out in outputs:
        result = check_end_to_end(source, out, score_map=True)
        assert result.ok and [c.how for c in result.comparisons] == ["per location"], result.lines()
        with pytest.raises(weightport.WeightportError, match="verified with --score-map"):
            check_end_to_end(source, out)


@pytest.mark.parametrize("flavour", list(KERAS))
def test_units_eleven_way_into_ten_way_without_unit_0(flavour: str, tmp_path: Path) -> None:
    K = KERAS[flavour]
    K.backend.clear_session()

    def classifier(classes: int):
        return K.Sequential([K.Input((8, 8, 3)), K.layers.Conv2D(4, 3, activation="relu"), K.layers.Flatten(),
                             K.layers.Dense(classes, name="scores")])

    source_model, target_model = classifier(11), classifier(10)
    _randomise(source_model, np.random.default_rng(11))
    suffix = ".weights.h5" if flavour == "k3" else ".h5"
    source, template, out = tmp_path / f"src{suffix}", tmp_path / f"template{suffix}", tmp_path / f"out{suffix}"
    source_model.save_weights(str(source))
    target_model.save_weights(str(template))
    built = weightport.convert(source, out, target=template, units={"scores": "1:11"})
    assert {s.rule for s in built.steps if s.source_layer.endswith("scores")} == {"units"}
    target_model.load_weights(str(out))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(target_model(x)), np.asarray(source_model(x))[:, 1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("score_map", [("k3", "resnet50")], indirect=True, ids=["resnet50-k3"])
def test_weights_only_resnet50_takes_flatten_1_1_c(score_map, tmp_path: Path) -> None:
    """A weights-only ResNet50 (no config): the hint names the global-pooling case, which converts."""
    _, classifier, *_ = score_map
    source = tmp_path / "resnet50.weights.h5"
    classifier.save_weights(str(source))
    with pytest.raises(weightport.WeightportError, match=r"global-pooling head flatten=\(1, 1, C\)"):
        weightport.plan(source)
    built = weightport.convert(source, tmp_path / "fcn.weights.h5", flatten=[1, 1, 2048])
    assert built.verification.ok
    assert [s.rule for s in built.steps if s.source_layer == "predictions"] == ["dense-to-1x1", "copy"]
