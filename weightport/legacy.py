"""Reader for the legacy HDF5 layout written by Keras 1, Keras 2 / tf.keras and Keras 3's
`model.save('x.h5')`: `layer_names` on the weights group, `weight_names` per layer group.

`layer_names` is the order `load_weights` pairs layers by, so the view takes it as is.
A nested model is one entry of `layer_names` whose group holds all its inner layers'
datasets; the view splits it into those inner layers (by the config where there is one,
by the weight-name prefixes where not) so it can be matched against a flat model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import h5py

from . import budgets
from .config import ConfigLayer, ModelConfig, parse_model_config
from .errors import WeightportError
from .hdf5 import HDF5Storage, Image, finder, has_attr, member, str_attr, str_list_attr, tensor_storage, view_facts
from .roles import role_from_name
from .view import Layer, ModelView, Tensor
from .wrappers import var_paths, wrapped_class

__all__ = ["is_legacy", "read_legacy"]

_HINT_DAMAGED = "the file is damaged or was not written by Keras"


def _weights_group(f: h5py.File, path: Union[str, Path]) -> Optional[h5py.Group]:
    if has_attr(f, "layer_names"):
        return f
    group = member(f, "model_weights", path)
    if isinstance(group, h5py.Group) and has_attr(group, "layer_names"):
        return group
    return None


def is_legacy(f: h5py.File, path: Union[str, Path]) -> bool:
    """True for a legacy weights-only file or a full model with a `model_weights` group."""
    return _weights_group(f, path) is not None


def read_legacy(f: h5py.File, path: Union[str, Path], image: Image, config: Optional[ModelConfig] = None) -> ModelView:
    """Build the view of a legacy `.h5` file (`f`, opened as `image`); `config` overrides the
    file's own `model_config`."""
    group = _weights_group(f, path)
    if group is None:
        raise WeightportError(path, "no layer_names attribute (not a legacy Keras weights file)", _HINT_DAMAGED)
    version = str_attr(group, "keras_version", path) or str_attr(f, "keras_version", path)
    if config is None:
        text = str_attr(f, "model_config", path)
        config = parse_model_config(text, source=f"{path} (model_config)") if text else None
    layers: List[Layer] = []
    names = str_list_attr(group, "layer_names", path)
    budgets.check_names(names, group, "layer_names", path)
    for name in names:
        layers.extend(_layers_of(group, name, path, config, f, image))
    if config is not None:
        weighted = {layer.name for layer in layers}
        for layer in layers:
            layer.fed_by = config.chain_back(layer.name, weighted)
    return ModelView(
        path=str(path),
        layout="legacy-h5",
        kind="full-model" if group.name != "/" else "weights-only",
        layers=layers,
        order="layer_names",
        order_note="the file's layer_names attribute, the order load_weights pairs layers by",
        keras_version=version,
        backend=str_attr(group, "backend", path) or str_attr(f, "backend", path),
        input_shape=config.input_shape if config else None,
        model_class=config.class_name if config else None,
        config=config,
        **view_facts(f, image),
    )


def _layers_of(group: h5py.Group, name: str, path: Union[str, Path], config: Optional[ModelConfig], root: h5py.File, image: Image) -> List[Layer]:
    """The weighted layer(s) stored under one `layer_names` entry (several for a nested model)."""
    entry = member(group, name, path)
    if not isinstance(entry, h5py.Group):
        raise WeightportError(path, f"layer '{name}' is listed in layer_names but has no group", _HINT_DAMAGED)
    weight_names = str_list_attr(entry, "weight_names", path)
    budgets.check_names(weight_names, entry, "weight_names", path)
    if not weight_names:
        return []
    nested = _is_nested(name, weight_names, config)
    inner: Dict[str, List[Tuple[str, HDF5Storage]]] = {}
    find = finder(entry, path)  # a layer's weights share their path up to the last part: walked once
    for weight_name in weight_names:
        dataset = find(weight_name)
        if not isinstance(dataset, h5py.Dataset):
            raise WeightportError(path, f"weight '{weight_name}' of layer '{name}' is listed in weight_names but not stored", _HINT_DAMAGED)
        key = _inner_name(name, weight_name, config) if nested else name
        inner.setdefault(key, []).append((weight_name, tensor_storage(dataset, root, path, image)))
    return [_layer(key, items, entry, name if nested else None, config) for key, items in inner.items()]


