"""Issue 10's matrix: every source kind x every output kind x every Keras that should load it.

Source kinds: Keras 3 `.keras`, full `.h5`, `.weights.h5` + its config; tf_keras full `.h5`,
weights + its JSON; a Keras 1 weights file + its config. Output kinds: `.weights.h5`, `.h5`,
`--full-model .h5`, `.keras`. Consumers: Keras 3 on TensorFlow, Keras 3 on JAX, tf_keras, each in
ONE process over every output it should load (tests/keras_consumer.py). A whole model is loaded
with `load_model`; weights go into the twin built from its config with `load_weights`. Each is
compared with the source model (the fixture of the consumer's own Keras: the k3 and tfk files of a
model hold identical arrays) at the training size and, window by window, at twice the size on
every axis the twin leaves open. A combination weightport refuses (a `.keras` or whole model from a
config it cannot write for that Keras) must be refused with one line and exit 2.

The conversions run in this process with the final Keras load check off (it is what the
consumers do here, for every consumer and not only the one `convert` picks; tests/test_loads.py
tests the check itself).
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import pytest

import weightport
from weightport import cli
from weightport.head import analyze_head
from weightport.twinconfig import as_keras3, open_input_size, twin_config
from conftest import FIXTURES, import_or_skip
from consumers import run_consumers

import_or_skip("keras")
import_or_skip("tf_keras")
import_or_skip("jax")

MODELS = ("seq", "func_names", "gap", "conv1d", "nested", "chfirst")
SOURCES = ("k3.keras", "k3.h5", "k3.weights+config", "tfk.h5", "tfk.weights+json", "keras1")
OUTPUTS = ("weights.h5", "h5", "full-model.h5", "keras")
K3 = ("k3-tensorflow", "k3-jax")
TF_BACKED = ("k3-tensorflow", "tf_keras")  # TensorFlow's CPU kernels run channels_last convolutions only
KERAS1_MODELS = ("seq",)  # the Keras 1 source is seq's tf_keras file rewritten as Keras 1.2 wrote it


@dataclass(frozen=True)
class Combo:
    model: str
    source: str
    output: str

    @property
    def id(self) -> str:
        return f"{self.model}-{self.source}-{self.output}"

    @property
    def family(self) -> str:
        return "k3" if self.source.startswith("k3") else "tfk"  # Keras 1 configs: their weights go where tf_keras's do


COMBOS = [Combo(m, s, o) for m in MODELS for s in SOURCES for o in OUTPUTS if s != "keras1" or m in KERAS1_MODELS]


def consumers_of(combo: Combo) -> Tuple[str, ...]:
    """The Keras that should load this output: `.weights.h5` is Keras 3's layout, a legacy `.h5`
    loads by position everywhere, a whole model in the Keras its config is for."""
    if combo.output == "weights.h5":
        return K3
    if combo.output == "h5":
        return K3 + ("tf_keras",)
    return K3 if combo.family == "k3" else ("tf_keras",)


def refusal(combo: Combo) -> Optional[str]:
    """What weightport must refuse, by a phrase of its one line: a Keras 3 `.keras` from a Keras 2
    config, and any whole model from a Keras 1 config."""
    if combo.output == "keras" and combo.family == "tfk":
        return "a .keras output holds a Keras 3 config, and this one was written by Keras " + ("1.2.2" if combo.source == "keras1" else "2.")
    if combo.source == "keras1" and combo.output == "full-model.h5":
        return "written by Keras 1"
    return None


# --- sources ---------------------------------------------------------------------------------

def _keras1_seq(folder: Path) -> Tuple[Path, Path]:
    """seq's tf_keras weights as Keras 1.2 saved them (`layer_names`, `dense_1_W` datasets, a
    `Convolution2D` config with `nb_filter`, `dim_ordering: tf`, `output_dim`)."""
    names = {"conv2d": "convolution2d_1", "dense": "dense_1", "dense_1": "dense_2"}
    weights, config = folder / "seq__k1_weights.h5", folder / "seq__k1_config.json"
    with h5py.File(FIXTURES / "seq__tfk_weights.h5", "r") as src, h5py.File(weights, "w") as out:
        layer_names = ("convolution2d_1", "maxpooling2d_1", "flatten_1", "dense_1", "dense_2")
        out.attrs["layer_names"] = [n.encode() for n in layer_names]
        for layer in layer_names:
            out.create_group(layer).attrs["weight_names"] = []
        for old, new in names.items():
            group = out[new]
            group.attrs["weight_names"] = [f"{new}_W".encode(), f"{new}_b".encode()]
            group[f"{new}_W"] = src[f"{old}/{old}/kernel:0"][()]
            group[f"{new}_b"] = src[f"{old}/{old}/bias:0"][()]
    layers = [
        {"class_name": "Convolution2D", "config": {"name": "convolution2d_1", "nb_filter": 4, "nb_row": 3, "nb_col": 3, "border_mode": "valid",
                                                   "subsample": [1, 1], "dim_ordering": "tf", "activation": "relu", "bias": True,
                                                   "batch_input_shape": [None, 16, 16, 3], "input_dtype": "float32"}},
        {"class_name": "MaxPooling2D", "config": {"name": "maxpooling2d_1", "pool_size": [2, 2], "strides": [2, 2], "border_mode": "valid",
                                                  "dim_ordering": "tf"}},
        {"class_name": "Flatten", "config": {"name": "flatten_1"}},
        {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 8, "activation": "relu", "bias": True, "input_dim": None}},
        {"class_name": "Dense", "config": {"name": "dense_2", "output_dim": 5, "activation": "linear", "bias": True, "input_dim": None}},
    ]
    config.write_text(json.dumps({"class_name": "Sequential", "config": layers, "keras_version": "1.2.2", "backend": "tensorflow"}))
    return weights, config


def source_args(model: str, kind: str, folder: Path) -> List[str]:
    """The CLI arguments naming the source (and its sidecar config)."""
    if kind in ("k3.keras", "k3.h5", "tfk.h5"):
        family, suffix = kind.split(".")
        return [str(FIXTURES / f"{model}__{family}.{suffix}")]
    if kind == "k3.weights+config":  # model.to_json() in Keras 3 is the archive's config.json
        config = folder / f"{model}__k3.json"
        config.write_bytes(zipfile.ZipFile(FIXTURES / f"{model}__k3.keras").read("config.json"))
        return [str(FIXTURES / f"{model}__k3.weights.h5"), "--config", str(config)]
    if kind == "tfk.weights+json":  # model.to_json() in tf_keras: the model_config, with the version
        config = folder / f"{model}__tfk.json"
        with h5py.File(FIXTURES / f"{model}__tfk.h5", "r") as f:
            document = dict(json.loads(f.attrs["model_config"]), keras_version=str(f.attrs["keras_version"]), backend="tensorflow")
        config.write_text(json.dumps(document))
        return [str(FIXTURES / f"{model}__tfk_weights.h5"), "--config", str(config)]
    weights, config = _keras1_seq(folder)
    return [str(weights), "--config", str(config)]


# --- conversions and jobs ---------------------------------------------------------------------

def _convert(argv: List[str]) -> Tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv)
    return status, err.getvalue()


def _twin_json(path: Path, folder: Path, keras3: bool) -> Path:
    """The twin's config (as `convert` writes it into a whole model) to build it for `load_weights`."""
    with weightport.read(path) as view:
        config = twin_config(view, analyze_head(view))
        open_input_size(config, view)
    out = folder / f"{path.name}.twin.json"
    out.write_text(json.dumps(as_keras3(config) if keras3 else config))
    return out


