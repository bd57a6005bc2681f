"""How each layer of a classifier head maps onto the fully-convolutional twin.

A Dense fed by a Flatten becomes a Conv whose kernel covers the window that fed the Flatten
(rows reordered from the flatten order the config implies: channels_last, raw channels-first,
Permute ...); a Dense fed by global pooling or by another such Dense becomes a 1x1 Conv;
per-unit layers after them (BatchNormalization, PReLU) act per channel in the twin. Without
a config the user gives the window (`--flatten`) and the head is read from the layer order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from .config import ConfigLayer, ModelConfig
from .errors import WeightportError
from .roles import guess_class
from .orders import SPATIAL, canonical_order, parse_source_order
from .shapes import ShapeError, TensorInfo, class_rank, flatten_form, flatten_hint, infer_shapes, open_shapes, spatial_rank
from .view import Layer, ModelView, Tensor

__all__ = ["HeadRole", "analyze_head", "target_feeds", "layer_class", "is_conv_kernel", "is_th_kernel", "parse_source_order"]

PASS_THROUGH = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
    "ThresholdedReLU", "ActivityRegularization", "Masking",
}
PER_UNIT = {"BatchNormalization", "PReLU", "LayerNormalization"}
_GLOBAL_POOLING = re.compile(r"Global(Average|Max)Pooling([123])D")


@dataclass(frozen=True)
class HeadRole:
    """What a source layer becomes in the twin."""

    kind: str  # "window": Dense after Flatten; "1x1": Dense after pooling/Dense; "per-unit"
    rank: int  # spatial rank of the twin's Conv (1, 2 or 3)
    reason: str  # for people: "after Flatten of 7x7x512 (order hwc)"
    window: Tuple[int, ...] = ()
    channels: int = 0
    order: str = ""
    data_format: str = "channels_last"
    folded: Tuple[str, ...] = ()  # Flatten/Permute/Reshape layers whose effect the kernel now holds
    pooling: Optional[str] = None  # the global pooling a 1x1 head follows


def layer_class(layer: Layer) -> Optional[str]:
    """The layer's class from the file or config, else a guess from its tensors."""
    return layer.class_name or guess_class([t.role for t in layer.weights], [t.shape for t in layer.weights])


def is_conv_kernel(layer: Layer, tensor: Tensor) -> bool:
    """The kernel of a convolution (rank >= 3), the tensor flips and `th` layouts concern."""
    return tensor.role in (None, "kernel") and len(tensor.shape) >= 3 and (layer_class(layer) or "").startswith("Conv")


def is_th_kernel(layer: Layer, tensor: Tensor) -> bool:
    """A Keras 1 `dim_ordering: th` convolution kernel, stored (out, in, *spatial)."""
    return is_conv_kernel(layer, tensor) and (layer.config or {}).get("dim_ordering") == "th"


def analyze_head(view: ModelView, flatten: Optional[Sequence[int]] = None, source_order: Optional[str] = None,
                 required: bool = True) -> Dict[str, HeadRole]:
    """Roles of the source layers that change in the twin (others are copied as they are);
    `required`: a model with no head is refused (into a `--target`, it is a plain copy)."""
    if view.config is not None:
        roles = _from_config(view, view.config, flatten, source_order)
    elif flatten:
        roles = _from_order(view, tuple(flatten), source_order)
    else:
        raise WeightportError(view.path, "weights-only file with no model config: the window that fed the first Dense is unknown",
                              f"{flatten_hint(_view_rank(view))}, or --config model.json")
    if required and not any(role.kind in ("window", "1x1") for role in roles.values()):
        raise _nothing_to_convert(view)
    return roles


def target_feeds(view: ModelView, flatten: Optional[Sequence[int]] = None) -> Dict[str, HeadRole]:
    """What feeds each Dense of a target that a PyTorch source fills (its file records no graph,
    so the window a Linear sees is the target's): from the target's config, or the Dense layers'
    order with `--flatten`; without either, a Dense not fed by an earlier one is 'unknown'."""
    if view.config is not None or flatten:
        return analyze_head(view, flatten, required=False)
    roles: Dict[str, HeadRole] = {}
    units: List[int] = []
    for layer in view.layers:
        shape = layer.weights[0].shape if layer.weights else ()
        if layer_class(layer) == "Dense" and len(shape) == 2:
            known = shape[0] in units
            roles[layer.name] = HeadRole("1x1" if known else "unknown", 1, f"after a Dense with {shape[0]} units" if known else "input unknown (no config)")
            units.append(shape[1])
    return roles


