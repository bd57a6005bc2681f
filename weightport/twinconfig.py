"""The twin's model config: the source config with its head rewritten as convolutions.

Edits are made on the config as data, in the source's own format (Keras 2 or Keras 3 JSON):
each Flatten/Permute/Reshape whose effect the converted kernel now holds becomes a linear
Activation (an identity that keeps the graph and the names), each converted Dense becomes
the Conv chosen by `head.analyze_head` (same name, activation, bias, initialisers,
regularisers and constraints), a global pooling that feeds a 1x1 head keeps its dimensions,
and head PReLUs share their alpha over the spatial axes. Nothing in the config is executed.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List

from .config import MODEL_CLASSES, parse_model_config
from .errors import WeightportError
from .head import PASS_THROUGH, HeadRole
from .shapes import free_input_axes, open_shapes
from .view import ModelView

__all__ = ["twin_config", "open_input_size", "as_keras3"]

_SHAPE_KEYS = ("batch_input_shape", "batch_shape")

# How Keras 3 names the classes it deserializes a `.keras` config by (`module` + `class_name`,
# `registered_name`), as `keras.saving.serialize_keras_object` writes them; every other layer
# class of a Keras 3 config is one of `keras.layers`.
_KERAS3_MODELS = {"Sequential": ("keras", None), "Functional": ("keras.src.models.functional", "Functional"),
                  "Model": ("keras.src.models.functional", "Functional")}

_CARRIED = ("name", "trainable", "dtype", "activation", "use_bias", "kernel_initializer", "bias_initializer",
            "kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")


def twin_config(view: ModelView, head: Dict[str, HeadRole], per_location: bool = False) -> Dict[str, Any]:
    """A deep copy of the source's model config describing the fully-convolutional twin.

    The twin keeps a global pooling that feeds a 1x1 head (with its dimensions), so it computes
    exactly what the classifier computes; `per_location` drops that pooling instead, giving a
    map of the head's scores at every location (a class-activation map)."""
    if view.config is None:
        raise WeightportError(view.path, "no model config to rewrite", "give a full model (.keras, model.save('x.h5')) or --config")
    raw = copy.deepcopy(view.config.raw)
    raw.pop("compile_config", None)  # the classifier's optimizer state does not fit the twin
    if any(entry.get("class_name") == "Dense" and "output_dim" in entry.get("config", {}) for entry in _entries(raw)):
        raise WeightportError(view.path, "the config was written by Keras 1", "rewrite needs a Keras 2 or 3 config; convert the weights and build the twin in code")
    _check_consumers(view, head)
    folded = {name: role for role in head.values() for name in role.folded}
    pooling = {role.pooling: role for role in head.values() if role.pooling}
    for entry in _entries(raw):
        name = entry.get("name") or entry["config"].get("name")
        entry.pop("build_config", None)
        if name in folded:
            _to_identity(entry)
        elif name in pooling and per_location:
            _to_identity(entry)
        elif name in pooling:
            entry["config"]["keepdims"] = True
        elif name in head:
            _rewrite(entry, head[name], view.path)
    return raw


def as_keras3(raw: Dict[str, Any]) -> Dict[str, Any]:
    """The config in the shape a `.keras` archive holds: the model and every layer entry with
    its `module` and `registered_name`. Keras 3's `model.save('x.h5')` leaves them out of a
    legacy file's `model_config` (its h5 loader does not need them), but `load_model` of a
    `.keras` cannot locate a class without them."""
    raw = copy.deepcopy(raw)
    _name_class(raw)
    for entry in _entries(raw):
        _name_class(entry)
    return raw


def _name_class(entry: Dict[str, Any]) -> None:
    if "module" in entry:
        return
    if entry.get("class_name") in _KERAS3_MODELS:
        entry["module"], entry["registered_name"] = _KERAS3_MODELS[entry["class_name"]]
        entry["class_name"] = "Functional" if entry["class_name"] == "Model" else entry["class_name"]
    else:
        entry["module"], entry["registered_name"] = "keras.layers", None


