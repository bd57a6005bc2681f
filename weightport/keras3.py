"""Reader for the Keras 3 `.weights.h5` layout: `layers/<snake_class>[_n]/vars/<i>`.

The file names groups by layer class, not by layer name, and does not record the order
across classes. With a config (from a `.keras` archive or `--config`) the view follows the
config, replaying Keras's own group naming. Without one it assumes the order in which Keras
wrote the tensors (their object addresses in the file), which is `model.layers` order for files
written by `save_weights`, and says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import h5py

from .config import ModelConfig, to_snake_case
from .errors import WeightportError
from .hdf5 import checked_tensor, member, members, str_attr
from .roles import roles_for_class
from .view import Layer, ModelView, Tensor

__all__ = ["is_keras3", "read_keras3", "natural_key", "KNOWN_CLASSES"]

# Layer classes whose snake-case group names are recognised in a file without a config.
KNOWN_CLASSES = (
    "Dense Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose DepthwiseConv1D "
    "DepthwiseConv2D SeparableConv1D SeparableConv2D BatchNormalization LayerNormalization "
    "GroupNormalization UnitNormalization PReLU Embedding LSTM GRU SimpleRNN Bidirectional "
    "MultiHeadAttention EinsumDense ConvLSTM1D ConvLSTM2D ConvLSTM3D LocallyConnected1D "
    "LocallyConnected2D Normalization Sequential Functional"
).split()
_CLASS_BY_SNAKE = {to_snake_case(name): name for name in KNOWN_CLASSES}
_ROOT_SKIP = {"optimizer"}
_NUMBERED = re.compile(r"_\d+$")  # Keras's numbered suffix (conv2d_3)
_PART = re.compile(r"(.*?)_(\d+)")
_ORDER_NOTE = (
    "a .weights.h5 file does not record the order across layer classes; assumed the order in "
    "which the tensors were written (their object addresses in the file), which is model order "
    "for files written by save_weights; give --config (or a .keras file) to take the order from the model"
)
_ORDER_NOTE_NO_OFFSET = (
    "a .weights.h5 file does not record the order across layer classes and its tensors' "
    "addresses cannot be read; assumed the groups in path order with numbered suffixes sorted "
    "numerically; give --config (or a .keras file) to take the order from the model"
)


def is_keras3(f: h5py.File, path: Union[str, Path]) -> bool:
    """True for a Keras 3 weights file (a `layers` or `vars` group, no legacy attributes)."""
    return any(isinstance(member(f, name, path), h5py.Group) for name in ("layers", "vars"))


def read_keras3(f: h5py.File, path: Union[str, Path], config: Optional[ModelConfig] = None,
                layout: str = "keras3-weights-h5", keras_version: Optional[str] = None) -> ModelView:
    """Build the view of a `.weights.h5` file (or the weights member of a `.keras` archive)."""
    found = dict(_walk(f, path))
    if config is not None:
        layers, order, note = _in_config_order(found, config, path), "config", "the model config's layer order"
    else:
        layers, order, note = _in_file_order(found, path)
    weighted = {layer.name for layer in layers}
    if config is not None:
        for layer in layers:
            layer.fed_by = config.chain_back(layer.name, weighted)
    return ModelView(
        path=str(path),
        layout=layout,
        kind="full-model" if layout == "keras-archive" else "weights-only",
        layers=layers,
        order=order,
        order_note=note,
        keras_version=keras_version,
        input_shape=config.input_shape if config else None,
        model_class=config.class_name if config else None,
        config=config,
    )


class _Vars(NamedTuple):
    """A layer's `vars` group and its datasets by name, each opened once."""

    group: h5py.Group
    datasets: Dict[str, h5py.Dataset]


def _walk(root: h5py.Group, path: Union[str, Path]) -> List[Tuple[str, _Vars]]:
    """(group path, vars) for every group whose `vars` holds datasets. Iterative, and each
    group is entered once, so a damaged file whose groups nest thousands deep or link back to an
    ancestor cannot make it recurse without end; a link into another file is refused (`member`)."""
    found: List[Tuple[str, _Vars]] = []
    seen = {root.id}
    pending = [root]
    while pending:
        group = pending.pop()
        for key in group:
            if group.name == "/" and key in _ROOT_SKIP:
                continue
            child = member(group, key, path)
            if not isinstance(child, h5py.Group) or child.id in seen:
                continue
            seen.add(child.id)
            if key != "vars":
                pending.append(child)
                continue
            datasets = {name: value for name, value in members(child, path) if isinstance(value, h5py.Dataset)}
            if datasets:
                found.append((group.name.lstrip("/"), _Vars(child, datasets)))
    return found