def _nothing_to_convert(view: ModelView) -> WeightportError:
    """The refusal of a model with no head to convert, naming the layer that blocks one where
    a Flatten or a global pooling does reach a Dense, but through a layer no twin can carry."""
    blocked = _blocked_head(view.config) if view.config is not None else None
    if blocked is None:
        return WeightportError(view.path, "nothing to convert: no Dense layer after a Flatten or a global pooling",
                               "weightport turns classifier heads into convolutions; this model has none")
    dense, blocker, start = blocked
    return WeightportError(view.path, f"nothing to convert: {blocker.class_name} '{blocker.name}' stands between {start.class_name} '{start.name}' "
                                      f"and Dense '{dense.name}', and no convolutional twin carries a window through a {blocker.class_name}",
                           "weightport converts a Dense fed by a Flatten or a global pooling, through Dropout, Activation, BatchNormalization and the like")


def _blocked_head(config: ModelConfig) -> Optional[Tuple[ConfigLayer, ConfigLayer, ConfigLayer]]:
    """(Dense, the layer before it that no twin carries, a Flatten or global pooling behind
    that layer) for the first Dense so blocked; None when no Flatten or pooling is behind any."""
    for dense in (spec for spec in config.layers if spec.class_name == "Dense" and spec.inbound):
        blocker, seen = config.get(dense.inbound[0]), set()
        while blocker is not None and _carries(blocker) and blocker.name not in seen:
            seen.add(blocker.name)
            blocker = config.get(blocker.inbound[0])
        if blocker is None or _starts(blocker):
            continue
        start = _behind(config, blocker)
        if start is not None:
            return dense, blocker, start
    return None


def _behind(config: ModelConfig, layer: ConfigLayer) -> Optional[ConfigLayer]:
    """The nearest Flatten or global pooling among `layer`'s producers (every input, breadth first)."""
    queue, seen = list(layer.inbound), set(layer.inbound)
    while queue:
        spec = config.get(queue.pop(0))
        if spec is None:
            continue
        if _starts(spec):
            return spec
        fresh = [name for name in spec.inbound if name not in seen]
        seen.update(fresh)
        queue.extend(fresh)
    return None


def _view_rank(view: ModelView) -> Optional[int]:
    """The spatial rank of a model read without a config: its first convolution's, by class."""
    return next((rank for rank in (class_rank(layer_class(layer)) for layer in view.layers) if rank is not None), None)


# --- with a config: follow the graph --------------------------------------------------------

def _from_config(view: ModelView, config: ModelConfig, flatten: Optional[Sequence[int]], source_order: Optional[str]) -> Dict[str, HeadRole]:
    shapes = infer_shapes(config, view.path)
    vectors: Dict[str, Optional[HeadRole]] = {}  # layer -> what its 1-D output is, memoised

    def vector(name: str) -> Optional[HeadRole]:
        """What the rank-1 output of `name` is: flattened window, pooled or Dense units. Found
        without recursion, so a chain of thousands of layers cannot exhaust the stack: back along
        the first producers to the layer that starts the vector, then forward again."""
        chain: List[ConfigLayer] = []
        seen: Set[str] = set()
        while name not in vectors:
            spec = config.get(name)
            if spec is None or not _carries(spec):
                vectors[name] = _start(spec, shapes, config, view.path, flatten, source_order)
                break
            _refuse_cycle(spec, seen, view.path)
            chain.append(spec)
            name = spec.inbound[0]
        feed = vectors[name]
        for spec in reversed(chain):
            feed = vectors[spec.name] = _carried(spec, feed)
        return feed

    roles: Dict[str, HeadRole] = {}
    for layer in view.layers:
        spec = config.get(layer.name)
        if spec is None or not spec.inbound:
            continue
        feed = vector(spec.inbound[0])
        if feed is None:
            continue
        if spec.class_name == "Dense":
            roles[layer.name] = feed if feed.kind == "window" else HeadRole("1x1", feed.rank, feed.reason, data_format=feed.data_format, pooling=feed.pooling)
            _check_window(view.path, layer, roles[layer.name])
        elif spec.class_name in PER_UNIT:
            if feed.kind == "window":
                raise WeightportError(view.path, f"{spec.class_name} '{layer.name}' acts on each flattened feature; no convolutional twin computes that",
                                      "move it after the first Dense, or --skip it")
            roles[layer.name] = HeadRole("per-unit", feed.rank, feed.reason, data_format=feed.data_format)
    return roles


def _carries(spec: ConfigLayer) -> bool:
    """Whether the layer's vector follows from its first producer's (a Dense, a pass-through or
    per-unit layer) rather than starting one (a Flatten, a global pooling) or ending it."""
    return bool(spec.inbound) and not _starts(spec) and (spec.class_name == "Dense" or spec.class_name in PASS_THROUGH or spec.class_name in PER_UNIT)


def _starts(spec: ConfigLayer) -> bool:
    target_shape = spec.config.get("target_shape")
    pooled = _GLOBAL_POOLING.fullmatch(spec.class_name)
    return bool(pooled and not spec.config.get("keepdims", False)) or spec.class_name == "Flatten" or (
        spec.class_name == "Reshape" and isinstance(target_shape, list) and len(target_shape) == 1)


