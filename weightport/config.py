"""Keras model configs (Keras 1, 2 and 3 JSON) parsed as plain data into one flat layer graph.

The config is the only place a weights file records which layer feeds which, the data
format, and (for Keras 3 `.weights.h5`) the order across layer classes. It is parsed as
data only: nothing in it is imported or executed (a Lambda's bytecode stays a string).
Nested models are expanded in place, so a sub-model's inner layers appear where the
sub-model stands, the way their weights are stored.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from . import budgets
from .errors import WeightportError
from .inputs import open_regular

__all__ = [
    "ConfigLayer",
    "ModelConfig",
    "parse_model_config",
    "load_config_file",
    "to_snake_case",
    "MODEL_CLASSES",
    "class_of",
]

# Keras 1 class names -> their Keras 2/3 names, so later stages see one vocabulary.
_KERAS1_CLASSES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D",
    "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
}
MODEL_CLASSES = {"Sequential", "Model", "Functional"}
# Real configs nest about 7 levels, 6 more per nested model; past this the JSON is damaged or hostile
# (and would exhaust the stack of whatever walks it next: deepcopy, json.dumps ...).
MAX_CONFIG_DEPTH = 100
_DIM_ORDERING = {"th": "channels_first", "tf": "channels_last"}


@dataclass
class ConfigLayer:
    """One layer of the config: its class, settings and the layers feeding it."""

    name: str
    class_name: str
    config: Dict[str, Any]
    inbound: List[str] = field(default_factory=list)
    container: Optional[str] = None  # name of the nested model holding it
    k3_path: str = ""  # the group Keras 3 `save_weights` gives it (`layers/conv2d_1`)

    @property
    def data_format(self) -> Optional[str]:
        fmt = self.config.get("data_format")
        if fmt in ("channels_last", "channels_first"):
            return fmt
        return _DIM_ORDERING.get(self.config.get("dim_ordering", ""))


@dataclass
class ModelConfig:
    """A whole model config, flattened: `layers` in model order, nested models expanded."""

    class_name: str
    name: Optional[str]
    layers: List[ConfigLayer]
    input_shape: Optional[List[Optional[int]]]
    keras_version: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    # What later stages work out from the layers, kept by them under keys of their own: a config is
    # not changed once parsed, and a convert asks the same of its source's three times (plan, whole
    # model, check), each a walk of every layer per input axis (`shapes.free_input_axes`).
    derived: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}

    def get(self, name: str) -> Optional[ConfigLayer]:
        return self._by_name.get(name)

    def chain_back(self, name: str, weighted: Set[str]) -> List[str]:
        """Classes of the weightless layers between `name` and the weighted layer (or input)
        that produces its input, nearest producer first: e.g. ['MaxPooling2D', 'Flatten']."""
        chain: List[str] = []
        seen: Set[str] = set()
        current = self.get(name)
        while current is not None and current.inbound:
            producer = self.get(current.inbound[0])
            if producer is None or producer.name in weighted or producer.name in seen:
                break
            seen.add(producer.name)
            if producer.class_name != "InputLayer":
                chain.append(producer.class_name)
            current = producer
        return list(reversed(chain))


@functools.lru_cache(maxsize=1024)
def to_snake_case(name: str) -> str:
    """Keras 3's own class-name -> group-name rule (`ReLU` -> `re_lu`, `Conv2D` -> `conv2d`);
    remembered, as a config names a few classes thousands of times."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def class_of(serialized: str) -> str:
    """The class a config names: Keras 1 names mapped (`Convolution2D` -> `Conv2D`), and a custom
    class's registered name (`my_package>Block`, how Keras 3 writes it in a legacy `.h5`) taken
    as the class itself, as a `.keras` config names it (`Block`) and Keras 3 groups its weights."""
    return _KERAS1_CLASSES.get(serialized, serialized.rsplit(">", 1)[-1])


