"""Static shape inference over a parsed model config, without TensorFlow or Keras.

A classifier head's fully-convolutional twin replaces `Flatten -> Dense` with a Conv whose
kernel covers exactly the feature-map window that fed the Flatten, so weightport needs the
shape (and the channel layout) of the tensor reaching the Flatten. Weight files do not store
activations, and building the model would need Keras and the model's own code; this module
instead replays Keras's shape arithmetic on the config, layer by layer, for Keras 1, 2 and 3
config key names. Only the layers upstream of the one asked for are computed, so an
unsupported layer elsewhere in the graph does not matter. Nothing in the config is executed:
a Lambda without a literal `output_shape` is assumed to keep its input's shape, and every
shape downstream of such a guess records it in `TensorInfo.assumed`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .config import ConfigLayer, ModelConfig
from .errors import WeightportError

__all__ = ["TensorInfo", "ShapeError", "Shapes", "infer_shapes", "class_rank", "spatial_rank", "flatten_form", "flatten_hint",
           "free_input_axes", "open_shapes"]

Dim = Optional[int]
Shape = Tuple[Dim, ...]
CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
_FORMS = {1: "L,C", 2: "H,W,C", 3: "D,H,W,C"}  # --flatten's window by spatial rank
_RANKED = re.compile(r"([123])D(?:Transpose)?$")  # Conv1D, MaxPooling2D, Conv3DTranspose ...


@dataclass(frozen=True)
class TensorInfo:
    """A layer's output: shape without the batch axis (None = unknown), its channel layout
    (None when not a spatial tensor or not known, e.g. a model input), and the layers whose
    output shape was assumed rather than known on the way here."""

    shape: tuple
    layout: Optional[str]
    assumed: tuple = ()


def class_rank(class_name: Optional[str]) -> Optional[int]:
    """The spatial rank a layer class names (Conv1D -> 1, MaxPooling2D -> 2), None if none."""
    match = _RANKED.search(class_name or "")
    return int(match.group(1)) if match else None


def spatial_rank(config: ModelConfig, name: str) -> Optional[int]:
    """The spatial rank of the tensors at layer `name`: what the nearest layer at or before it
    says by its class, else the model input's (batch and channels aside); None if neither says."""
    seen = set()
    layer = config.get(name)
    while layer is not None and layer.name not in seen:
        seen.add(layer.name)
        rank = class_rank(layer.class_name)
        if rank is not None:
            return rank
        layer = config.get(layer.inbound[0]) if layer.inbound else None
    axes = len(config.input_shape) - 2 if config.input_shape else 0
    return axes if axes in _FORMS else None


def flatten_form(rank: Optional[int]) -> str:
    """`--flatten`'s form in a spatial rank: L,C (1-D), H,W,C (2-D), D,H,W,C (3-D)."""
    return _FORMS.get(rank, "L,C, H,W,C or D,H,W,C")


def flatten_hint(rank: Optional[int]) -> str:
    """The hint that asks for the window, in the model's rank (for a global-pooling head 1,C / 1,1,C / 1,1,1,C)."""
    pooled = ",".join(["1"] * rank + ["C"]) if rank in _FORMS else "1,1,C"
    return f"give --flatten {flatten_form(rank)} (the shape before the Flatten; for a global-pooling head --flatten {pooled}, C the pooled channels)"


class ShapeError(WeightportError):
    """A layer whose output shape cannot be inferred from the config."""


class _Bad(ValueError):
    """Raised by the per-class functions; `Shapes` turns it into a ShapeError naming the layer."""


LayerFn = Callable[[ConfigLayer, List[TensorInfo]], TensorInfo]

# ---------------------------------------------------------------------------------------------
# Config values under their Keras 3/2 names first, then their Keras 1 names.

_FILTERS = ("filters", "nb_filter")
_STRIDES = ("strides", "subsample", "subsample_length", "stride")
_PADDING = ("padding", "border_mode")
_DILATION = ("dilation_rate", "atrous_rate")
_POOL = ("pool_size", "pool_length")
_UNITS = ("units", "output_dim")
_KERAS1_KERNEL = {2: ("nb_row", "nb_col"), 3: ("kernel_dim1", "kernel_dim2", "kernel_dim3")}
_KERAS1_PAD_KEYS = {1: ("left_pad", "right_pad"), 2: ("top_pad", "bottom_pad", "left_pad", "right_pad")}


