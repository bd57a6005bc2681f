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
from typing import Any, Dict, Iterator, List, Sequence, Set

from .config import MODEL_CLASSES, io_names, parse_model_config
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


def twin_config(view: ModelView, head: Dict[str, HeadRole], per_location: bool = False, left_out: Sequence[str] = ()) -> Dict[str, Any]:
    """A deep copy of the source's model config describing the fully-convolutional twin.

    The twin keeps a global pooling that feeds a 1x1 head (with its dimensions), so it computes
    exactly what the classifier computes; `per_location` drops that pooling instead, giving a
    map of the head's scores at every location (a class-activation map). The layers `left_out`
    (`--drop`, `--skip` without a target) are cut off the twin's tail (`_cut_tail`)."""
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
        name = _name(entry)
        entry.pop("build_config", None)
        if name in folded:
            _to_identity(entry)
        elif name in pooling and per_location:
            _to_identity(entry)
        elif name in pooling:
            entry["config"]["keepdims"] = True
        elif name in head:
            _rewrite(entry, head[name], view.path)
    if left_out:
        _cut_tail(raw, view, set(left_out))
    return raw


def _cut_tail(raw: Dict[str, Any], view: ModelView, left_out: Set[str]) -> None:
    """Take the layers left out of the twin, and the weightless layers only they feed (a softmax
    Activation, say), off the end of the model: their producers become its outputs, as the source
    defines them (a global pooling that fed a dropped 1x1 head gives its vector again). Only a
    tail can go: a layer left out that feeds a weighted layer kept, or sits in a nested model,
    cannot be cut out of a whole model, and is refused."""
    cut = _downstream(view.config.layers, left_out)
    weighted = {layer.name for layer in view.layers}
    for layer in (layer for layer in view.config.layers if layer.name in cut):
        if layer.container is not None:
            raise WeightportError(view.path, f"cannot leave '{layer.name}' out of a whole model: it sits inside the nested model '{layer.container}'",
                                  "write the weights only (-o OUT.weights.h5 or OUT.h5) and build the model in code")
        if layer.name in weighted and layer.name not in left_out:
            fed_by = next(name for name in sorted(left_out) if layer.name in _downstream(view.config.layers, {name}))
            raise WeightportError(view.path, f"cannot leave '{fed_by}' out of a whole model: '{layer.name}' ({layer.class_name}) is computed from it and keeps its weights",
                                  f"leave '{layer.name}' out too, or write the weights only (-o OUT.weights.h5 or OUT.h5) and build the model in code")
    if not weighted - cut:
        raise WeightportError(view.path, "leaving those layers out leaves no weighted layer in the model", "leave fewer layers out")
    feeders = list(dict.fromkeys(name for layer in view.config.layers if layer.name in cut for name in layer.inbound if name not in cut))
    originals = {_name(entry): entry for entry in _entries(view.config.raw)}
    body = raw["config"]
    entries = body if isinstance(body, list) else body["layers"]
    entries[:] = [_as_output(entry, originals) if _name(entry) in feeders and _name(entry) not in weighted else entry
                  for entry in entries if _name(entry) not in cut]
    if isinstance(body, dict):
        outputs = [name for name in io_names(body.get("output_layers")) if name not in cut]
        outputs += [name for name in feeders if name not in outputs]
        flat = isinstance(body.get("output_layers"), list) and isinstance((body["output_layers"] or [None])[0], str)
        body["output_layers"] = [outputs[0], 0, 0] if flat and len(outputs) == 1 else [[name, 0, 0] for name in outputs]


def _name(entry: Dict[str, Any]) -> str:
    return entry.get("name") or entry["config"].get("name")


def _as_output(entry: Dict[str, Any], originals: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A weightless layer that becomes an output once the tail is cut: as the source has it (a
    pooling given its dimensions for the head, or made an identity, computes its vector again)."""
    restored = copy.deepcopy(originals[_name(entry)])
    restored.pop("build_config", None)
    restored.update({key: entry[key] for key in ("module", "registered_name") if key in entry})
    return restored


def _downstream(layers: List[Any], start: Set[str]) -> Set[str]:
    """`start` and every layer fed, directly or not, by one of them."""
    consumers: Dict[str, List[str]] = {}
    for layer in layers:
        for producer in layer.inbound:
            consumers.setdefault(producer, []).append(layer.name)
    found: Set[str] = set()
    pending = list(start)
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending.extend(consumers.get(name, []))
    return found


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