def _tensors(found: _Vars, path: Union[str, Path], class_name: Optional[str], config: Optional[dict]) -> List[Tensor]:
    vars_group = found.group
    keys = list(found.datasets)
    if not all(k.isdigit() for k in keys):
        raise WeightportError(path, f"'{vars_group.name}' holds datasets not named 0, 1, ... ({', '.join(sorted(keys)[:4])})", "the file is damaged or was not written by Keras")
    keys.sort(key=int)
    missing = sorted(set(range(int(keys[-1]) + 1)) - {int(k) for k in keys}) if keys else []
    if missing:  # Keras numbers a layer's variables 0, 1, ... without gaps
        raise WeightportError(path, f"'{vars_group.name}' holds tensors {', '.join(keys[:6])} but not {', '.join(map(str, missing[:6]))}",
                              "a tensor is missing: the file is damaged; save the weights again")
    roles = roles_for_class(class_name, len(keys), config)
    root = vars_group.file
    datasets = [checked_tensor(found.datasets[key], root, path) for key in keys]
    return [Tensor(key, role, ds.name, ds) for key, ds, role in zip(keys, datasets, roles)]


def _class_from_path(group_path: str) -> Optional[str]:
    last = group_path.rsplit("/", 1)[-1]
    return _CLASS_BY_SNAKE.get(_NUMBERED.sub("", last))


def _make_layer(group_path: str, found: _Vars, path: Union[str, Path], class_name: Optional[str],
                name: Optional[str], spec_config: Optional[dict] = None, **extra) -> Layer:
    return Layer(
        name=name or str_attr(found.group, "name", path) or group_path,
        class_name=class_name,
        weights=_tensors(found, path, class_name, spec_config),
        group=found.group.name,
        config=spec_config,
        **extra,
    )


def _in_config_order(found: Dict[str, _Vars], config: ModelConfig, path: Union[str, Path]) -> List[Layer]:
    layers: List[Layer] = []
    for spec in config.layers:
        vars_group = found.pop(spec.k3_path, None)
        if vars_group is not None:
            layers.append(_make_layer(spec.k3_path, vars_group, path, spec.class_name, spec.name, spec.config,
                                      container=spec.container, data_format=spec.data_format, inbound=list(spec.inbound)))
    if found:
        raise WeightportError(path, f"the config does not describe this file: no config layer for group(s) {', '.join(sorted(found)[:5])}",
                              "give the config of the model that wrote these weights")
    return layers


def _in_file_order(found: Dict[str, _Vars], path: Union[str, Path]) -> Tuple[List[Layer], str, str]:
    addresses = {p: _written_at(g) for p, g in found.items()}
    if all(a is not None for a in addresses.values()):
        ordered, order, note = _merge_by_address(found, addresses), "write-order", _ORDER_NOTE
    else:
        ordered, order, note = sorted(found, key=natural_key), "path", _ORDER_NOTE_NO_OFFSET
    layers = [_make_layer(p, found[p], path, _class_from_path(p), None) for p in ordered]
    return layers, order, note


def _merge_by_address(found: Dict[str, _Vars], addresses: Dict[str, int]) -> List[str]:
    """Within one class of one container the numbering (`conv2d`, `conv2d_1` ...) is Keras's own
    order; only the classes are interleaved, by when each layer's tensors were written."""
    runs: Dict[str, List[str]] = {}
    for group_path in sorted(found, key=natural_key):
        runs.setdefault(_NUMBERED.sub("", group_path), []).append(group_path)
    heads = [run for run in runs.values()]
    ordered: List[str] = []
    while heads:
        run = min(heads, key=lambda r: addresses[r[0]])
        ordered.append(run.pop(0))
        heads = [r for r in heads if r]
    return ordered


def _written_at(found: _Vars) -> Optional[int]:
    """The address of the layer's first dataset header: headers are laid down in creation order
    (unlike raw data, which HDF5 may place out of order in its small-data block)."""
    try:
        addresses = [h5py.h5o.get_info(ds.id).addr for ds in found.datasets.values()]
    except (AttributeError, RuntimeError):
        return None
    return min(addresses) if addresses else None


def natural_key(group_path: str) -> List[Tuple[str, int]]:
    """`dense_10` after `dense_2`: each component's numbered suffix compares as a number."""
    key = []
    for part in group_path.split("/"):
        match = _PART.fullmatch(part)
        key.append((match.group(1), int(match.group(2))) if match else (part, -1))
    return key
