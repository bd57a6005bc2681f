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
from typing import Any, Collection, Dict, List, NamedTuple, Optional, Tuple, Union

import h5py

from . import budgets
from .config import ModelConfig, to_snake_case
from .errors import WeightportError
from .hdf5 import HDF5Storage, Image, member, members, str_attr, tensor_storage, view_facts
from .view import Layer, ModelView, Tensor
from .wrappers import arrange, owner_at, roles_at, wrapped_class

__all__ = ["is_keras3", "read_keras3", "natural_key", "KNOWN_CLASSES"]

# Layer classes whose snake-case group names are recognised in a file without a config.
KNOWN_CLASSES = (
    "Dense Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose DepthwiseConv1D "
    "DepthwiseConv2D SeparableConv1D SeparableConv2D BatchNormalization LayerNormalization "
    "GroupNormalization UnitNormalization PReLU Embedding LSTM GRU SimpleRNN Bidirectional "
    "TimeDistributed MultiHeadAttention EinsumDense ConvLSTM1D ConvLSTM2D ConvLSTM3D LocallyConnected1D "
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


def read_keras3(f: h5py.File, path: Union[str, Path], image: Image, config: Optional[ModelConfig] = None,
                layout: str = "keras3-weights-h5", keras_version: Optional[str] = None) -> ModelView:
    """Build the view of a `.weights.h5` file (or the weights member of a `.keras` archive), `f` opened as `image`."""
    found = dict(_walk(f, path, image, addresses=config is None))
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
        **view_facts(f, image),
    )


class _Dataset(NamedTuple):
    """A dataset of a `vars` group as the walk found it: its path, its checked storage, and (when
    asked for) where its header lies in the file."""

    path: str
    storage: HDF5Storage
    address: Optional[int]


class _Vars(NamedTuple):
    """A layer's `vars` group and its datasets by name, each opened once, checked and closed
    again as the walk meets it: HDF5 holds ~17 KiB for each open dataset, 10 MiB of peak memory
    for DenseNet121's 606 kept open until the layers are made."""

    group: h5py.Group
    datasets: Dict[str, _Dataset]


def _walk(root: h5py.File, path: Union[str, Path], image: Image, addresses: bool = False) -> List[Tuple[str, _Vars]]:
    """(group path, vars) for every group whose `vars` holds datasets, each dataset checked
    and made a storage (`tensor_storage`) (with its header's address when `addresses`: the order
    of a file without a config). Iterative, and each group is entered once, so a damaged file
    whose groups nest thousands deep or link back to an ancestor cannot make it recurse without
    end; a link into another file is refused (`member`)."""
    found: List[Tuple[str, _Vars]] = []
    seen = {root.id}
    pending = [(root, 0)]
    while pending:
        group, depth = pending.pop()
        budgets.check_nesting(depth, group, path)
        for key, child in members(group, path, skip=_ROOT_SKIP if group is root else ()):
            if not isinstance(key, str):  # h5py gives the bytes of a name that is not UTF-8
                raise WeightportError(path, f"a group in {group.name!r:.60} has a name that is not text ({key[:40]!r})", "the file is damaged; save the weights again")
            if not isinstance(child, h5py.Group) or child.id in seen:
                continue
            seen.add(child.id)
            if key != "vars":
                pending.append((child, depth + 1))
                continue
            datasets = {name: _found(value, root, path, image, addresses) for name, value in members(child, path) if isinstance(value, h5py.Dataset)}
            if datasets:
                found.append((group.name.lstrip("/"), _Vars(child, datasets)))
    return found


def _found(dataset: h5py.Dataset, root: h5py.File, path: Union[str, Path], image: Image, address: bool) -> _Dataset:
    """A dataset the walk met, checked and kept as its storage; the dataset itself closes."""
    storage = tensor_storage(dataset, root, path, image)
    return _Dataset(storage.path, storage, _header_address(dataset) if address else None)


def _header_address(dataset: h5py.Dataset) -> Optional[int]:
    """Where its header lies in the file (None where HDF5 cannot say)."""
    try:
        return h5py.h5o.get_info(dataset.id).addr
    except (AttributeError, RuntimeError):
        return None


def _tensors(found: _Vars, path: Union[str, Path], roles_of, relative: str) -> List[Tensor]:
    """The numbered tensors of one `vars` group, `relative` being where it sits below its layer."""
    vars_group = found.group
    keys = budgets.vars_keys(list(found.datasets), vars_group.name, path)
    roles = roles_of(relative, len(keys))
    prefix = f"{relative}/" if relative else ""
    return [Tensor(f"{prefix}vars/{key}" if relative else key, role, found.datasets[key].path, found.datasets[key].storage, f"{prefix}vars/{key}")
            for key, role in zip(keys, roles)]


def _class_from_path(group_path: str) -> Optional[str]:
    last = group_path.rsplit("/", 1)[-1]
    return _CLASS_BY_SNAKE.get(_NUMBERED.sub("", last))


