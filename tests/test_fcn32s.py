"""The FCN paper's recipe, Keras 3 and tf_keras: keras.applications.VGG16(weights=None) into an
FCN-32s built in code (fc6 a 7x7 conv, fc7 a 1x1 conv, a new 21-way score_fr, a new upscore).

`--drop predictions --skip score_fr --skip upscore` and `--align` write the same tensors; fc6/fc7
give the classifier's fc1/fc2 at 224x224; score_fr and upscore keep the target file's values;
`load_weights` then two steps of `fit` run. One VGG16 and one FCN-32s per Keras."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import weightport
from conftest import ROOT, import_or_skip, run_cli, scratch, vgg16_classifier

keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")


def _recipe():
    """docs/recipes/fcn32s.py, whose FCN-32s builder this test uses as the user would write it."""
    spec = importlib.util.spec_from_file_location("fcn32s_recipe", ROOT / "docs" / "recipes" / "fcn32s.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["k3", "tfk"])
def fcn32s(request, tmp_path_factory):
    K = keras if request.param == "k3" else tf_keras
    K.backend.clear_session()
    with scratch(tmp_path_factory, f"fcn32s_{request.param}") as folder:
        classifier = vgg16_classifier(K, 32)
        source = folder / ("vgg16.keras" if request.param == "k3" else "vgg16.h5")
        classifier.save(str(source))
        fcn = _recipe().build_fcn32s(K)
        target = folder / ("target.weights.h5" if request.param == "k3" else "target.h5")
        fcn.save_weights(str(target))
        new_layers = {name: fcn.get_layer(name).get_weights() for name in ("score_fr", "upscore")}
        yield K, classifier, fcn, source, target, new_layers
    K.backend.clear_session()


def _tensors(path):
    with weightport.read(path) as view:
        return {(layer.name, t.name.rsplit("/", 1)[-1]): t.read() for layer in view.layers for t in layer.weights}


def test_drop_and_skip_or_align_initialise_the_fcn_from_the_classifier(fcn32s, tmp_path) -> None:
    K, classifier, fcn, source, target, new_layers = fcn32s
    by_hand, aligned = tmp_path / f"by_hand{target.name[6:]}", tmp_path / f"aligned{target.name[6:]}"
    weightport.convert(source, by_hand, target=target, drops=["predictions"], skips=["score_fr", "upscore"])
    result = run_cli("convert", str(source), "--target", str(target), "--align", "-o", str(aligned))
    assert result.returncode == 0, result.stderr
    assert "predictions" in result.stdout and "(dropped: not written)" in result.stdout
    hand, auto = _tensors(by_hand), _tensors(aligned)
    assert hand.keys() == auto.keys()
    assert all(hand[key].dtype == auto[key].dtype and hand[key].tobytes() == auto[key].tobytes() for key in hand)
    del hand, auto
    by_hand.unlink()

    fcn.load_weights(str(aligned))
    for name, values in new_layers.items():
        for want, got in zip(values, fcn.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(224).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    want = K.Model(classifier.input, [classifier.get_layer("fc1").output, classifier.get_layer("fc2").output])(x)
    got = K.Model(fcn.input, [fcn.get_layer("fc6").output, fcn.get_layer("fc7").output])(x)
    for w, g in zip(want, got, strict=True):
        w, g = np.asarray(w, "float64"), np.asarray(g, "float64")
        assert g.shape == (1, 1, 1, 4096)
        assert np.abs(g[:, 0, 0] - w).max() / np.abs(w).max() <= 1e-5

    fcn.compile(optimizer=K.optimizers.SGD(1e-4), loss=K.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(2).integers(0, 21, (2, 64, 64))
    history = fcn.fit(np.concatenate([x, x[:, ::-1]]), labels, batch_size=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("fcn32s", ["k3"], indirect=True)  # the recipe is written for Keras 3
def test_the_fcn32s_recipe_runs_as_written(fcn32s, tmp_path) -> None:
    """docs/recipes/fcn32s.py with a trained classifier given (this module's VGG16, which saves
    building another): it converts, loads and fine-tunes two steps."""
    _, _, _, source, *_ = fcn32s
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "recipes" / "fcn32s.py"), str(source)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fine-tuned 2 steps from fcn32s_init.weights.h5" in result.stdout
    assert (tmp_path / "fcn32s_init.weights.h5").exists()
