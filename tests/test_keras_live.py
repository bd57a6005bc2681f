"""Against live Keras 3 and tf_keras: build each fixture model now, save it in every layout,
and check the view returns the model's own weights in order, with the model's own values."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import import_or_skip, load_maker

import_or_skip("keras")
import_or_skip("tf_keras")


maker = load_maker()
CASES = [(f.name, writer) for f in maker.FIXTURES for writer in maker.LAYOUTS if f.name != "longnames"]


@pytest.mark.parametrize("fixture_name,writer", CASES)
def test_view_equals_live_model_weights(fixture_name: str, writer: str, tmp_path: Path) -> None:
    fixture = next(f for f in maker.FIXTURES if f.name == fixture_name)
    K = maker.WRITERS[writer]
    K.backend.clear_session()
    model = fixture.build(K)
    maker.fill_weights(K, model, zlib.crc32(fixture_name.encode()) + 1)
    layers = list(maker.weighted_layers(K, model))
    for suffix in maker.LAYOUTS[writer]:
        path = tmp_path / f"{fixture_name}{suffix}"
        maker.save(model, path)
        with weightport.read(path) as view:
            assert len(view.layers) == len(layers), path.name
            for got, layer in zip(view.layers, layers):
                want = [np.asarray(w) for w in layer.get_weights()]
                assert len(got.weights) == len(want), (path.name, layer.name)
                for tensor, value in zip(got.weights, want):
                    assert tensor.shape == value.shape and tensor.dtype == value.dtype
                    np.testing.assert_array_equal(tensor.read(), value)


def test_subclassed_model_attribute_paths(tmp_path: Path) -> None:
    """A subclassed Keras 3 model stores layers under its Python attribute names
    (`backbone_conv/vars`, `blocks/dense/vars`); each still reads as one layer, by name."""
    keras = maker.WRITERS["k3"]

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.backbone_conv = keras.layers.Conv2D(4, 3)
            self.blocks = [keras.layers.Dense(5), keras.layers.Dense(6)]
            self.head = keras.layers.Dense(3)

        def call(self, x):
            x = keras.ops.mean(self.backbone_conv(x), axis=(1, 2))
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = Net()
    model(np.zeros((1, 8, 8, 3), "float32"))
    path = tmp_path / "net.weights.h5"
    model.save_weights(str(path))
    layers = {layer.name: layer for layer in [model.backbone_conv, *model.blocks, model.head]}
    with weightport.read(path) as view:
        assert sorted(l.name for l in view.layers) == sorted(layers)
        for got in view.layers:
            for tensor, value in zip(got.weights, layers[got.name].get_weights(), strict=True):
                np.testing.assert_array_equal(tensor.read(), value)
        groups = {l.group for l in view.layers}
        assert "/backbone_conv/vars" in groups and "/blocks/dense/vars" in groups