def _make_layer(group_path: str, groups: Dict[str, _Vars], path: Union[str, Path], class_name: Optional[str],
                name: Optional[str], spec_config: Optional[dict] = None, **extra) -> Layer:
    """One layer from its `vars` groups (`groups`: path below the layer -> vars; "" its own):
    wrappers and recurrent layers keep their tensors in sub-objects, listed in Keras's order."""
    relatives, known = arrange(class_name, spec_config, list(groups))

    def roles_of(relative: str, count: int) -> List[Optional[str]]:
        return roles_at(owner_at(class_name, spec_config, relative), count)

    return Layer(
        name=name or _stored_name(group_path, groups, path),
        class_name=class_name,
        weights=[t for relative in relatives for t in _tensors(groups[relative], path, roles_of, relative)],
        group=groups[""].group.name if relatives == [""] else "/" + group_path,
        config=spec_config,
        wrapped=wrapped_class(class_name, spec_config),
        order_known=known,
        **extra,
    )


def _stored_name(group_path: str, groups: Dict[str, _Vars], path: Union[str, Path]) -> str:
    """The layer's name as its `vars` group records it (there even when empty: a wrapper's, looked
    up then), else its group's path; asked only without a config, which names every layer."""
    own = groups[""].group if "" in groups else member(next(iter(groups.values())).group.file, f"/{group_path}/vars", path)
    return (str_attr(own, "name", path) if isinstance(own, h5py.Group) else None) or group_path


def _owner(group_path: str, owners: Collection[str]) -> Optional[str]:
    """The longest of `owners` (a set: each of hundreds of groups asks) that is `group_path` or
    holds it, found among the path's own prefixes, longest first."""
    parts = group_path.split("/")
    return next((prefix for prefix in ("/".join(parts[:k]) for k in range(len(parts), 0, -1)) if prefix in owners), None)


def _by_layer(found: Dict[str, _Vars], owners: Collection[str]) -> Dict[str, Dict[str, _Vars]]:
    """Found `vars` groups per layer group: {layer group: {path below it: vars}}."""
    layers: Dict[str, Dict[str, _Vars]] = {}
    for group_path, found_vars in found.items():
        owner = _owner(group_path, owners)
        if owner is not None:
            layers.setdefault(owner, {})[group_path[len(owner):].lstrip("/")] = found_vars
    return layers


def _in_config_order(found: Dict[str, _Vars], config: ModelConfig, path: Union[str, Path]) -> List[Layer]:
    owners = {spec.k3_path for spec in config.layers}
    owned = _by_layer(found, owners)
    unowned = sorted(p for p in found if _owner(p, owners) is None)
    if unowned:
        raise WeightportError(path, f"the config does not describe this file: no config layer for group(s) {', '.join(unowned[:5])}",
                              "give the config of the model that wrote these weights")
    layers: List[Layer] = []
    for spec in config.layers:
        groups = owned.get(spec.k3_path)
        if groups is not None:
            layers.append(_make_layer(spec.k3_path, groups, path, spec.class_name, spec.name, spec.config,
                                      container=spec.container, data_format=spec.data_format, inbound=list(spec.inbound)))
    return layers


def _layer_group(group_path: str) -> str:
    """Without a config, a layer's group is the deepest `layers/<name>` on the path; anything
    below it is a sub-object of that layer (`layers/bidirectional/forward_layer/cell`)."""
    parts = group_path.split("/")
    starts = [i for i in range(1, len(parts)) if parts[i - 1] == "layers"]
    return "/".join(parts[: starts[-1] + 1]) if starts else group_path


def _in_file_order(found: Dict[str, _Vars], path: Union[str, Path]) -> Tuple[List[Layer], str, str]:
    layers = _by_layer(found, {_layer_group(p) for p in found})
    addresses = {p: _written_at(groups) for p, groups in layers.items()}
    if all(a is not None for a in addresses.values()):
        ordered, order, note = _merge_by_address(layers, addresses), "write-order", _ORDER_NOTE
    else:
        ordered, order, note = sorted(layers, key=natural_key), "path", _ORDER_NOTE_NO_OFFSET
    return [_make_layer(p, layers[p], path, _class_from_path(p), None) for p in ordered], order, note


def _merge_by_address(found: Dict[str, Any], addresses: Dict[str, int]) -> List[str]:
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


def _written_at(groups: Dict[str, _Vars]) -> Optional[int]:
    """The address of the layer's first dataset header: headers are laid down in creation order
    (unlike raw data, which HDF5 may place out of order in its small-data block)."""
    addresses = [ds.address for found in groups.values() for ds in found.datasets.values()]
    return None if not addresses or None in addresses else min(addresses)


def natural_key(group_path: str) -> List[Tuple[str, int]]:
    """`dense_10` after `dense_2`: each component's numbered suffix compares as a number."""
    key = []
    for part in group_path.split("/"):
        match = _PART.fullmatch(part)
        key.append((match.group(1), int(match.group(2))) if match else (part, -1))
    return key