def load_config_file(path: Union[str, Path]) -> ModelConfig:
    """Parse a sidecar JSON config (`model.to_json()` output, or a `.keras` `config.json`),
    read from a regular file only (a FIFO or a device is refused unread)."""
    try:
        with os.fdopen(open_regular(path, role="config"), "rb") as fh:
            text = budgets.read_limited(fh, path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightportError(path, f"cannot read config ({exc})", "give a JSON file") from None
    return parse_model_config(text, source=path)


def parse_model_config(obj: Union[str, bytes, Dict[str, Any]], source: Union[str, Path]) -> ModelConfig:
    """Turn a model config (JSON text or the decoded dict) into a flat `ModelConfig`."""
    if isinstance(obj, (str, bytes)):
        budgets.check_config_text(obj, source)
        try:
            obj = json.loads(obj)
        except (ValueError, RecursionError) as exc:
            raise WeightportError(source, f"model config is not valid JSON ({exc})", "give the output of model.to_json()") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("class_name"), str) or obj["class_name"] not in MODEL_CLASSES:
        raise WeightportError(source, "not a Keras model config (no Sequential/Functional/Model class_name)", "give the output of model.to_json()")
    budgets.check_layer_count(_layer_count(obj), source)
    if _depth(obj) > MAX_CONFIG_DEPTH:
        raise WeightportError(source, f"model config nests more than {MAX_CONFIG_DEPTH} levels deep, deeper than any model", "give the output of model.to_json()")
    try:
        layers, _, _ = _parse_container(obj, container=None, prefix="")
        body = obj.get("config")
        name = body.get("name") if isinstance(body, dict) else None
        return ModelConfig(
            class_name=obj["class_name"],
            name=name,
            layers=layers,
            input_shape=_input_shape(obj, layers),
            keras_version=obj.get("keras_version"),
            raw=obj,
        )
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        raise WeightportError(source, f"model config has an unexpected structure ({type(exc).__name__}: {exc})", "give the output of model.to_json()") from None
    except RecursionError:
        raise WeightportError(source, "model config nests deeper than any model", "give the output of model.to_json()") from None


def _depth(obj: Any) -> int:
    """How deep lists and dicts nest in `obj`, found without recursion, a level at a time (only
    the containers of each level are kept: a big model's config has tens of thousands of values)."""
    depth, level = 0, [obj] if isinstance(obj, (dict, list)) else []
    while level:
        depth += 1
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list))]
    return depth


def _layer_count(model: Dict[str, Any]) -> int:
    """The layers `_parse_container` would make of `model` (nested models' own counted in, the
    models themselves not), counted before any is parsed, without recursion: the layers of a
    config far over the budget cost ~30 us each to parse (30,000 spliced in took 0.7 s to refuse).
    A part of the wrong kind is left to the parse to name."""
    count, models = 0, [model]
    while models:
        try:
            entries = _layer_entries(models.pop())
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            continue
        for entry in entries:
            nested = isinstance(entry, dict) and isinstance(entry.get("class_name"), str) and class_of(entry["class_name"]) in MODEL_CLASSES
            if nested and isinstance(entry.get("config"), (dict, list)):
                models.append(entry)
            else:
                count += 1
    return count


def _layer_entries(model: Dict[str, Any]) -> List[Dict[str, Any]]:
    body = model["config"]
    entries = body if isinstance(body, list) else body["layers"]
    if not isinstance(entries, list):
        raise ValueError("'layers' is not a list")
    return entries


def _entry_name(entry: Dict[str, Any]) -> str:
    name = entry.get("name") or entry["config"]["name"]
    if not isinstance(name, str) or "\x00" in name:
        raise ValueError(f"layer name {name!r} is not a string of text")
    return name


