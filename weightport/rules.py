"""The named rules that turn one source tensor into one target tensor, exactly.

Each rule is a pure function of an array and plain-data parameters (`apply`, the reference
used by tests and for small tensors), plus, for rules that only move whole rows, a description
of those moves (`runs`) so the writer can stream any size with flat memory. A "row" is a slice
along the last axis (the output units of a kernel), so a Dense kernel (N, out) and a Conv
kernel (h, w, c, out) have the same rows in different orders.

Flatten orders are strings over the window's logical axes: spatial letters ("w" for 1-D,
"hw" for 2-D, "dhw" for 3-D) and "c" for channels; "hwc" is the order of a channels_last
Flatten, "chw" that of a raw channels-first flatten, "cwh" that of Permute((3, 2, 1)) + Flatten.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .units import select

__all__ = ["Rule", "Run", "RULES", "SPATIAL", "canonical_order", "rows_of", "check_order"]

Shape = Tuple[int, ...]
Params = Dict[str, Any]
SPATIAL = {1: "w", 2: "hw", 3: "dhw"}


def canonical_order(rank: int) -> str:
    """The target conv's (channels_last) window order for a spatial rank: 'hwc' for 2-D."""
    return SPATIAL[rank] + "c"


def check_order(order: str, rank: int) -> None:
    """Refuse an order that is not a permutation of the window's axes (ValueError)."""
    if sorted(order) != sorted(canonical_order(rank)):
        raise ValueError(f"flatten order '{order}' is not a permutation of '{canonical_order(rank)}'")


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


@dataclass(frozen=True)
class Rule:
    """A named, exact tensor transformation."""

    name: str
    summary: str
    apply: Callable[[np.ndarray, Params], np.ndarray]
    runs: Optional[Callable[[Shape, Params], List[Run]]]  # None: done in memory (small kernels)


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
    """Only the kept output units (last axis), then the rule that makes the pair exact."""
    return RULES[params["rule"]].apply(select(array, params["units"]), params["params"])


def _from_th(array: np.ndarray, params: Params) -> np.ndarray:
    """Keras 1 `th` kernel (out, in, *spatial) -> (*spatial, in, out), flipped if asked."""
    spatial = array.ndim - 2
    kernel = np.ascontiguousarray(array.transpose(tuple(range(2, 2 + spatial)) + (1, 0)))
    return _flip(kernel, params) if params.get("flip") else kernel


RULES: Dict[str, Rule] = {rule.name: rule for rule in (
    Rule("copy", "same shape, bytes copied as they are", _copy, _identity_runs),
    Rule("reshape-singleton", "same values, singleton axes added or removed (PReLU alpha (n,) -> (1, 1, n))", _reshape, _identity_runs),
    Rule("dense-to-1x1", "Dense kernel (in, out) -> 1x1 Conv kernel (1, .., 1, in, out); a reshape", _reshape, _identity_runs),
    Rule("dense-to-conv", "Dense kernel after Flatten -> Conv kernel covering the window; rows reordered from the flatten order", _dense_to_conv, _dense_to_conv_runs),
    Rule("conv-to-dense", "Conv kernel -> Dense kernel after Flatten in the given flatten order (inverse of dense-to-conv)", _conv_to_dense, _conv_to_dense_runs),
    Rule("kernel-flip", "Theano-trained kernel: spatial axes reversed (true convolution -> cross-correlation)", _flip, _flip_runs),
    Rule("units", "only the output units --units keeps (kernel's last axis, bias), then the pair's own rule; done in memory", _units, None),
    Rule("kernel-from-th", "Keras 1 'th' kernel (out, in, *spatial) -> (*spatial, in, out), flipped with --flip-kernels", _from_th, None),
)}