def _get(cfg: Dict[str, Any], keys: Sequence[str], default: Any = None) -> Any:
    """The first of `keys` set (not None) in the config, else `default`."""
    return next((cfg[k] for k in keys if cfg.get(k) is not None), default)


def _need(cfg: Dict[str, Any], keys: Sequence[str]) -> int:
    """A required integer setting (`filters`/`nb_filter`, `units`/`output_dim`)."""
    value = _get(cfg, keys)
    if value is None:
        raise KeyError(keys[0])
    return int(value)


def _ints(value: Any, rank: int, what: str, minimum: Optional[int] = None) -> Tuple[int, ...]:
    """An int or a list of `rank` ints (Keras stores both) as a tuple of `rank` ints, each at
    least `minimum` when given (a stride or window of 0 is no window)."""
    values = [value] * rank if isinstance(value, int) else list(value)
    if len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _Bad(f"{what} {value!r} is not {rank} integer(s)")
    if minimum is not None and any(v < minimum for v in values):
        raise _Bad(f"{what} {value!r} must be at least {minimum}")
    return tuple(values)


def _kernel(cfg: Dict[str, Any], rank: int) -> Tuple[int, ...]:
    value = _get(cfg, ("kernel_size", "filter_length"))
    if value is None:
        value = [cfg[k] for k in _KERAS1_KERNEL.get(rank, ("kernel_size",))]
    return _ints(value, rank, "kernel size", minimum=1)


def _pairs(value: Any, rank: int) -> List[Tuple[int, int]]:
    """(before, after) per spatial axis from any ZeroPadding/Cropping amount Keras has stored:
    an int, `rank` ints (symmetric), `2*rank` ints, `rank` pairs, or a Keras 1 `*_pad` dict."""
    if isinstance(value, dict):
        value = [value.get(k, 0) for k in _KERAS1_PAD_KEYS.get(rank, ())]
    if isinstance(value, int):
        return [(value, value)] * rank
    flat = list(value)
    if len(flat) == rank and all(isinstance(p, list) and len(p) == 2 for p in flat):
        return [(int(a), int(b)) for a, b in flat]
    if len(flat) == 2 * rank and all(isinstance(v, int) for v in flat):
        return list(zip(flat[::2], flat[1::2]))
    if len(flat) == rank and all(isinstance(v, int) for v in flat):
        return [(v, v) for v in flat]
    raise _Bad(f"amount {value!r} does not fit {rank} spatial axes")


def _product(shape: Sequence[Dim]) -> Dim:
    return None if any(n is None for n in shape) else math.prod(shape)


def _positive(n: Dim) -> Dim:
    if n is not None and n <= 0:
        raise _Bad(f"the input is too small: an axis would have length {n}")
    return n


# ---------------------------------------------------------------------------------------------
# Data format: the one place that splits a tensor into spatial axes and channels.

def _layout(layer: ConfigLayer) -> str:
    """channels_first/last from `data_format` or Keras 1 `dim_ordering`; unset means last."""
    return layer.data_format or CHANNELS_LAST


def _split(layer: ConfigLayer, shape: Sequence[Dim], rank: int) -> Tuple[Shape, Dim]:
    """(spatial axes, channels) of a tensor with `rank` spatial axes, in the layer's data format."""
    if len(shape) != rank + 1:
        raise _Bad(f"expects {rank} spatial axes plus channels, got shape {tuple(shape)}")
    shape = tuple(shape)
    return (shape[1:], shape[0]) if _layout(layer) == CHANNELS_FIRST else (shape[:-1], shape[-1])


def _join(layer: ConfigLayer, spatial: Sequence[Dim], channels: Dim) -> TensorInfo:
    fmt = _layout(layer)
    shape = (channels, *spatial) if fmt == CHANNELS_FIRST else (*spatial, channels)
    return TensorInfo(tuple(shape), fmt)


# ---------------------------------------------------------------------------------------------
# Sliding windows: convolutions and pooling share this arithmetic (Keras conv_output_length).

