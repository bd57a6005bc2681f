"""The named rules that turn one source tensor into one target tensor, exactly.

A rule is everything weightport knows about one transformation, in one entry of `RULES`: a
pure function of an array and plain-data parameters (`apply`, the reference used by tests and
for small tensors); for rules that only move whole rows, a description of those moves (`runs`)
so the writer can stream any size with flat memory; how verification proves a tensor it made
(`check`, built from `checks`); and how reports name it (`label`). The planner picks a rule
for each tensor; writers, verification and reports ask the rule. A "row" is a slice along the
last axis (the output units of a kernel), so a Dense kernel (N, out) and a Conv kernel
(h, w, c, out) have the same rows in different orders. Flatten orders: see `orders`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import checks
from .checks import At, Check, Context, SAME_ORDER, checked
from .orders import SPATIAL, canonical_order, check_order
from .storage import ArrayStorage, Storage
from .units import select

if TYPE_CHECKING:
    from .planner import Step

__all__ = ["Rule", "Run", "RULES", "SPATIAL", "canonical_order", "rows_of", "check_order"]

Shape = Tuple[int, ...]
Params = Dict[str, Any]


def rows_of(shape: Sequence[int]) -> Tuple[int, int]:
    """(number of rows, row length) of a tensor seen as rows along its last axis."""
    if not shape:
        return 1, 1
    return int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])


@dataclass(frozen=True)
class Run:
    """`count` rows: target row dst_row + k*dst_stride <- source row src_row + k*src_stride."""

    src_row: int
    src_stride: int
    dst_row: int
    dst_stride: int
    count: int


def _flip_tag(params: Params) -> str:
    return "flip" if params.get("flip") else ""


@dataclass(frozen=True)
class Rule:
    """A named, exact tensor transformation: `apply` makes the target from the source in memory;
    `runs` describes it as row moves for the byte mover (None: done in memory, small tensors);
    `check(step, source, target, context, at)` proves a tensor it made, from the two storages,
    as (what was compared, max abs error, max relative error) (see `checks`); `tag(params)`
    is what the plan's table shows after the name ("chw", "flip"); `columns`, for a rule that
    transposes (PyTorch's layouts), which source column each target row is, so the byte mover
    streams it a block of columns at a time."""

    name: str
    summary: str
    apply: Callable[[np.ndarray, Params], np.ndarray]
    runs: Optional[Callable[[Shape, Params], List[Run]]]
    check: Check
    tag: Callable[[Params], str] = _flip_tag
    columns: Optional[Callable[[Shape, Params], np.ndarray]] = None  # a transpose: target row r is source column columns[r] (streamed by columns)

    def label(self, params: Params) -> str:
        """The rule as the plan's table names it: `dense-to-conv chw`, `kernel-from-th flip`."""
        return f"{self.name} {self.tag(params)}".strip()


# --- window helpers -----------------------------------------------------------------------

def _window_dims(params: Params, channels: int) -> Dict[str, int]:
    """Logical axis -> size for a window given by params['window'] (spatial) and channels."""
    spatial = SPATIAL[len(params["window"])]
    dims = dict(zip(spatial, params["window"]))
    dims["c"] = channels
    return dims


def _permuted_runs(dims: Dict[str, int], src_order: str, dst_order: str) -> List[Run]:
    """Runs moving rows indexed by `src_order` into rows indexed by `dst_order` (same axes),
    along the source's innermost axis."""
    def strides(order: str) -> Dict[str, int]:
        out, step = {}, 1
        for axis in reversed(order):
            out[axis] = step
            step *= dims[axis]
        return out

    src_strides, dst_strides = strides(src_order), strides(dst_order)
    inner = src_order[-1]
    outer = [axis for axis in src_order if axis != inner]
    runs = []
    for index in itertools.product(*(range(dims[a]) for a in outer)):
        src = sum(i * src_strides[a] for a, i in zip(outer, index))
        dst = sum(i * dst_strides[a] for a, i in zip(outer, index))
        runs.append(Run(src, src_strides[inner], dst, dst_strides[inner], dims[inner]))
    return _merge(runs)


def _merge(runs: List[Run]) -> List[Run]:
    """Join consecutive runs that continue each other (an identity becomes one run)."""
    merged: List[Run] = []
    for run in runs:
        last = merged[-1] if merged else None
        if (last and last.src_stride == run.src_stride == 1 and last.dst_stride == run.dst_stride == 1
                and last.src_row + last.count == run.src_row and last.dst_row + last.count == run.dst_row):
            merged[-1] = Run(last.src_row, 1, last.dst_row, 1, last.count + run.count)
        else:
            merged.append(run)
    return merged


def _identity_runs(shape: Shape, params: Params) -> List[Run]:
    rows, _ = rows_of(shape)
    return [Run(0, 1, 0, 1, rows)]


def _dense_channels(shape: Shape, params: Params) -> int:
    return shape[0] // int(np.prod(params["window"], dtype=np.int64))


# --- the rules ----------------------------------------------------------------------------

def _copy(array: np.ndarray, params: Params) -> np.ndarray:
    return array


def _reshape(array: np.ndarray, params: Params) -> np.ndarray:
    return array.reshape(params["shape"])


def _dense_to_conv(array: np.ndarray, params: Params) -> np.ndarray:
    """(N, out) with rows in `order` -> (*window, C, out)."""
    dims = _window_dims(params, _dense_channels(array.shape, params))
    order, canonical = params["order"], canonical_order(len(params["window"]))
    grid = array.reshape([dims[a] for a in order] + [array.shape[-1]])
    axes = [order.index(a) for a in canonical] + [len(order)]
    return np.ascontiguousarray(grid.transpose(axes))


def _dense_to_conv_runs(shape: Shape, params: Params) -> List[Run]:
    dims = _window_dims(params, _dense_channels(shape, params))
    return _permuted_runs(dims, params["order"], canonical_order(len(params["window"])))


def _conv_to_dense(array: np.ndarray, params: Params) -> np.ndarray:
    """(*window, C, out) -> (N, out) with rows in `order` (the inverse of dense-to-conv)."""
    rank = array.ndim - 2
    canonical, order = canonical_order(rank), params["order"]
    axes = [canonical.index(a) for a in order] + [rank + 1]
    return np.ascontiguousarray(array.transpose(axes)).reshape(-1, array.shape[-1])


def _conv_to_dense_runs(shape: Shape, params: Params) -> List[Run]:
    rank = len(shape) - 2
    dims = dict(zip(SPATIAL[rank], shape[:rank]))
    dims["c"] = shape[rank]
    return _permuted_runs(dims, canonical_order(rank), params["order"])


def _flip(array: np.ndarray, params: Params) -> np.ndarray:
    """Reverse every spatial axis of a (*spatial, in, out) kernel (Theano's true convolution)."""
    spatial = array.ndim - 2
    return np.ascontiguousarray(array[(slice(None, None, -1),) * spatial])


def _flip_runs(shape: Shape, params: Params) -> List[Run]:
    spatial, channels = shape[:-2], shape[-2]
    runs = []
    for index in itertools.product(*(range(n) for n in spatial)):
        mirrored = tuple(n - 1 - i for n, i in zip(spatial, index))
        src = int(np.ravel_multi_index(mirrored, spatial)) * channels if spatial else 0
        dst = int(np.ravel_multi_index(index, spatial)) * channels if spatial else 0
        runs.append(Run(src, 1, dst, 1, channels))
    return _merge(runs)


def _units(array: np.ndarray, params: Params) -> np.ndarray:
    """Only the kept output units (along `axis`: the last, a Keras kernel's, unless a PyTorch
    layout says), then the rule that makes the pair exact."""
    return RULES[params["rule"]].apply(select(array, params["units"], params.get("axis", -1)), params["params"])


def _check_units(step: "Step", source: Storage, target: Storage, context: Context, at: At = (None, None)) -> Tuple[str, float, float]:
    """The kept units of the source (a head layer: small), held in memory, checked against the
    output by the pair's own rule."""
    kept = select(source.read(), step.params["units"], step.params.get("axis", -1))
    inner = replace(step, rule=step.params["rule"], params=step.params["params"], source_shape=list(kept.shape))
    name, worst, relative = RULES[inner.rule].check(inner, ArrayStorage(kept, source.file), target, context)
    return f"units {step.params['units']}; {name}", worst, relative


def _units_tag(params: Params) -> str:
    return f"{params['units']} > {RULES[params['rule']].label(params['params'])}"


def _from_th(array: np.ndarray, params: Params) -> np.ndarray:
    """Keras 1 `th` kernel (out, in, *spatial) -> (*spatial, in, out), flipped if asked."""
    spatial = array.ndim - 2
    kernel = np.ascontiguousarray(array.transpose(tuple(range(2, 2 + spatial)) + (1, 0)))
    return _flip(kernel, params) if params.get("flip") else kernel


def _th_layout(kernel: np.ndarray) -> np.ndarray:
    """A (out, in, *spatial) kernel seen in Keras's (*spatial, in, out) axis order, for the check
    (an axis move of its own, not `_from_th`: a wrong transposition there is caught)."""
    return np.moveaxis(kernel, (0, 1), (-1, -2))


def _from_window(params: Params, rank: int) -> Tuple[str, str]:
    """dense-to-conv's rows: the Dense's in its flatten order, the conv's in the canonical one."""
    return params["order"], canonical_order(rank)


def _to_window(params: Params, rank: int) -> Tuple[str, str]:
    """conv-to-dense's rows: the conv's canonical order, the Dense's in its flatten order."""
    return canonical_order(rank), params["order"]


RULES: Dict[str, Rule] = {rule.name: rule for rule in (
    Rule("copy", "same shape, bytes copied as they are", _copy, _identity_runs,
         checked(checks.kernel(), rows=SAME_ORDER, rows_equal=True)),
    Rule("reshape-singleton", "same values, singleton axes added or removed (PReLU alpha (n,) -> (1, 1, n))", _reshape, _identity_runs,
         checked(checks.values, rows=SAME_ORDER)),
    Rule("dense-to-1x1", "Dense kernel (in, out) -> 1x1 Conv kernel (1, .., 1, in, out); a reshape", _reshape, _identity_runs,
         checked(checks.window(SAME_ORDER), rows=SAME_ORDER)),
    Rule("dense-to-conv", "Dense kernel after Flatten -> Conv kernel covering the window; rows reordered from the flatten order", _dense_to_conv,
         _dense_to_conv_runs, checked(checks.window(_from_window), rows=_from_window), tag=lambda params: params["order"]),
    Rule("conv-to-dense", "Conv kernel -> Dense kernel after Flatten in the given flatten order (inverse of dense-to-conv)", _conv_to_dense,
         _conv_to_dense_runs, checked(checks.window(_to_window), rows=_to_window)),
    Rule("kernel-flip", "Theano-trained kernel: spatial axes reversed (true convolution -> cross-correlation)", _flip, _flip_runs,
         checked(checks.kernel(flipped=lambda params: True))),
    Rule("units", "only the output units --units keeps (kernel's last axis, bias), then the pair's own rule; done in memory", _units, None,
         _check_units, tag=_units_tag),
    Rule("kernel-from-th", "Keras 1 'th' kernel (out, in, *spatial) -> (*spatial, in, out), flipped with --flip-kernels", _from_th, None,
         checked(checks.kernel(_th_layout, flipped=lambda params: bool(params.get("flip"))))),
)}


from . import torchrules  # noqa: E402,F401  (PyTorch's rules add themselves to RULES; imported last, as they use this module)
