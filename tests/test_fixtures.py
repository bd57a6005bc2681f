"""The committed fixtures (made by fixtures/make_fixtures.py from live Keras models) read back
exactly as the models described them: order, names, classes, roles, shapes and dtypes."""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
import pytest

import weightport
from conftest import FIXTURES

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
FILES = sorted(EXPECTED["files"])


def _stores_layer_names(name: str) -> bool:
    """tf_keras's `.weights.h5` writer keeps no layer names (only class-named paths)."""
    return not name.endswith("__tfk.weights.h5")


@pytest.mark.parametrize("name", FILES)
def test_view_matches_the_model(name: str) -> None:
    model: Dict[str, Any] = EXPECTED["models"][EXPECTED["files"][name]["model"]]
    with weightport.read(FIXTURES / name) as view:
        assert len(view.layers) == len(model["layers"])
        for got, want in zip(view.layers, model["layers"]):
            if _stores_layer_names(name):
                assert got.name == want["name"]
            assert got.class_name in (want["class"], None)
            assert got.wrapped in (want.get("wrapped"), None)
            roles = [w["role"] for w in want["weights"]]
            if got.class_name == "TimeDistributed" and got.wrapped is None:  # no config says what it holds
                roles = [None] * len(roles)
            assert [w.role for w in got.weights] == roles
            assert [list(w.shape) for w in got.weights] == [w["shape"] for w in want["weights"]]
            assert [str(w.dtype) for w in got.weights] == [w["dtype"] for w in want["weights"]]


@pytest.mark.parametrize("name", FILES)
def test_classes_known_wherever_the_file_says(name: str) -> None:
    """Full models carry a config; `.weights.h5` paths name the class; only legacy
    weights-only files leave the class unknown."""
    with weightport.read(FIXTURES / name) as view:
        classes = [layer.class_name for layer in view.layers]
    if view.kind == "weights-only" and view.layout == "legacy-h5":
        assert classes == [None] * len(classes)
    else:
        model = EXPECTED["models"][EXPECTED["files"][name]["model"]]
        assert classes == [layer["class"] for layer in model["layers"]]
        if view.config is not None:  # what a wrapper holds is in its config
            assert [layer.wrapped for layer in view.layers] == [layer.get("wrapped") for layer in model["layers"]]


def test_every_layout_of_a_model_holds_the_same_arrays() -> None:
    """The fixtures give each model identical values under every writer and layout, so the
    readers of all six layouts must return identical tensors."""
    by_model: Dict[str, list] = {}
    for name in FILES:
        by_model.setdefault(name.split("__")[0], []).append(name)
    for names in by_model.values():
        reference = None
        for name in names:
            with weightport.read(FIXTURES / name) as view:
                arrays = [t.read() for t in view.tensors]
            if reference is None:
                reference = arrays
            else:
                assert len(arrays) == len(reference), name
                for a, b in zip(arrays, reference):
                    np.testing.assert_array_equal(a, b, err_msg=name)


def test_long_layer_names_are_read_from_chunked_attributes() -> None:
    import h5py

    path = FIXTURES / "longnames__tfk_weights.h5"
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
    with weightport.read(path) as view:
        assert [len(layer.name) for layer in view.layers][6] == 6000
        assert len(view.layers) == 12


def test_keras_archive_order_comes_from_its_config() -> None:
    with weightport.read(FIXTURES / "func_names__k3.keras") as view:
        assert view.order == "config"
        assert view.input_shape == [None, 12, 12, 3]
        fc6 = next(layer for layer in view.layers if layer.name == "fc6")
        assert fc6.fed_by == ["ReLU", "MaxPooling2D", "Flatten"]
        assert fc6.inbound == ["my_flat"]


def test_weights_h5_order_without_config_is_stated() -> None:
    with weightport.read(FIXTURES / "func_names__k3.weights.h5") as view:
        assert view.order == "write-order"
        assert "does not record the order" in view.order_note
        assert [layer.name for layer in view.layers] == ["my_conv", "my_bn", "fc6", "fc6_bn", "predictions"]


def test_sidecar_config_orders_a_weights_h5(tmp_path) -> None:
    """`--config` gives a `.weights.h5` its order (from a `.keras` archive's config.json)."""
    import zipfile

    config = tmp_path / "config.json"
    config.write_bytes(zipfile.ZipFile(FIXTURES / "nested__k3.keras").read("config.json"))
    with weightport.read(FIXTURES / "nested__k3.weights.h5", config=config) as view:
        assert view.order == "config"
        assert [layer.container for layer in view.layers] == ["backbone", "backbone", None, "head", "head"]
        assert view.layers[3].fed_by == ["Flatten"]


def test_channels_first_is_reported() -> None:
    with weightport.read(FIXTURES / "chfirst__tfk.h5") as view:
        assert view.layers[0].data_format == "channels_first"
        assert view.layers[1].fed_by == ["MaxPooling2D", "Flatten"]