def _window_settings(cfg: Dict[str, Any], rank: int, default_stride: Any = 1) -> Tuple[str, Tuple[int, ...], Tuple[int, ...]]:
    """(padding, strides, dilation) of a conv or pooling layer."""
    padding = str(_get(cfg, _PADDING, "valid")).lower()
    strides = _ints(_get(cfg, _STRIDES, default_stride), rank, "strides", minimum=1)
    return padding, strides, _ints(_get(cfg, _DILATION, 1), rank, "dilation_rate", minimum=1)


def _window_length(n: Dim, kernel: int, stride: int, dilation: int, padding: str) -> Dim:
    if n is None:
        return None
    span = dilation * (kernel - 1) + 1
    covered = {"valid": n - span + 1, "same": n, "causal": n, "full": n + span - 1}  # full: Keras 1 Theano
    if padding not in covered:
        raise _Bad(f"unknown padding {padding!r}")
    return _positive((covered[padding] + stride - 1) // stride)


def _slide(layer: ConfigLayer, spatial: Shape, window: Tuple[int, ...], default_stride: Any = 1) -> Shape:
    padding, strides, dilation = _window_settings(layer.config, len(spatial), default_stride)
    return tuple(_window_length(*args, padding) for args in zip(spatial, window, strides, dilation))


def _conv(layer: ConfigLayer, inputs: List[TensorInfo], rank: int, depthwise: bool = False) -> TensorInfo:
    """Conv, SeparableConv, LocallyConnected (and DepthwiseConv: channels x depth_multiplier)."""
    cfg = layer.config
    spatial, channels = _split(layer, inputs[0].shape, rank)
    if depthwise:
        filters = None if channels is None else channels * int(cfg.get("depth_multiplier", 1))
    else:
        filters = _need(cfg, _FILTERS)
    return _join(layer, _slide(layer, spatial, _kernel(cfg, rank)), filters)


def _pool(layer: ConfigLayer, inputs: List[TensorInfo], rank: int) -> TensorInfo:
    spatial, channels = _split(layer, inputs[0].shape, rank)
    window = _ints(_get(layer.config, _POOL, 2), rank, "pool_size", minimum=1)
    return _join(layer, _slide(layer, spatial, window, default_stride=window), channels)


def _transpose_length(n: Dim, kernel: int, stride: int, dilation: int, padding: str, extra: Optional[int]) -> Dim:
    """Keras deconv_output_length; `extra` is output_padding (None = the smallest fit)."""
    if n is None:
        return None
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return (n - 1) * stride + span + (max(span, stride) - span if extra is None else extra)
    if padding == "same":
        return n * stride if extra is None else (n - 1) * stride + span % 2 + extra
    raise _Bad(f"unknown padding {padding!r}")


def _conv_transpose(layer: ConfigLayer, inputs: List[TensorInfo], rank: int) -> TensorInfo:
    cfg = layer.config
    spatial, _ = _split(layer, inputs[0].shape, rank)
    if isinstance(cfg.get("output_shape"), list):  # Keras 1 Deconvolution2D states its whole output shape
        lengths, _ = _split(layer, cfg["output_shape"][1:], rank)
    else:
        padding, strides, dilation = _window_settings(cfg, rank)
        extras = (None,) * rank if cfg.get("output_padding") is None else _ints(cfg["output_padding"], rank, "output_padding")
        columns = zip(spatial, _kernel(cfg, rank), strides, dilation)
        lengths = tuple(_transpose_length(*args, padding, extra) for args, extra in zip(columns, extras))
    return _join(layer, lengths, _need(cfg, _FILTERS))


# ---------------------------------------------------------------------------------------------
# Other spatial layers.

def _pad(layer: ConfigLayer, inputs: List[TensorInfo], rank: int, key: str, sign: int) -> TensorInfo:
    """ZeroPadding (`padding`, sign +1) and Cropping (`cropping`, sign -1)."""
    spatial, channels = _split(layer, inputs[0].shape, rank)
    amounts = _pairs(layer.config.get(key, 1), rank)
    lengths = tuple(None if n is None else _positive(n + sign * (a + b)) for n, (a, b) in zip(spatial, amounts))
    return _join(layer, lengths, channels)


def _upsample(layer: ConfigLayer, inputs: List[TensorInfo], rank: int) -> TensorInfo:
    spatial, channels = _split(layer, inputs[0].shape, rank)
    size = _ints(_get(layer.config, ("size", "length"), 2), rank, "size", minimum=1)
    return _join(layer, tuple(None if n is None else n * k for n, k in zip(spatial, size)), channels)


def _global_pool(layer: ConfigLayer, inputs: List[TensorInfo], rank: int) -> TensorInfo:
    _, channels = _split(layer, inputs[0].shape, rank)
    if layer.config.get("keepdims"):
        return _join(layer, (1,) * rank, channels)
    return TensorInfo((channels,), None)


# ---------------------------------------------------------------------------------------------
# Reshaping, dense and embedding layers.

def _flatten(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    return TensorInfo((_product(inputs[0].shape),), None)


def _reshape(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    target = [int(n) for n in layer.config["target_shape"]]
    total, known = _product(inputs[0].shape), math.prod(n for n in target if n != -1)
    if target.count(-1) > 1:
        raise _Bad(f"target_shape {target} has more than one -1")
    mismatch = total is not None and (total % known != 0 if -1 in target else total != known)
    if mismatch:
        raise _Bad(f"cannot reshape {inputs[0].shape} to {tuple(target)}")
    shape = tuple((None if total is None else total // known) if n == -1 else n for n in target)
    return TensorInfo(shape, None)


def _permute(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    dims, shape = list(layer.config["dims"]), inputs[0].shape
    if sorted(dims) != list(range(1, len(shape) + 1)):
        raise _Bad(f"dims {dims} do not permute the axes of {shape}")
    return TensorInfo(tuple(shape[d - 1] for d in dims), None)


def _repeat_vector(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    if len(inputs[0].shape) != 1:
        raise _Bad(f"expects a vector, got shape {inputs[0].shape}")
    return TensorInfo((int(layer.config["n"]), inputs[0].shape[0]), None)


def _dense(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    x = inputs[0]
    shape = (*x.shape[:-1], _need(layer.config, _UNITS))
    return TensorInfo(shape, x.layout if len(shape) > 1 else None)


def _embedding(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    return TensorInfo((*inputs[0].shape, int(layer.config["output_dim"])), None)


def _same_shape(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    """Activations, dropout, noise, normalisation; also an InputLayer fed by an outer model: the input as it is."""
    return inputs[0]


def _declared_shape(value: Any) -> Optional[Shape]:
    """A literal output shape (ints/None, Keras 3 `__tuple__` unwrapped), else None."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = value.get("config", {}).get("value")
    if not isinstance(value, list) or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value):
        return None
    return tuple(value)


def _lambda(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    """A literal `output_shape` is used; otherwise the shape is assumed kept (the code is never run)."""
    declared, x = _declared_shape(layer.config.get("output_shape")), inputs[0]
    if declared is not None:
        return TensorInfo(declared, x.layout if len(declared) == len(x.shape) else None)
    if len(inputs) != 1:
        raise _Bad("has several inputs and no literal output_shape")
    return TensorInfo(x.shape, x.layout, (layer.name,))


# ---------------------------------------------------------------------------------------------
# Merges.

def _agree(dims: Sequence[Dim]) -> Dim:
    known = {n for n in dims if n is not None}
    if len(known) > 1:
        raise _Bad(f"input shapes disagree on an axis ({sorted(known)})")
    return None if None in dims else known.pop()


def _stack(dims: Sequence[Dim]) -> Dim:
    return None if None in dims else sum(dims)


def _ranks_agree(inputs: List[TensorInfo]) -> int:
    ranks = {len(x.shape) for x in inputs}
    if len(ranks) != 1:
        raise _Bad(f"inputs have different ranks: {[x.shape for x in inputs]}")
    return ranks.pop()


def _elementwise(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    _ranks_agree(inputs)
    return TensorInfo(tuple(_agree(column) for column in zip(*(x.shape for x in inputs))), inputs[0].layout)


def _concatenate(layer: ConfigLayer, inputs: List[TensorInfo]) -> TensorInfo:
    """`axis` counts the batch axis: positive 1.. or negative from the end (default -1)."""
    rank, axis = _ranks_agree(inputs), int(layer.config.get("axis", -1))
    index = axis + rank if axis < 0 else axis - 1
    if not 0 <= index < rank:
        raise _Bad(f"axis {axis} is not a non-batch axis of rank-{rank} inputs")
    columns = zip(*(x.shape for x in inputs))
    shape = [(_stack if i == index else _agree)(column) for i, column in enumerate(columns)]
    return TensorInfo(tuple(shape), inputs[0].layout)


# ---------------------------------------------------------------------------------------------
# Class name -> shape function.

_SAME_SHAPE = (
    "InputLayer", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "BatchNormalization", "LayerNormalization", "Masking",
    "ActivityRegularization",
)
_ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


def _per_rank(ranks: Sequence[int], **kinds: LayerFn) -> Dict[str, LayerFn]:
    """`{'MaxPooling': f}` -> {'MaxPooling1D': f(rank=1), 'MaxPooling2D': f(rank=2), ...}."""
    return {f"{prefix}{r}D": partial(fn, rank=r) for prefix, fn in kinds.items() for r in ranks}


SHAPE_FUNCTIONS: Dict[str, LayerFn] = {
    **_per_rank((1, 2, 3), Conv=_conv, MaxPooling=_pool, AveragePooling=_pool, GlobalMaxPooling=_global_pool,
                GlobalAveragePooling=_global_pool, UpSampling=_upsample, ZeroPadding=partial(_pad, key="padding", sign=1),
                Cropping=partial(_pad, key="cropping", sign=-1)),
    **{f"Conv{r}DTranspose": partial(_conv_transpose, rank=r) for r in (1, 2, 3)},
    **_per_rank((1, 2), SeparableConv=_conv, LocallyConnected=_conv, DepthwiseConv=partial(_conv, depthwise=True)),
    **{name: _same_shape for name in _SAME_SHAPE},
    **{name: _elementwise for name in _ELEMENTWISE},
    "Concatenate": _concatenate,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "RepeatVector": _repeat_vector,
    "Dense": _dense,
    "Embedding": _embedding,
    "Lambda": _lambda,
}


# ---------------------------------------------------------------------------------------------
# The axes a layer must know the size of: its weights (or its code) are sized by them. Every
# other axis may be any size, so an input axis that reaches none of these may be left open.

def _channel_axis(layer: ConfigLayer, x: TensorInfo) -> List[int]:
    return [0 if _layout(layer) == CHANNELS_FIRST else len(x.shape) - 1]


def _last_axis(layer: ConfigLayer, x: TensorInfo) -> List[int]:
    return [len(x.shape) - 1]


def _all_axes(layer: ConfigLayer, x: TensorInfo) -> List[int]:
    return list(range(len(x.shape)))


def _normalised_axes(layer: ConfigLayer, x: TensorInfo) -> List[int]:
    """BatchNormalization/LayerNormalization `axis` (counting the batch axis, or from the end)."""
    axis = layer.config.get("axis", -1)
    return [a - 1 if a > 0 else len(x.shape) + a for a in (axis if isinstance(axis, list) else [axis])]


def _unshared_axes(layer: ConfigLayer, x: TensorInfo) -> List[int]:
    """PReLU: one alpha per position of every axis not in `shared_axes`."""
    shared = layer.config.get("shared_axes") or []
    shared = [shared] if isinstance(shared, int) else shared
    return [i for i in range(len(x.shape)) if i + 1 not in shared]


SIZED_AXES: Dict[str, Callable[[ConfigLayer, TensorInfo], List[int]]] = {
    **{f"{kind}{r}D": _channel_axis for kind in ("Conv", "SeparableConv", "DepthwiseConv") for r in (1, 2, 3)},
    **{f"Conv{r}DTranspose": _channel_axis for r in (1, 2, 3)},
    **{f"LocallyConnected{r}D": _all_axes for r in (1, 2)},
    **{name: _all_axes for name in ("Flatten", "Reshape", "RepeatVector", "Lambda")},  # a Lambda's code is never read
    "Dense": _last_axis,
    "BatchNormalization": _normalised_axes,
    "LayerNormalization": _normalised_axes,
    "PReLU": _unshared_axes,
}


# ---------------------------------------------------------------------------------------------
# The lazy, memoised walk.

def _declared_input(layer: ConfigLayer) -> Optional[Shape]:
    """The input shape a graph's first layer declares (batch axis dropped), under any Keras's keys."""
    cfg = layer.config
    for key in ("batch_input_shape", "batch_shape"):
        if isinstance(cfg.get(key), list):
            return tuple(cfg[key][1:])
    if isinstance(cfg.get("input_shape"), list):
        return tuple(cfg["input_shape"])
    if layer.class_name == "Embedding":  # Keras 1: its input_dim is the vocabulary size
        return (cfg.get("input_length"),)
    if cfg.get("input_dim") is not None:  # Keras 1 Dense(input_dim=), Convolution1D(input_dim=, input_length=)
        return (cfg["input_length"], cfg["input_dim"]) if "input_length" in cfg else (cfg["input_dim"],)
    return None


class Shapes:
    """Output shapes of a config's layers, each computed on first request from its inputs."""

    def __init__(self, config: ModelConfig, source: str, input_shape: Optional[Sequence[Dim]] = None,
                 inputs: Optional[Dict[str, Shape]] = None) -> None:
        self._config, self._source = config, source
        self._roots = [layer.name for layer in config.layers if not layer.inbound]
        self._memo: Dict[str, TensorInfo] = {}
        self._override = None if input_shape is None else self._check_override(input_shape)
        self._inputs = dict(inputs or {})  # root name -> its shape without the batch axis, replacing the declared one

    @property
    def roots(self) -> List[str]:
        """The layers that take the model's inputs."""
        return list(self._roots)

    def input(self, name: str) -> TensorInfo:
        """What layer `name` receives (its first input): the model's input for a root."""
        layer = self._layer(name)
        if not layer.inbound:
            return self._root_input(layer)
        self.output(name)
        return self._memo[layer.inbound[0]]

    def unknown_sizes(self) -> Set[Tuple[str, int, int]]:
        """(layer, input, axis) for every axis a layer computed so far must know and does not."""
        found = set()
        for name in self._memo:
            layer = self._layer(name)
            sized = SIZED_AXES.get(layer.class_name)
            if sized is None:
                continue
            infos = [self._memo[n] for n in layer.inbound] or [self._root_input(layer)]
            for index, info in enumerate(infos):
                found.update((name, index, axis) for axis in sized(layer, info) if 0 <= axis < len(info.shape) and info.shape[axis] is None)
        return found

    def output(self, name: str) -> TensorInfo:
        """The output of layer `name`, computing (once) only the layers upstream of it."""
        memo = self._memo
        pending, expanded = [self._layer(name)], set()
        while pending:  # each layer looked up once, when it is pushed: a walk of thousands of layers is repeated per input axis
            layer = pending[-1]
            missing = [n for n in layer.inbound if n not in memo]
            if not missing:
                if layer.name not in memo:
                    memo[layer.name] = self._compute(layer)
                pending.pop()
            elif layer.name in expanded:
                raise ShapeError(self._source, f"layer '{layer.name}' feeds itself in the model config", "the config is damaged")
            else:
                expanded.add(layer.name)
                pending.extend(self._layer(n) for n in missing)
        return memo[name]

    def _check_override(self, input_shape: Sequence[Dim]) -> Shape:
        shape = tuple(input_shape)
        if len(self._roots) != 1:
            raise ShapeError(self._source, f"an input shape can only be given for a model with one input, this one has {len(self._roots)}", "leave the input shape out")
        if len(shape) < 2 or not all(n is None or (isinstance(n, int) and n > 0) for n in shape):
            raise ShapeError(self._source, f"input shape {list(shape)} is not a batch axis plus positive sizes", "give it like [None, 320, 320, 3]")
        return shape[1:]

    def _layer(self, name: str) -> ConfigLayer:
        layer = self._config.get(name)
        if layer is None:
            raise ShapeError(self._source, f"no layer '{name}' in the model config", "check the layer name")
        return layer

    def _error(self, layer: ConfigLayer, detail: str) -> ShapeError:
        return ShapeError(self._source, f"cannot infer the output shape of layer '{layer.name}' ({layer.class_name}): {detail}",
                          flatten_hint(spatial_rank(self._config, layer.name)))

    def _root_input(self, layer: ConfigLayer) -> TensorInfo:
        shape = self._inputs[layer.name] if layer.name in self._inputs else self._override if self._override is not None else _declared_input(layer)
        if shape is None and self._roots == [layer.name] and self._config.input_shape:
            shape = tuple(self._config.input_shape[1:])
        if shape is None:
            raise self._error(layer, "the config gives no input shape")
        if not all(n is None or (isinstance(n, int) and not isinstance(n, bool) and n > 0) for n in shape):
            raise self._error(layer, f"the input shape {list(shape)} is not a list of positive sizes")
        return TensorInfo(tuple(shape), None)

    def _compute(self, layer: ConfigLayer) -> TensorInfo:
        function = SHAPE_FUNCTIONS.get(layer.class_name)
        if function is None:
            raise self._error(layer, "weightport does not know this layer class")
        inputs = [self._memo[n] for n in layer.inbound] or [self._root_input(layer)]
        try:
            info = function(layer, inputs)
        except KeyError as exc:
            raise self._error(layer, f"its config has no {exc}") from None
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # config values of the wrong kind (inf, 0, "16" ...)
            raise self._error(layer, str(exc)) from None
        if not any(x.assumed for x in inputs):  # nearly every layer: nothing assumed upstream, its own output as it is
            return info
        upstream = (name for x in inputs for name in x.assumed)
        return replace(info, assumed=tuple(dict.fromkeys([*upstream, *info.assumed])))


def infer_shapes(config: ModelConfig, source: str, input_shape: Optional[Sequence[Dim]] = None) -> Shapes:
    """Shapes of `config`'s layers; `input_shape` (batch axis included) replaces the model's own."""
    return Shapes(config, source, input_shape)


def _opened(shape: Shape, axes: Sequence[int]) -> Shape:
    return tuple(None if i in axes else n for i, n in enumerate(shape))


def free_input_axes(config: ModelConfig, source: str, names: Optional[Sequence[str]] = None) -> Dict[str, Tuple[int, ...]]:
    """The input axes (per input layer, batch axis not counted) that may take any size: no layer
    up to `names` (every layer when None) sizes its weights or its code by an axis they reach.

    Each input axis is left unknown in turn and followed through the layers, data format by
    data format: a channels_last height that a channels_first pooling takes as its channels is
    still free (pooling has no weights), a width that a later Conv takes as its channels is not.
    Empty when the shapes cannot be inferred (an unknown layer class): nothing is opened.
    Worked out once per config and `names` (`ModelConfig.derived`)."""
    key = ("free_input_axes", None if names is None else tuple(names))
    if key not in config.derived:
        config.derived[key] = _free_input_axes(config, source, [layer.name for layer in config.layers] if names is None else list(names))
    return dict(config.derived[key])


def _free_input_axes(config: ModelConfig, source: str, names: List[str]) -> Dict[str, Tuple[int, ...]]:
    """`free_input_axes` worked out: a walk of the layers as declared, one per input axis opened alone, one with every free axis open."""
    try:
        base = Shapes(config, source)
        for name in names:
            base.output(name)
        declared = {root: base.input(root).shape for root in base.roots}
        known = base.unknown_sizes()
        free = {root: tuple(axis for axis in range(len(shape)) if shape[axis] is not None
                            and not _sizes_unknown(config, source, {root: _opened(shape, [axis])}, names, known))
                for root, shape in declared.items()}
        together = {root: _opened(declared[root], axes) for root, axes in free.items()}
        return {} if _sizes_unknown(config, source, together, names, known) else free
    except (ShapeError, TypeError, ValueError, KeyError, IndexError):  # a damaged config's axis settings: nothing is opened
        return {}


def _sizes_unknown(config: ModelConfig, source: str, inputs: Dict[str, Shape], names: Sequence[str], known: Set[Tuple[str, int, int]]) -> bool:
    """Whether, with these inputs, a layer up to `names` needs a size it no longer knows."""
    shapes = Shapes(config, source, inputs=inputs)
    for name in names:
        shapes.output(name)
    return bool(shapes.unknown_sizes() - known)


def open_shapes(config: ModelConfig, source: str, names: Optional[Sequence[str]] = None,
                free: Optional[Dict[str, Tuple[int, ...]]] = None) -> Shapes:
    """The shapes with every free input axis (`free`, else `free_input_axes`) unknown: an axis
    that is None here grows with the input."""
    free = free_input_axes(config, source, names) if free is None else free
    base = Shapes(config, source)
    return Shapes(config, source, inputs={root: _opened(base.input(root).shape, axes) for root, axes in free.items()})