def _facts(model: str) -> Tuple[List[int], bool]:
    """The training input shape (no batch axis) and whether the twin's map is channels_first."""
    with weightport.read(FIXTURES / f"{model}__k3.keras") as view:
        first = any(role.data_format == "channels_first" for role in analyze_head(view).values())
        return list(view.config.input_shape[1:]), first


def build_matrix(folder: Path) -> Tuple[Dict[str, Tuple[int, str]], Dict[str, Dict[str, dict]]]:
    """Convert every combination; run every consumer once over what it should load."""
    statuses: Dict[str, Tuple[int, str]] = {}
    jobs: Dict[str, List[dict]] = {name: [] for name in ("k3-tensorflow", "k3-jax", "tf_keras")}
    twins = {(m, k3): _twin_json(FIXTURES / f"{m}__{'k3.keras' if k3 else 'tfk.h5'}", folder, k3) for m in MODELS for k3 in (True, False)}
    for combo in COMBOS:
        suffix = {"weights.h5": ".weights.h5", "h5": ".h5", "full-model.h5": ".h5", "keras": ".keras"}[combo.output]
        out = folder / f"{combo.id}{suffix}"
        extra = ["--full-model"] if combo.output == "full-model.h5" else []
        statuses[combo.id] = _convert(["convert", *source_args(combo.model, combo.source, folder), "-o", str(out), "--quiet", *extra])
        if statuses[combo.id][0] != 0:
            continue
        train, first = _facts(combo.model)
        for consumer in consumers_of(combo):
            keras3 = consumer in K3
            job = {"id": combo.id, "output": str(out), "train": train, "dtype": "float32", "map_first": first,
                   "reference": str(FIXTURES / f"{combo.model}__{'k3.keras' if keras3 else 'tfk.h5'}")}
            if combo.output in ("weights.h5", "h5"):
                job["twin_json"] = str(twins[(combo.model, keras3)])
            jobs[consumer].append(job)
    return statuses, run_consumers(jobs, folder)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("weightport.keras_load.installed", lambda module: False)
        return build_matrix(tmp_path_factory.mktemp("matrix"))


def test_the_matrix_covers_every_kind() -> None:
    assert {c.source for c in COMBOS} == set(SOURCES) and {c.output for c in COMBOS} == set(OUTPUTS)
    assert {name for c in COMBOS if not refusal(c) for name in consumers_of(c)} == {"k3-tensorflow", "k3-jax", "tf_keras"}


@pytest.mark.parametrize("combo", COMBOS, ids=[c.id for c in COMBOS])
def test_output_loads_and_computes_the_source(combo: Combo, matrix) -> None:
    statuses, results = matrix
    status, err = statuses[combo.id]
    refused = refusal(combo)
    if refused:
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("weightport: error: ") and refused in lines[0], (status, err)
        return
    assert status == 0, err
    for consumer in consumers_of(combo):
        result = results[consumer][combo.id]
        assert result["loaded"], f"{consumer} cannot load it: {result.get('error')}"
        if combo.model == "chfirst" and consumer in TF_BACKED:  # the source cannot run here either; JAX compares it
            assert "NHWC" in result.get("reference_error", "") or "NCHW" in result.get("reference_error", ""), result
            continue
        assert "run_error" not in result and "reference_error" not in result, result
        assert result["train_rel_error"] < 1e-5, (consumer, result)
        big = result["big"]
        assert big is not None and "error" not in big, (consumer, big)
        assert big["windows"] > 1 or combo.model == "gap", (consumer, big)  # gap keeps its global pooling: one score
        assert big["rel_error"] < 1e-5, (consumer, big)