def _start(spec: Optional[ConfigLayer], shapes, config: ModelConfig, source: str,
           flatten: Optional[Sequence[int]], source_order: Optional[str]) -> Optional[HeadRole]:
    """The vector a layer starts: a global pooling's or a Flatten's (None for any other layer)."""
    if spec is None or not _starts(spec):
        return None
    pooled = _GLOBAL_POOLING.fullmatch(spec.class_name)
    if pooled:
        return HeadRole("1x1", int(pooled.group(2)), f"after {spec.class_name} '{spec.name}'",
                        data_format=spec.data_format or "channels_last", pooling=spec.name)
    return _window(spec, shapes, config, source, flatten, source_order)


def _carried(spec: ConfigLayer, feed: Optional[HeadRole]) -> Optional[HeadRole]:
    """The vector out of a layer that `_carries` its producer's `feed`."""
    if spec.class_name == "Dense" and feed is not None:
        return HeadRole("1x1", feed.rank, f"after Dense '{spec.name}'", data_format=feed.data_format)
    return feed


def _refuse_cycle(spec: ConfigLayer, seen: Set[str], source: str) -> None:
    """A layer met again while walking back through its producers feeds itself: the walk would never end."""
    if spec.name in seen:
        raise WeightportError(source, f"layer '{spec.name}' feeds itself in the model config (a cycle)", "the config is damaged; save the model again")
    seen.add(spec.name)


def _window(flat: ConfigLayer, shapes, config: ModelConfig, source: str, flatten: Optional[Sequence[int]], source_order: Optional[str]) -> Optional[HeadRole]:
    """The window a Flatten (or a Reshape to 1-D) sees, and the order it lists it in."""
    chain: List[ConfigLayer] = []
    seen: Set[str] = set()
    anchor = config.get(flat.inbound[0]) if flat.inbound else None
    while anchor is not None and (anchor.class_name in PASS_THROUGH or anchor.class_name in ("Permute", "Reshape")):
        _refuse_cycle(anchor, seen, source)
        chain.append(anchor)
        anchor = config.get(anchor.inbound[0]) if anchor.inbound else None
    if anchor is None:
        return None
    info = _inferred(anchor, shapes, config, flat, flatten, source)
    shape = info.shape if info is not None else tuple(flatten)  # --flatten where the config's classes stop inference
    rank = len(shape) - 1
    if rank not in SPATIAL:
        return None
    if info is not None:
        first = _channels_first(info, open_shapes(config, source, [anchor.name]).output(anchor.name))
    else:
        first = anchor.data_format == "channels_first"
    spatial, channels = (shape[1:], shape[0]) if first and info is not None else (shape[:-1], shape[-1])
    order = ("c" + SPATIAL[rank]) if first else canonical_order(rank)
    reshaped = None  # a Reshape keeps the row-major order, so Flatten after it lists the window as before
    for layer in reversed(chain):
        if layer.class_name == "Reshape":
            reshaped = layer
        elif layer.class_name == "Permute":
            _refuse_after_reshape(reshaped, layer, source, rank)
            order = _apply(layer, order, source)
    if flat.class_name == "Flatten" and flat.config.get("data_format") == "channels_first":
        _refuse_after_reshape(reshaped, flat, source, rank)
        order = order[1:] + order[0]
    if flatten:
        _agree(flatten, spatial, channels, flat, source)
        spatial, channels = tuple(flatten[:-1]), flatten[-1]
    elif not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (*spatial, channels)):
        raise WeightportError(source, f"the config does not fix the shape {shape} that {flat.class_name} '{flat.name}' flattens", flatten_hint(rank))
    assumed = f"; shapes assumed through {', '.join(info.assumed)}" if info is not None and info.assumed else ""
    assumed += "; window given by --flatten" if info is None else ""
    order = parse_source_order(source_order, rank) or order
    folded = tuple(l.name for l in chain if l.class_name in ("Permute", "Reshape")) + (flat.name,)
    return HeadRole("window", rank, f"after {flat.class_name} '{flat.name}' of {'x'.join(map(str, spatial))}x{channels} (order {order}){assumed}",
                    tuple(int(n) for n in spatial), int(channels), order, "channels_first" if first else "channels_last", folded)


def _inferred(anchor: ConfigLayer, shapes, config: ModelConfig, flat: ConfigLayer, flatten: Optional[Sequence[int]], source: str):
    """The shape inference gives the layer before the Flatten; None where a class it cannot
    follow (a custom layer, a TFOpLambda) stops it and `--flatten` gives the window instead, in
    the rank the layers before the Flatten have."""
    try:
        return shapes.output(anchor.name)
    except ShapeError:
        if not flatten:
            raise
    rank = spatial_rank(config, anchor.name)
    if rank is not None and len(flatten) - 1 != rank:
        raise WeightportError(source, f"--flatten {','.join(map(str, flatten))} is {len(flatten) - 1}-D, but the layers before "
                                      f"{flat.class_name} '{flat.name}' are {rank}-D", flatten_hint(rank))
    return None


