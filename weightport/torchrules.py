"""PyTorch's tensor layouts into Keras's: the exact rules, which one a pair takes, and each rule's
check computed the way PyTorch computes the source layer.

PyTorch keeps a convolution's kernel as (out, in, *k), a depthwise one as (C*m, 1, *k) (output
channel c*m + j), a transposed one as (in, out, *k) and a Linear's weight as (out, in); Keras as
(*k, in, out), (*k, C, m), (*k, out, in) and (in, out). Both frameworks compute a
cross-correlation and a transposed convolution as its adjoint: no kernel is flipped. A Linear
after `torch.flatten(x, 1)` of an NCHW tensor sees its window in the order chw; a Keras
channels_last Flatten lists it hwc, and a Conv over the window takes it as (*window, C): the
Linear's input rows are reordered for either.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import checks
from .checks import SAMPLES, checked
from .orders import SPATIAL, canonical_order, parse_source_order
from .precision import Cast
from .rules import RULES, Rule
from .storage import ArrayStorage, Storage, StridedFileStorage
from .statedict import FRAMEWORK
from .view import ModelView

__all__ = ["FRAMEWORK", "DEFAULT_EPSILON", "BLOCKWISE", "is_torch_class", "keras_class", "unit_count", "units_axis", "window_hint", "conv_kinds", "plain_convs", "epsilon_notes", "choose", "conv", "depthwise",
           "conv_transpose", "linear", "linear_window", "conv_columns", "linear_columns", "window_columns", "check_name", "sample_shape", "source_rows", "target_rows", "source_side", "target_side"]

Params = Dict[str, Any]
DEFAULT_EPSILON = 1e-5  # BatchNorm's, when the module was built without eps=
_CLASSES: Dict[str, Optional[str]] = {"Linear": "Dense", "BatchNorm": "BatchNormalization", "Norm": None,
            **{f"Conv{n}d": f"Conv{n}D" for n in (1, 2, 3)}, **{f"ConvTranspose{n}d": f"Conv{n}DTranspose" for n in (1, 2, 3)}}


def is_torch_class(name: Optional[str]) -> bool:
    """A class `statedict` infers for a PyTorch module (`Conv2d`, `Linear`, `BatchNorm`, `Norm` ...)."""
    return name in _CLASSES


def keras_class(torch_class: Optional[str]) -> Optional[str]:
    """The Keras class a PyTorch module pairs as (Conv2d as Conv2D, Linear as Dense); None when
    the state dict does not tell (a norm's weight and bias alone: LayerNorm, GroupNorm ...)."""
    return _CLASSES.get(torch_class or "")


def conv_kinds(keras: Optional[str]) -> Tuple[str, ...]:
    """The classes a plain convolution may also pair with: a PyTorch state dict cannot tell a
    depthwise or transposed conv from a plain one (same names, shapes alike), the target's class decides."""
    match = re.fullmatch(r"Conv([123])D", keras or "")
    return (f"DepthwiseConv{match.group(1)}D", f"Conv{match.group(1)}DTranspose") if match else ()


def plain_convs(keras: Optional[str]) -> Tuple[str, ...]:
    """The plain convolution a depthwise or transposed one may take the place of (`conv_kinds` reversed)."""
    match = re.fullmatch(r"(?:DepthwiseConv([123])D|Conv([123])DTranspose)", keras or "")
    return (f"Conv{match.group(1) or match.group(2)}D",) if match else ()


def epsilon_notes(pairs: Sequence[Tuple[Optional[str], str]], target: Optional[ModelView]) -> List[str]:
    """What the plan says of BatchNorm pairs ((PyTorch class, target layer) of each pair): a state
    dict records no epsilon, so the target's (from its config) is set against PyTorch's default."""
    found: Dict[Optional[float], List[str]] = {}
    for torch_class, name in pairs:
        if torch_class == "BatchNorm":
            spec = target.config.get(name) if target is not None and target.config is not None else None
            epsilon = spec.config.get("epsilon") if spec is not None else None
            found.setdefault(float(epsilon) if isinstance(epsilon, (int, float)) else None, []).append(name)
    notes = []
    for epsilon, names in found.items():
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        if epsilon is None:
            notes.append(f"{listed}: BatchNormalization epsilon not in the target (no config); a state dict does not record it, PyTorch's default is "
                         f"{DEFAULT_EPSILON:g}: build the Keras layers with epsilon={DEFAULT_EPSILON:g} unless the modules set their own")
        elif abs(epsilon - DEFAULT_EPSILON) <= 1e-12:
            notes.append(f"{listed}: BatchNormalization epsilon {epsilon:g}, PyTorch's default (a state dict does not record the modules' own)")
        else:
            notes.append(f"{listed}: BatchNormalization epsilon {epsilon:g} in the target, PyTorch's default is {DEFAULT_EPSILON:g} (a state dict does "
                         f"not record the modules' own): where the modules used the default, outputs differ by that; build the Keras layers with "
                         f"epsilon={DEFAULT_EPSILON:g} to match")
    return notes


# --- the transforms -----------------------------------------------------------------------

def conv(array: np.ndarray, params: Params) -> np.ndarray:
    """(out, in, *k) -> (*k, in, out); also a transposed conv's (in, out, *k) -> (*k, out, in)."""
    spatial = array.ndim - 2
    return np.ascontiguousarray(array.transpose(tuple(range(2, 2 + spatial)) + (1, 0)))


def depthwise(array: np.ndarray, params: Params) -> np.ndarray:
    """(C*m, 1, *k) -> (*k, C, m): output channel c*m + j is Keras's [..., c, j]."""
    spatial, channels = array.ndim - 2, params["channels"]
    grouped = array.reshape((channels, array.shape[0] // channels) + array.shape[2:])
    return np.ascontiguousarray(grouped.transpose(tuple(range(2, 2 + spatial)) + (0, 1)))


conv_transpose = conv  # the same axes move: (in, out, *k) -> (*k, out, in), no flip


def linear(array: np.ndarray, params: Params) -> np.ndarray:
    """(out, in) -> (in, out), reshaped to the target's shape (a 1x1 Conv's (1, 1, in, out))."""
    return np.ascontiguousarray(array.T).reshape(params.get("shape", array.shape[::-1]))


def linear_window(array: np.ndarray, params: Params) -> np.ndarray:
    """(out, N) seeing its window in `order` -> the target's kernel: (N, out) with its rows in
    `target_order` (a Dense after a Flatten), or (*window, C, out) (a Conv over the window)."""
    dims = _dims(params, array.shape[1])
    order, target = params["order"], params.get("target_order", canonical_order(len(params["window"])))
    grid = np.ascontiguousarray(array.T).reshape([dims[a] for a in order] + [array.shape[0]])
    moved = grid.transpose([order.index(a) for a in target] + [len(order)])
    return np.ascontiguousarray(moved).reshape(params.get("shape", (array.shape[1], array.shape[0])))


# Each rule but the depthwise one makes the target from the source's columns, the source seen as
# (its first axis, everything else): target row r is source column columns[r]. The byte mover
# streams them a block of columns at a time (`transfer`), whatever the tensor's size.

def conv_columns(shape: Tuple[int, ...], params: Params) -> np.ndarray:
    """(a, b, *k) -> (*k, b, a): target row (k, j) is source column j*K + k."""
    taps = int(np.prod(shape[2:], dtype=np.int64))
    return (np.arange(taps)[:, None] + np.arange(shape[1])[None, :] * taps).reshape(-1)


def linear_columns(shape: Tuple[int, ...], params: Params) -> np.ndarray:
    """(out, in) -> (in, out): target row i is source column i."""
    return np.arange(shape[1])


def window_columns(shape: Tuple[int, ...], params: Params) -> np.ndarray:
    """(out, N) -> N rows in `target_order`: each the source column of the same window position in `order`."""
    dims = _dims(params, shape[1])
    order, target = params["order"], params.get("target_order", canonical_order(len(params["window"])))
    grid = np.arange(shape[1]).reshape([dims[a] for a in order])
    return grid.transpose([order.index(a) for a in target]).reshape(-1)


def _dims(params: Params, rows: int) -> Dict[str, int]:
    window = params["window"]
    dims = dict(zip(SPATIAL[len(window)], window))
    dims["c"] = rows // int(np.prod(window, dtype=np.int64))
    return dims


# --- which rule ---------------------------------------------------------------------------

def unit_count(torch_class: Optional[str], shapes: Dict[Optional[str], Tuple[int, ...]]) -> Optional[int]:
    """How many output units a module has (`--units` chooses among them): a Linear's or a conv's
    `out` (its weight's first axis), a transposed conv's (its second: (in, out, *k)); None for a
    module with no output units to choose (a norm, a class the state dict does not tell)."""
    kernel = shapes.get("kernel")
    if kernel is None or not re.fullmatch(r"Linear|Conv[123]d|ConvTranspose[123]d", torch_class or ""):
        return None
    return kernel[1] if torch_class.startswith("ConvTranspose") else kernel[0]


def window_hint(layers: Sequence[Any], name: str, inputs: int) -> str:
    """The `--flatten` to give for Linear `name` of `inputs` inputs, worked out as far as the
    state dict allows. chw -> hwc moves rows by the channels alone (position p, channel c: row
    c*P + p -> p*C + c, whatever rows and columns make the P positions), so only C matters for
    a Dense; it is likely the outputs of the module before it (a conv's, a norm's), but a state
    dict cannot show that nothing between changes the channels (a concatenation, a reshape),
    nor that the module registered before it runs before it: offered, never assumed."""
    before = [layer for layer in layers[:next((i for i, l in enumerate(layers) if l.name == name), 0)] if layer.weights]
    last = before[-1] if before else None
    shapes = {t.role: t.shape for t in last.weights} if last is not None else {}
    channels = unit_count(last.class_name, shapes) if last is not None and last.class_name != "Linear" else None
    if channels is None and last is not None and last.class_name in ("BatchNorm", "Norm"):
        channels = next(iter(shapes.values()))[0]
    if not channels or inputs % channels:
        return "--flatten H,W,C (1,1,C after a global pooling)"
    positions = inputs // channels
    if positions == 1:
        return f"--flatten 1,1,{channels} (its {inputs} inputs are the {channels} channels of '{last.name}': a global pooling or a 1x1 window)"
    side = math.isqrt(positions)
    rows, columns = (side, side) if side * side == positions else (1, positions)
    return (f"--flatten {rows},{columns},{channels} if the {channels} channels of '{last.name}' (the module before it) reach it unchanged "
            f"(a Dense after a Flatten needs only the channels: any H,W with H*W = {positions} orders its rows alike)")


def units_axis(torch_class: Optional[str], role: Optional[str], target_class: Optional[str], target_role: Optional[str]) -> Optional[int]:
    """The axis of a PyTorch tensor that holds its module's output units: 0 for a bias and for a
    Linear's or a conv's weight, 1 for a transposed conv's (in, out, *k) (told as `choose` tells
    it); None for a depthwise conv, whose output channel c*m + j reads input channel c: fewer
    outputs would change which inputs the kept ones read, so no subset of them is exact."""
    if role != "kernel" or not (torch_class or "").startswith("Conv"):
        return 0
    return {"depthwise": None, "transpose": 1, "conv": 0}[_conv_kind(torch_class, target_class, target_role)]


def _conv_kind(torch_class: str, target_class: Optional[str], target_role: Optional[str]) -> str:
    """What a PyTorch conv weight is: a state dict cannot tell a depthwise or a transposed conv
    from a plain one, the target's class or role does (or the source's bias, for a transposed one)."""
    if (target_class or "").startswith("DepthwiseConv") or target_role == "depthwise_kernel":
        return "depthwise"
    return "transpose" if (target_class or "").endswith("Transpose") or torch_class.startswith("ConvTranspose") else "conv"


def choose(torch_class: Optional[str], role: Optional[str], have: Tuple[int, ...], target: Tuple[Optional[str], Optional[str], Tuple[int, ...]],
           window: Optional[Tuple[Tuple[int, ...], int, str]], source_order: Optional[str]) -> Optional[Tuple[str, Params]]:
    """The rule that makes the target tensor (its layer's class, its role, its shape `want`) from
    a PyTorch tensor of shape `have`, or None when none is exact. A depthwise or transposed conv
    is told by the target's class or role (a state dict cannot tell), or by the source's class
    where its shapes do. `window`: (spatial window, channels, the target Flatten's order) where
    the target's Dense is fed by a Flatten of a window (None: not, or unknown); `source_order`:
    the order the PyTorch Linear sees its window in (--source-order; default chw, `torch.flatten` of NCHW)."""
    target_class, target_role, want = target
    if role == "kernel" and (torch_class or "").startswith("Conv") and len(have) >= 3:
        return _conv_rule(_conv_kind(torch_class, target_class, target_role), have, want)
    if role == "kernel" and torch_class == "Linear" and len(have) == 2:
        return _linear_rule(have, want, window, source_order)
    return ("copy", {}) if have == want else None


def _conv_rule(kind: str, have: Tuple[int, ...], want: Tuple[int, ...]) -> Optional[Tuple[str, Params]]:
    spatial = have[2:]
    if kind == "depthwise":
        channels = want[-2] if len(want) == len(have) else 0
        fits = have[1] == 1 and channels and have[0] == channels * want[-1] and want == spatial + (channels, want[-1])
        return ("torch-depthwise", {"channels": channels}) if fits else None
    if want == spatial + (have[1], have[0]):
        return ("torch-conv-transpose", {}) if kind == "transpose" else ("torch-conv", {})
    return None


def _linear_rule(have: Tuple[int, ...], want: Tuple[int, ...], window: Optional[Tuple[Tuple[int, ...], int, str]],
                 source_order: Optional[str]) -> Optional[Tuple[str, Params]]:
    out, rows = have
    if len(want) >= 3:  # a Conv: over the window its kernel gives, or 1x1
        spatial, channels = want[:-2], want[-2]
        if want[-1] != out or int(np.prod(spatial, dtype=np.int64)) * channels != rows:
            return None
        if all(n == 1 for n in spatial):
            return "torch-linear", {"shape": list(want)}
        return "torch-linear-to-conv", {"window": list(spatial), "order": _order(source_order, len(spatial)), "shape": list(want)}
    if want != (rows, out):
        return None
    if window is None or all(n == 1 for n in window[0]):
        return "torch-linear", {}
    spatial, channels, target_order = window
    if int(np.prod(spatial, dtype=np.int64)) * channels != rows:
        return None
    order = _order(source_order, len(spatial))
    if order == target_order:
        return "torch-linear", {}
    return "torch-linear-flatten", {"window": list(spatial), "order": order, "target_order": target_order}


def _order(source_order: Optional[str], rank: int) -> str:
    """The order a PyTorch Linear sees its window in: `torch.flatten` of NCHW (chw) unless --source-order says."""
    return parse_source_order(source_order, rank) or "c" + SPATIAL[rank]


# --- the checks: both sides of a layer pair on the same random input ----------------------
# A conv's or a Linear's sides are x (channels last, as the target sees it) laid out as each side
# reads it, times W.T (PyTorch's (out, ...) weight) and K (the output's kernel as rows), which
# verification streams in blocks (`source_rows`, `target_rows`): such weights can be hundreds of
# MB. A depthwise or transposed conv's sides are computed whole (`source_side`, `target_side`).

BLOCKWISE = ("torch-conv", "torch-linear", "torch-linear-flatten", "torch-linear-to-conv")
CHECKS = {
    "torch-conv": "PyTorch correlation (out, in, *k) vs Keras correlation",
    "torch-depthwise": "PyTorch grouped correlation (C*m, 1, *k) vs DepthwiseConv",
    "torch-conv-transpose": "PyTorch transposed conv (in, out, *k) vs Conv*DTranspose, one input pixel",
    "torch-linear": "PyTorch Linear x @ W.T vs Dense",
    "torch-linear-flatten": "PyTorch Linear on the window flattened {order} vs Dense after Flatten ({target_order})",
    "torch-linear-to-conv": "PyTorch Linear on the window flattened {order} vs conv",
}


def check_name(rule: str, params: Params) -> str:
    return CHECKS[rule].format(**params)


def sample_shape(rule: str, params: Params, target_shape: Sequence[int]) -> Tuple[int, ...]:
    """The shape of one random input the check feeds both sides (channels last)."""
    if rule == "torch-conv-transpose":
        return (target_shape[-1],)  # one input pixel: its contribution to every output position
    if rule == "torch-linear-flatten":
        dims = _dims(params, int(target_shape[0]))
        return tuple(dims[a] for a in canonical_order(len(params["window"])))
    if rule == "torch-linear":
        return (int(np.prod(target_shape[:-1], dtype=np.int64)),)
    return tuple(target_shape[:-1])


def source_rows(rule: str, params: Params, x: np.ndarray) -> np.ndarray:
    """What PyTorch multiplies by W.T: a conv's patches in its (in, *k) layout, a Linear's input
    flattened as its window was (`order`: chw after `torch.flatten` of NCHW)."""
    if rule == "torch-conv":
        return np.moveaxis(x, -1, 1).reshape(x.shape[0], -1)
    return _flat(x, params["order"]) if rule != "torch-linear" else x.reshape(x.shape[0], -1)


def target_rows(rule: str, params: Params, x: np.ndarray) -> np.ndarray:
    """What Keras multiplies the output's kernel (as rows) by: x flattened as the target's Flatten does, or as its Conv reads the window."""
    return _flat(x, params["target_order"]) if rule == "torch-linear-flatten" else x.reshape(x.shape[0], -1)


def _flat(x: np.ndarray, order: str) -> np.ndarray:
    """Windows (n, *spatial, c) flattened in the axis order `order`."""
    axes = [1 + canonical_order(x.ndim - 2).index(a) for a in order]
    return x.transpose([0] + axes).reshape(x.shape[0], -1)


def source_side(rule: str, params: Params, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """PyTorch's depthwise conv on x (n, *k, C): output channel c*m + j correlates channel c; or
    its transposed conv's scatter of one input pixel x (n, in): (n, out, *k)."""
    if rule == "torch-conv-transpose":
        return np.tensordot(x, weight, axes=([1], [0])).reshape(x.shape[0], -1)
    patches = np.moveaxis(x, -1, 1)  # (n, C, *k): PyTorch's layout
    groups = patches[:, np.arange(weight.shape[0]) // (weight.shape[0] // x.shape[-1])]  # (n, C*m, *k): channel c*m + j reads c
    return (groups.reshape(x.shape[0], weight.shape[0], -1) * weight.reshape(weight.shape[0], -1)).sum(axis=-1)


def target_side(rule: str, params: Params, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Keras's DepthwiseConv on the same x, (*k, C, m); or Conv*DTranspose's (*k, out, in)
    scatter of the same input pixel: (n, out, *k)."""
    n = x.shape[0]
    if rule == "torch-depthwise":
        windows, grouped = x.reshape(n, -1, x.shape[-1]), kernel.reshape(-1, *kernel.shape[-2:])  # (n, K, C), (K, C, m)
        return np.einsum("nkc,kcj->ncj", windows, grouped).reshape(n, -1)
    return np.moveaxis(np.tensordot(x, kernel, axes=([1], [kernel.ndim - 1])), -1, 1).reshape(n, -1)


# --- the rules ----------------------------------------------------------------------------

def _compare(step: Any, source: Storage, target: Storage, cast: Cast, context: checks.Context) -> Tuple[str, float, float]:
    """PyTorch's layer from its own layout against Keras's from the output, on the same random
    inputs: a conv's or a Linear's sides in blocks of rows, a depthwise or transposed conv's whole."""
    rule, params = step.rule, step.params
    x = context.standard_normal((SAMPLES,) + sample_shape(rule, params, step.target_shape))
    if rule in BLOCKWISE:
        want = _transposed_dot(source, source_rows(rule, params, x), cast)
        got = checks.rows_dot(target, target_rows(rule, params, x))
    else:
        want = source_side(rule, params, cast.store(source.read()), x)
        got = target_side(rule, params, target.read().astype("float64"), x)
    return (check_name(rule, params),) + checks.errors(got, want)


def _transposed_dot(storage: Storage, rows: np.ndarray, cast: Cast) -> np.ndarray:
    """rows (n, R) @ a PyTorch weight (out, ...) seen as (out, R), transposed: read in bounded
    blocks of its first axis. A strided view (a weight saved transposed) has no rows in place and
    reads whole for any block: it is read once, not once a block (820 reads of 411 MB for fc1)."""
    if isinstance(storage, StridedFileStorage):
        storage = ArrayStorage(storage.read(), storage.file)
    out, width = storage.shape[0], storage.size // storage.shape[0]
    step = max(1, checks.BLOCK_BYTES // max(1, width * 8))
    total = np.empty((rows.shape[0], out))
    for start in range(0, out, step):
        block = cast.store(checks.leading(storage, start, start + step))
        total[:, start:start + block.shape[0]] = rows @ block.reshape(block.shape[0], -1).T
    return total


_CHECK = checked(_compare)
for _rule in (
    Rule("torch-conv", "PyTorch Conv kernel (out, in, *k) -> (*k, in, out); no flip", conv, None, _CHECK, columns=conv_columns),
    Rule("torch-depthwise", "PyTorch depthwise Conv kernel (C*m, 1, *k) -> DepthwiseConv (*k, C, m); done in memory", depthwise, None, _CHECK),
    Rule("torch-conv-transpose", "PyTorch ConvTranspose kernel (in, out, *k) -> Conv*DTranspose (*k, out, in); no flip", conv_transpose, None, _CHECK,
         columns=conv_columns),
    Rule("torch-linear", "PyTorch Linear weight (out, in) -> Dense kernel (in, out) (or a 1x1 Conv's)", linear, None, _CHECK, columns=linear_columns),
    Rule("torch-linear-flatten", "PyTorch Linear after a flatten (out, N) -> Dense kernel (N, out), rows from the source's order (chw) to the target Flatten's",
         linear_window, None, _CHECK, tag=lambda params: f"{params['order']}>{params['target_order']}", columns=window_columns),
    Rule("torch-linear-to-conv", "PyTorch Linear after a flatten (out, N) -> Conv kernel over the window (*window, C, out), rows from the source's order (chw)",
         linear_window, None, _CHECK, tag=lambda params: params["order"], columns=window_columns),
):
    RULES[_rule.name] = _rule