def _check_consumers(view: ModelView, head: Dict[str, HeadRole]) -> None:
    """Refuse a graph where something other than the head consumes the head's outputs
    (a squeeze-excite RepeatVector, say): it expects vectors, the twin gives feature maps."""
    affected = set(head) | {role.pooling for role in head.values() if role.pooling}
    for layer in view.config.layers:
        if layer.name in affected or not affected.intersection(layer.inbound):
            continue
        if layer.class_name not in PASS_THROUGH:
            raise WeightportError(view.path, f"layer '{layer.name}' ({layer.class_name}) takes the head's output as a vector; the twin gives it a feature map",
                                  "convert the weights only (.weights.h5 / .h5) and build the twin in code")
        affected.add(layer.name)


def _entries(model: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Every layer entry, nested models' included."""
    body = model.get("config")
    layers: List[Dict[str, Any]] = body if isinstance(body, list) else body.get("layers", []) if isinstance(body, dict) else []
    for entry in layers:
        yield entry
        if entry.get("class_name") in MODEL_CLASSES:
            yield from _entries(entry)


def _to_identity(entry: Dict[str, Any]) -> None:
    old = entry["config"]
    entry["class_name"] = "Activation"
    if "module" in entry:
        entry["module"], entry["registered_name"] = "keras.layers", None
    entry["config"] = {key: old[key] for key in ("name", "trainable", "dtype") if key in old}
    entry["config"]["activation"] = "linear"


def _rewrite(entry: Dict[str, Any], role: HeadRole, source: str) -> None:
    config = entry["config"]
    if role.kind in ("window", "1x1") and entry["class_name"] == "Dense":
        rank = role.rank
        kernel = list(role.window) if role.kind == "window" else [1] * rank
        conv = {key: config[key] for key in _CARRIED if key in config}
        conv.update(filters=config["units"], kernel_size=kernel, strides=[1] * rank, padding="valid",
                    data_format=role.data_format, dilation_rate=[1] * rank, groups=1)
        entry["class_name"], entry["config"] = f"Conv{rank}D", conv
        if "module" in entry:
            entry["module"], entry["registered_name"] = "keras.layers", None
    elif role.kind == "per-unit" and entry["class_name"] == "PReLU":
        config["shared_axes"] = list(range(1, role.rank + 1))
    elif role.kind == "per-unit" and "axis" in config:  # normalise over the channels of the feature map
        axis = 1 if role.data_format == "channels_first" else -1
        config["axis"] = [axis] if isinstance(config["axis"], list) else axis
    elif role.kind != "per-unit":
        raise WeightportError(source, f"cannot rewrite layer '{config.get('name')}' ({entry['class_name']}) as a convolution", "build the twin in code")


def open_input_size(raw: Dict[str, Any], view: ModelView) -> bool:
    """Let the twin accept any size (None) on the input axes its layers allow; True if any.

    The axes come from shape inference over the twin's own config (`shapes.free_input_axes`),
    data format by data format, so only axes that no layer sizes its weights by are opened:
    the spatial axes of an ordinary network, fewer in one that mixes data formats (a width
    that a later channels_last Conv takes as its channels stays fixed). Every input-shape key
    in the config gets the shape that reaches its layer, nested models' inputs included."""
    targets = [(entry["config"], key) for entry in _entries(raw) for key in _SHAPE_KEYS if key in entry.get("config", {})]
    for cfg, key in targets:
        _check_shape(cfg[key], view.path, f"layer '{cfg.get('name')}' has {key}")
    twin = parse_model_config(raw, view.path)
    free = free_input_axes(twin, view.path)
    if not any(free.values()):
        return False
    shapes = open_shapes(twin, view.path, free=free)
    for cfg, key in targets:
        if twin.get(cfg.get("name")) is not None:
            cfg[key] = [cfg[key][0], *shapes.input(cfg["name"]).shape]
    build = raw.get("build_config")
    if isinstance(build, dict) and isinstance(build.get("input_shape"), list) and len(shapes.roots) == 1:
        _check_shape(build["input_shape"], view.path, "the build_config has input_shape")
        build["input_shape"] = [build["input_shape"][0], *shapes.input(shapes.roots[0]).shape]
    return True


def _check_shape(shape: Any, source: str, where: str) -> None:
    """A shape that is no input's (null, [], not a list) is refused, not written into the twin."""
    if not isinstance(shape, list) or not shape:
        raise WeightportError(source, f"{where} {shape!r}, not the shape of an input (a batch axis, then the sizes)",
                              "the model config is damaged; save the model again")