def _is_nested(name: str, weight_names: List[str], config: Optional[ModelConfig]) -> bool:
    if config is not None:
        layer = config.get(name)
        return layer is None and any(l.container == name for l in config.layers)
    firsts = {parts[0] for parts in (_layer_parts(name, w) for w in weight_names) if parts}
    return len(firsts) > 1 and not _bidirectional(firsts)


def _bidirectional(firsts: set) -> bool:
    """Bidirectional names its two layers `forward_<name>` and `backward_<name>`: one layer whose
    weights sit in two sub-objects, not a nested model with two layers."""
    return len(firsts) == 2 and {part.split("_", 1)[0] for part in firsts} == {"forward", "backward"}


def _layer_parts(container: str, weight_name: str) -> List[str]:
    """The path components of a weight name above the variable, without the container's own
    name that Keras 3 puts first (`backbone/bb_conv1/kernel` -> [bb_conv1])."""
    parts = weight_name.split("/")[:-1]
    return parts[1:] if len(parts) > 1 and parts[0] == container else parts


def _inner_name(container: str, weight_name: str, config: Optional[ModelConfig]) -> str:
    """The inner layer a nested model's weight belongs to: `bb_conv1/kernel:0` (Keras 2),
    `backbone/bb_conv1/kernel` (Keras 3) -> `bb_conv1`; the config says which part is a layer."""
    if config is not None:
        for part in reversed(weight_name.split("/")[:-1]):
            layer = config.get(part)
            if layer is not None and layer.container is not None:
                return part
    parts = _layer_parts(container, weight_name)
    return parts[0] if parts else container


def _layer(name: str, items: List[Tuple[str, HDF5Storage]], entry: h5py.Group, container: Optional[str], config: Optional[ModelConfig]) -> Layer:
    spec = config.get(name) if config else None
    roles = [role_from_name(stored, name) for stored, _ in items]
    k3_vars = _k3_vars(name, [stored for stored, _ in items], roles, spec)
    weights = [Tensor(stored, role, storage.path, storage, k3_var) for (stored, storage), role, k3_var in zip(items, roles, k3_vars)]
    return Layer(
        name=name,
        class_name=spec.class_name if spec else None,
        weights=weights,
        group=entry.name,
        container=container,
        data_format=spec.data_format if spec else None,
        inbound=list(spec.inbound) if spec else [],
        config=spec.config if spec else None,
        wrapped=wrapped_class(spec.class_name, spec.config) if spec else None,
    )


def _k3_vars(name: str, stored: List[str], roles: List[str], spec: Optional[ConfigLayer]) -> List[Optional[str]]:
    """Where Keras 3 would keep each tensor below the layer's group: from the class's structure
    (a wrapper's `forward_layer/cell/vars/0` ...), else `vars/<i>` when the names show no sub-object."""
    paths = var_paths(spec.class_name, spec.config, list(roles)) if spec else None
    if paths is None and not any(_in_sub_object(name, weight) for weight in stored):
        paths = [f"vars/{i}" for i in range(len(stored))]
    return list(paths) if paths is not None else [None] * len(stored)


def _in_sub_object(layer: str, weight_name: str) -> bool:
    """`bidirectional/forward_lstm/lstm_cell/kernel:0` sits in a sub-object of `bidirectional`;
    `dense/kernel:0`, `backbone/bb_conv1/kernel` (of bb_conv1) and Keras 1 `dense_1_W` do not."""
    parts = weight_name.split("/")
    below = parts[parts.index(layer) + 1:] if layer in parts[:-1] else parts[1:]
    return len(below) > 1
