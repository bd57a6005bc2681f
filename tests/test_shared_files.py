"""Every real Keras file written by other projects (Keras 1.1 to 3.x) must read."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from conftest import SHARED_FILES, needs_shared_files, run_cli, shared_files, sidecar_config

pytestmark = needs_shared_files()

OPTIMIZER_GROUPS = ("optimizer_weights", "optimizer")


def model_dataset_sizes(path: Path) -> int:
    """Sum of every dataset's size outside optimizer state, counted without weightport."""
    total = 0
    with h5py.File(path, "r") as f:
        for key, item in f.items():
            if key in OPTIMIZER_GROUPS:
                continue
            sizes = [item.size] if isinstance(item, h5py.Dataset) else []
            if isinstance(item, h5py.Group):
                item.visititems(lambda _n, o: sizes.append(o.size) if isinstance(o, h5py.Dataset) else None)
            total += sum(sizes)
    return total


@pytest.mark.parametrize("path", shared_files(), ids=lambda p: p.name)
def test_inspect_json_totals_match_the_file(path: Path) -> None:
    config = sidecar_config(path)
    args = ["inspect", str(path), "--json"] + (["--config", str(config)] if config else [])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["total_params"] == model_dataset_sizes(path)
    assert doc["layers"], "no weighted layers"
    for layer in doc["layers"]:
        assert set(layer) >= {"name", "class", "weights"}
        for weight in layer["weights"]:
            assert isinstance(weight["name"], str) and weight["dtype"]
            assert all(isinstance(n, int) for n in weight["shape"])


@pytest.mark.parametrize("path", shared_files(), ids=lambda p: p.name)
def test_inspect_table(path: Path) -> None:
    """The table says what the JSON says: one row per tensor, each layer's position, name and
    class on its first row, in order, and the same totals; and every row stays readable."""
    config = sidecar_config(path)
    options = ["--config", str(config)] if config else []
    result = run_cli("inspect", str(path), *options)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    doc = json.loads(run_cli("inspect", str(path), "--json", *options).stdout)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["#", "layer", "class"])
    rows = lines[header + 1: lines.index("", header)]
    assert len(rows) == doc["total_tensors"]
    layer_column = lines[header].index("layer")
    firsts = [row.split() for row in rows if row[:layer_column].strip()]  # a layer's other tensors: rows with no position
    assert [int(cells[0]) for cells in firsts] == list(range(doc["total_layers"]))
    for cells, layer in zip(firsts, doc["layers"], strict=True):
        name = layer["name"] if len(layer["name"]) <= 48 else layer["name"][:22]  # long names are clipped in the middle
        assert cells[1].startswith(name) and cells[2].startswith(layer["class"] or "?")  # a wrapper: Bidirectional(LSTM)
    assert lines[-1] == f"{doc['total_layers']} weighted layers, {doc['total_tensors']} tensors, {doc['total_params']:,} parameters"
    assert max(len(row) for row in rows) <= 220


def test_keras1_sidecar_config_gives_classes_and_dim_ordering() -> None:
    weights = SHARED_FILES / "dl4j-old__mnist_cnn_th_keras_1_weights.h5"
    result = run_cli("inspect", str(weights), "--json", "--config", str(sidecar_config(weights)))
    doc = json.loads(result.stdout)
    assert [l["class"] for l in doc["layers"]] == ["Conv2D", "Conv2D", "Dense", "Dense"]
    assert doc["layers"][0]["data_format"] == "channels_first"
    assert doc["layers"][0]["weights"][0]["shape"] == [32, 1, 3, 3]
    assert doc["layers"][2]["fed_by"] == ["Activation", "MaxPooling2D", "Dropout", "Flatten"]
    assert doc["input_shape"] == [None, 1, 28, 28]


def test_nested_weights_only_file_is_split_into_inner_layers() -> None:
    doc = json.loads(run_cli("inspect", str(SHARED_FILES / "washcycle__vae_cnn_mnist.h5"), "--json").stdout)
    names = [l["name"] for l in doc["layers"]]
    assert names[:5] == ["conv2d_6", "conv2d_7", "dense_2", "z_mean_1", "z_log_var_1"]
    assert {l["container"] for l in doc["layers"]} == {"encoder", "decoder"}


def test_graph_context_from_the_config() -> None:
    doc = json.loads(run_cli("inspect", str(SHARED_FILES / "dl4j-old__48net_complete.h5"), "--json").stdout)
    conv5 = next(l for l in doc["layers"] if l["name"] == "conv5")
    assert conv5["class"] == "Dense" and conv5["fed_by"] == ["Permute", "Flatten"]
    gap = json.loads(run_cli("inspect", str(SHARED_FILES / "dl4j__GAPError.h5"), "--json").stdout)
    dense = next(l for l in gap["layers"] if l["name"] == "dense_9")
    assert dense["fed_by"] == ["Activation", "GlobalAveragePooling1D"]
    assert gap["layers"][1]["weights"][0]["path"].startswith("/model_weights/batch_normalization_5/batch_normalization_5_1/")
