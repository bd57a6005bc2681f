"""VGG16 (keras.applications, weights=None): classifier file -> weightport -> FCN twin built in
Keras -> plain `load_weights` -> the same scores at 224x224, and at 320x320 a 4x4 score map
whose every location is the dense head applied to its 7x7 feature window."""

from __future__ import annotations


import numpy as np
import pytest

import weightport
from conftest import import_or_skip, scratch, vgg16_classifier

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")


def fcn_vgg16(K):
    """The fully-convolutional twin: VGG16's convolutions, then fc1/fc2/predictions as convs."""
    base = K.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    x = K.layers.Conv2D(4096, 7, activation="relu", name="fc1")(base.output)
    x = K.layers.Conv2D(4096, 1, activation="relu", name="fc2")(x)
    x = K.layers.Conv2D(1000, 1, activation="softmax", name="predictions")(x)
    return K.Model(base.input, x)


def head_on_window(classifier, window: np.ndarray) -> np.ndarray:
    """The classifier's own dense head applied to one 7x7x512 feature window (numpy)."""
    x = window.reshape(-1).astype("float64")
    for name, act in (("fc1", "relu"), ("fc2", "relu"), ("predictions", "softmax")):
        kernel, bias = classifier.get_layer(name).get_weights()
        x = x @ kernel + bias
        x = np.maximum(x, 0) if act == "relu" else np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    return x


def relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got, "float64") - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=["k3", "tfk"])
def vgg(request, tmp_path_factory):
    """A VGG16 classifier with non-trivial biases, saved in its Keras's layouts, and its FCN."""
    K = keras if request.param == "k3" else tf_keras
    K.backend.clear_session()
    with scratch(tmp_path_factory, f"vgg16_{request.param}") as folder:
        classifier = vgg16_classifier(K, 16)
        rng = np.random.default_rng(16)
        if request.param == "k3":
            sources = {"keras": folder / "vgg16.keras", "weights": folder / "vgg16.weights.h5"}
            classifier.save(str(sources["keras"]))
            classifier.save_weights(str(sources["weights"]))
        else:
            sources = {"h5": folder / "vgg16.h5"}
            classifier.save(str(sources["h5"]))
        x = rng.uniform(0, 255, size=(1, 224, 224, 3)).astype("float32")
        yield K, classifier, fcn_vgg16(K), sources, x, np.asarray(classifier(x), "float64")


def test_vgg16_224_scores_equal_the_classifier(vgg, tmp_path) -> None:
    K, classifier, fcn, sources, x, want = vgg

    def loads_with_the_classifiers_scores(out) -> None:
        fcn.load_weights(str(out))
        got = np.asarray(fcn(x))
        assert got.shape == (1, 1, 1, 1000)
        assert relative_error(got[:, 0, 0], want) < 1e-5, out.name
        out.unlink()  # 528 MB each: one at a time on disk

    for kind, source in sources.items():
        for suffix in (".weights.h5", ".h5"):
            out = tmp_path / f"fcn_{kind}{suffix}"
            flatten = [7, 7, 512] if kind == "weights" else None
            weightport.convert(source, out, flatten=flatten, force=True)
            loads_with_the_classifiers_scores(out)
    template = tmp_path / ("template.weights.h5" if K is keras else "template.h5")
    fcn.save_weights(str(template))
    for source in sources.values():
        out = tmp_path / f"into_template_{source.name}{template.suffix}"
        weightport.convert(source, out, target=template, force=True)
        loads_with_the_classifiers_scores(out)


def test_vgg16_320_gives_a_4x4_map_of_window_scores(vgg, tmp_path) -> None:
    K, classifier, fcn, sources, _, _ = vgg
    out = tmp_path / "fcn_320.weights.h5"
    weightport.convert(next(iter(sources.values())), out, flatten=[7, 7, 512], force=True)
    fcn.load_weights(str(out))
    x = np.random.default_rng(320).uniform(0, 255, size=(1, 320, 320, 3)).astype("float32")
    score_map = np.asarray(fcn(x))
    features = np.asarray(K.Model(fcn.input, fcn.get_layer("block5_pool").output)(x))
    assert score_map.shape == (1, 4, 4, 1000) and features.shape == (1, 10, 10, 512)
    for i in range(4):
        for j in range(4):
            want = head_on_window(classifier, features[0, i:i + 7, j:j + 7])
            assert relative_error(score_map[0, i, j], want) < 1e-5, (i, j)


@pytest.mark.parametrize("vgg", ["k3"], indirect=True)  # .keras archives are Keras 3's whole-model format
def test_vgg16_keras_archive_to_whole_fcn_model(vgg, tmp_path) -> None:
    """`convert vgg16.keras -o fcn.keras`: load_model gives the FCN with no Python written."""
    K, classifier, _, sources, x, want = vgg
    out = tmp_path / "fcn.keras"
    weightport.convert(sources["keras"], out, force=True)
    fcn = keras.models.load_model(str(out))
    assert fcn.input_shape == (None, None, None, 3)
    assert relative_error(np.asarray(fcn(x))[:, 0, 0], want) < 1e-5
    big = np.random.default_rng(5).uniform(0, 255, size=(1, 320, 320, 3)).astype("float32")
    assert np.asarray(fcn(big)).shape == (1, 4, 4, 1000)
