"""The real files from other projects (Keras 1.1 to 3.x) convert, and their twins reproduce
the sources' outputs wherever Keras can run the source here."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import weightport
from conftest import SHARED_FILES, import_or_skip, needs_shared_files, run_cli, shared_files, sidecar_config
from weightport.head import analyze_head
from weightport.twinconfig import twin_config

pytestmark = needs_shared_files()

# What a weights-only file cannot tell: the window that fed its first Dense.
FLATTEN = {
    "dl4j-old__acgan_params_discriminator_epoch_001.hdf5": "7,7,256",
    "dl4j__cnn_tf_weights_k1.h5": "1,1,1",
    "k3-aimed__model.weights.h5": "28,28,1",
    "washcycle__vae_cnn_mnist.h5": "7,7,64",
}
NOTHING_TO_CONVERT = {"dl4j__keras-attention.h5"}
THEANO = "dl4j-old__mnist_cnn_th_keras_1_weights.h5"
# Sources tf_keras can load and run on this CPU (Keras 1 configs, marshalled Lambdas and
# channels_first convolutions cannot), minus the squeeze-excite model whose "head" feeds a
# RepeatVector (its twin config is refused, tested below).
RUNNABLE = ["dl4j-old__48net_complete.h5", "dl4j-old__dcgan_discriminator.h5", "dl4j-old__keras2_dga_classifier_tf_model.h5",
            "dl4j__cnn_batch_norm.h5", "dl4j__conv2d_reshape_tensorflow_2.h5", "dl4j__conv2d_reshape_theano_2.h5",
            "dl4j__flatten_3d.hdf5", "dl4j__issue_9560.h5", "ina__keras_speech_music_noise_cnn.hdf5"]


def _args(path: Path) -> list:
    config = sidecar_config(path)
    args = ["--config", str(config)] if config else []
    args += ["--flatten", FLATTEN[path.name]] if path.name in FLATTEN else []
    return args + (["--flip-kernels"] if path.name == THEANO else [])


@pytest.mark.parametrize("path", [p for p in shared_files() if p.name not in NOTHING_TO_CONVERT], ids=lambda p: p.name)
def test_converts(path: Path, tmp_path: Path) -> None:
    before = path.read_bytes()
    for out in (tmp_path / "out.h5", tmp_path / "out.weights.h5"):
        result = run_cli("convert", str(path), "-o", str(out), *_args(path))
        if result.returncode == 2 and out.suffix == ".h5" and "Keras 3 group" in result.stderr:
            continue
        assert result.returncode == 0, result.stderr
        with weightport.read(out) as converted, weightport.read(path, config=sidecar_config(path)) as source:
            assert converted.params == source.params
            assert any(len(t.shape) >= 3 for layer in converted.layers[-3:] for t in layer.weights)
        with h5py.File(out, "r") as f:
            assert f.attrs["weightport_source"] == path.name
            rules = json.loads(f.attrs["weightport_rules"])
            assert {"dense-to-conv", "dense-to-1x1"} & {r["rule"] for r in rules}
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", sorted(NOTHING_TO_CONVERT))
def test_nothing_to_convert_is_one_line(name: str, tmp_path: Path) -> None:
    result = run_cli("convert", str(SHARED_FILES / name), "-o", str(tmp_path / "out.h5"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nothing to convert" in result.stderr
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("name", RUNNABLE)
def test_twin_reproduces_the_source_in_keras(name: str, tmp_path: Path) -> None:
    tf_keras = import_or_skip("tf_keras")
    path = SHARED_FILES / name
    source = tf_keras.models.load_model(str(path), compile=False)
    out = tmp_path / "twin.h5"
    weightport.convert(path, out)
    with weightport.read(path) as view:
        twin = tf_keras.models.model_from_json(json.dumps(twin_config(view, analyze_head(view))))
    twin.load_weights(str(out))
    rng = np.random.default_rng(0)
    shape = (4,) + tuple(source.input_shape[1:])
    x = rng.integers(0, 30, size=shape) if "Embedding" in {type(l).__name__ for l in source.layers} else rng.normal(size=shape).astype("float32")
    wants, gots = source.predict(x, verbose=0), twin.predict(x, verbose=0)
    for want, got in zip(*(v if isinstance(v, list) else [v] for v in (wants, gots)), strict=True):
        assert got.size == want.size and got.ndim > want.ndim
        error = np.abs(got.reshape(want.shape) - want).max() / np.abs(want).max()
        assert error < 1e-5


def test_squeeze_excite_twin_config_is_refused() -> None:
    with weightport.read(SHARED_FILES / "dl4j__GAPError.h5") as view:
        with pytest.raises(weightport.WeightportError, match="repeat_vector_5"):
            twin_config(view, analyze_head(view))


def _theano_mnist(x: np.ndarray, path: Path) -> np.ndarray:
    """The Keras 1 Theano model computed from the file's raw arrays: true convolutions on
    NCHW with (out, in, h, w) kernels, 2x2 max pooling, raw (C, H, W) flatten."""
    with h5py.File(path, "r") as f:
        w = {name: f[name][f"{name}_W"][()].astype("float64") for name in ("convolution2d_1", "convolution2d_2", "dense_1", "dense_2")}
        b = {name: f[name][f"{name}_b"][()].astype("float64") for name in w}

    def true_conv(a: np.ndarray, name: str) -> np.ndarray:
        kernel = w[name][:, :, ::-1, ::-1]
        windows = np.lib.stride_tricks.sliding_window_view(a, kernel.shape[2:], axis=(2, 3))
        return np.maximum(np.einsum("ncijuv,ocuv->noij", windows, kernel) + b[name][None, :, None, None], 0)

    a = true_conv(true_conv(x, "convolution2d_1"), "convolution2d_2")
    n, c, h, wd = a.shape
    a = a.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5)).reshape(n, -1)
    a = np.maximum(a @ w["dense_1"] + b["dense_1"], 0) @ w["dense_2"] + b["dense_2"]
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_keras1_theano_mnist_with_flip_and_chw(tmp_path: Path) -> None:
    """--config gives dim_ordering th (kernels transposed, chw flatten); --flip-kernels turns
    Theano's true convolution into TensorFlow's correlation. A channels_last tf_keras FCN
    loading the output on NHWC input reproduces the Theano model computed in numpy."""
    tf_keras = import_or_skip("tf_keras")
    path = SHARED_FILES / THEANO
    out = tmp_path / "mnist_fcn.h5"
    weightport.convert(path, out, config=sidecar_config(path), flip_kernels=True)
    K = tf_keras.layers
    fcn = tf_keras.Sequential([tf_keras.Input((None, None, 1)), K.Conv2D(32, 3, activation="relu"), K.Conv2D(32, 3, activation="relu"),
                               K.MaxPooling2D(2), K.Conv2D(128, 12, activation="relu"), K.Conv2D(10, 1, activation="softmax")])
    fcn.load_weights(str(out))
    x = np.random.default_rng(3).uniform(0, 1, size=(3, 1, 28, 28))
    got = fcn.predict(x.transpose(0, 2, 3, 1).astype("float32"), verbose=0)[:, 0, 0]
    want = _theano_mnist(x, path)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    no_flip = tmp_path / "no_flip.h5"
    weightport.convert(path, no_flip, config=sidecar_config(path))
    fcn.load_weights(str(no_flip))
    wrong = fcn.predict(x.transpose(0, 2, 3, 1).astype("float32"), verbose=0)[:, 0, 0]
    assert np.abs(wrong - want).max() > 1e-3  # the flip matters: without it the outputs differ