def _parse_container(model: Dict[str, Any], container: Optional[str], prefix: str) -> Tuple[List[ConfigLayer], List[str], List[str]]:
    """Flatten one (possibly nested) model; return its layers, entry names and output names."""
    entries = _layer_entries(model)
    sequential = model["class_name"] == "Sequential"
    counters: Dict[str, int] = {}
    layers: List[ConfigLayer] = []
    aliases: Dict[str, List[str]] = {}  # nested model name -> its output layer names
    previous: List[str] = []
    for entry in entries:
        name, class_name = _entry_name(entry), class_of(entry["class_name"])
        k3_path = prefix + "layers/" + _numbered(to_snake_case(class_name), counters)
        inbound = previous if sequential else _inbound_names(entry.get("inbound_nodes") or [])
        if class_name in MODEL_CLASSES and isinstance(entry.get("config"), (dict, list)):
            inner, inputs, outputs = _parse_container(entry, container=name, prefix=k3_path + "/")
            for layer in inner:
                if layer.name in inputs and not layer.inbound:
                    layer.inbound = _feed(inputs, inbound, layer.name)
            layers.extend(inner)
            aliases[name] = outputs
        else:
            config = entry.get("config")
            if not isinstance(config, dict):
                raise ValueError(f"layer '{name}' has config {config!r}, not a dict of settings")
            _check_shapes(name, config)
            layers.append(ConfigLayer(name, class_name, config, list(inbound), container, k3_path))
        previous = [name]
    for layer in layers:
        layer.inbound = _resolve(layer.inbound, aliases)
    if sequential:
        first = [layers[0].name] if layers else []
        return layers, first, _resolve(previous, aliases)
    body = model["config"]
    return layers, io_names(body.get("input_layers")), _resolve(io_names(body.get("output_layers")), aliases)


def _check_shapes(name: str, config: Dict[str, Any]) -> None:
    """A declared input shape is a list of sizes (None for any), or the config is damaged (a NaN
    or infinite size would also make `inspect --json` print what JSON does not allow)."""
    for key in ("batch_input_shape", "batch_shape", "input_shape"):
        _check_sizes(f"layer '{name}' has {key}", config.get(key))


def _check_sizes(what: str, value: Any) -> None:
    if value is not None and not (isinstance(value, list) and all(n is None or (isinstance(n, int) and not isinstance(n, bool)) for n in value)):
        raise ValueError(f"{what} {value!r}, not a list of sizes")


def _feed(inputs: List[str], inbound: List[str], name: str) -> List[str]:
    """What feeds a nested model's input `name`: the outer tensor in its position when the model
    is called with one tensor per input, else every producer of the nested model."""
    if len(inputs) == len(inbound):
        return [inbound[inputs.index(name)]]
    return list(inbound)


def _numbered(snake: str, counters: Dict[str, int]) -> str:
    count = counters.get(snake, 0)
    counters[snake] = count + 1
    return snake if count == 0 else f"{snake}_{count}"


def _resolve(names: Sequence[str], aliases: Dict[str, List[str]]) -> List[str]:
    out: List[str] = []
    for name in names:
        out.extend(aliases.get(name, [name]))
    return out


def _inbound_names(nodes: Any) -> List[str]:
    """Producer names from Keras 1/2 (`[[name, node, tensor, {...}]]`) or Keras 3 node lists:
    the first call's inputs in order (`Concatenate()([x, x])` lists x twice), then any other
    producer of the layer's later calls (a shared layer)."""
    nodes = nodes if isinstance(nodes, list) else [nodes]
    names: List[str] = list(_walk(nodes[0])) if nodes else []
    for node in nodes[1:]:
        names.extend(name for name in _walk(node) if name not in names)
    return names


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" else None
        if history:
            if not isinstance(history, list) or not isinstance(history[0], str):
                raise ValueError(f"keras_history {history!r} does not name a layer")
            yield history[0]
            return
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            yield node[0]
            return
        for value in node:
            yield from _walk(value)


def io_names(spec: Any) -> List[str]:
    if not spec:
        return []
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        return [spec[0]]
    return [item[0] for item in spec if isinstance(item, list) and item]


def _input_shape(model: Dict[str, Any], layers: List[ConfigLayer]) -> Optional[List[Optional[int]]]:
    for layer in layers[:1] + [l for l in layers if l.class_name == "InputLayer"][:1]:
        cfg = layer.config
        for key in ("batch_input_shape", "batch_shape"):
            if isinstance(cfg.get(key), list):
                return list(cfg[key])
        if isinstance(cfg.get("input_shape"), list):
            return [None] + list(cfg["input_shape"])
    build = model.get("build_config")
    if isinstance(build, dict) and isinstance(build.get("input_shape"), list):
        _check_sizes("build_config has input_shape", build["input_shape"])
        return list(build["input_shape"])
    return None