def _agree(flatten: Sequence[int], spatial: Sequence, channels, flat: ConfigLayer, source: str) -> None:
    """`--flatten` where inference works must say what it says (an axis the config leaves open, None, is free)."""
    inferred = (*spatial, channels)
    if len(flatten) != len(inferred) or any(n is not None and n != given for n, given in zip(inferred, flatten)):
        shown = ",".join("?" if n is None else str(n) for n in inferred)
        raise WeightportError(source, f"--flatten {','.join(map(str, flatten))} disagrees with the shape {shown} the config gives before "
                                      f"{flat.class_name} '{flat.name}'", f"drop --flatten, or give --flatten {shown}")


def _channels_first(info: TensorInfo, grown: TensorInfo) -> bool:
    """The layout of the Conv that covers the window: its producer's, unless the producer's
    channel axis grows with the input (`grown` has None there) while the axis at the other end
    does not, as after a channels_first pooling of a channels_last convolution's output. The
    twin then reads the same window the other way round, so its Conv slides over every axis
    that grows and is right at any input size, not only at the training size."""
    first = info.layout == "channels_first"
    channel, other = (0, -1) if first else (-1, 0)
    if grown.shape[channel] is None and grown.shape[other] is not None and info.shape[channel] is not None:
        return not first
    return first


def _refuse_after_reshape(reshaped: Optional[ConfigLayer], layer: ConfigLayer, source: str, rank: int) -> None:
    """Axes moved after a Reshape are the reshaped ones, not the window's: no order says that."""
    if reshaped is not None:
        raise WeightportError(source, f"{layer.class_name} '{layer.name}' moves the axes of Reshape '{reshaped.name}', not the window's",
                              f"give --flatten {flatten_form(rank)} and --source-order for the window the Dense sees")


def _apply(layer: ConfigLayer, order: str, source: str) -> str:
    """The physical axis order after a Permute."""
    dims = layer.config.get("dims")
    if not isinstance(dims, list) or sorted(dims) != list(range(1, len(order) + 1)):
        raise WeightportError(source, f"Permute '{layer.name}' has dims {dims!r}, not a permutation of the {len(order)} axes before the Flatten",
                              f"the config is damaged; give --flatten {flatten_form(len(order) - 1)} and --source-order")
    return "".join(order[d - 1] for d in dims)


def _check_window(source: str, layer: Layer, role: HeadRole) -> None:
    if role.kind != "window" or not layer.weights:
        return
    rows = layer.weights[0].shape[0]
    expected = math.prod(role.window) * role.channels
    if rows != expected:
        raise WeightportError(source, f"Dense '{layer.name}' has {rows} inputs but the window {'x'.join(map(str, role.window))}x{role.channels} holds {expected}",
                              f"give --flatten {flatten_form(role.rank)} with the shape that fed the Flatten")


# --- without a config: read the head from the layer order ------------------------------------

def _from_order(view: ModelView, flatten: Tuple[int, ...], source_order: Optional[str]) -> Dict[str, HeadRole]:
    rank = len(flatten) - 1
    if rank not in SPATIAL or any(n <= 0 for n in flatten):
        raise WeightportError(view.path, f"--flatten {','.join(map(str, flatten))} is not a window", "give L,C or H,W,C or D,H,W,C")
    order = parse_source_order(source_order, rank) or canonical_order(rank)
    window = HeadRole("window", rank, f"after the Flatten of {'x'.join(map(str, flatten))} given by --flatten (order {order})",
                      flatten[:-1], flatten[-1], order)
    size = int(np.prod(flatten, dtype=np.int64))
    roles: Dict[str, HeadRole] = {}
    units: List[int] = []  # output sizes of the Dense layers converted so far
    for layer in view.layers:
        cls, first = layer_class(layer), layer.weights[0].shape
        if cls == "Dense" and len(first) == 2:
            if first[0] in units:
                roles[layer.name] = HeadRole("1x1", rank, f"after a Dense with {first[0]} units")
            elif first[0] == size:
                roles[layer.name] = window
            elif units:
                raise WeightportError(view.path, f"Dense '{layer.name}' has {first[0]} inputs: neither the window ({size}) nor the units of an earlier Dense ({units})",
                                      "give --config so weightport can follow the graph")
            else:
                _check_window(view.path, layer, window)
            units.append(first[1])
        elif cls in PER_UNIT and layer.weights[0].size in units:
            roles[layer.name] = HeadRole("per-unit", rank, f"after a Dense with {layer.weights[0].size} units")
    return roles
