"""How a rule's result is proved numerically, with numpy only: the pieces each rule's `check`
is made of (`rules.Rule.check`).

Random inputs go through the source tensor as the source computed with it (a Dense on the
window flattened in the source's order, a Theano true convolution, a Keras 1 `th` kernel in its
own layout) and through the target tensor as Keras will (a valid cross-correlation with the
output's kernel). Values that are simply carried (biases, normalisation statistics) are compared
element by element. The source's values are taken as the output's dtype stores them, which may
cost that dtype's own rounding (float32 -> float16) and nothing more: a value beyond its range,
or an integer dtype, fails the pair. Big tensors are read in blocks, so a check costs little
memory, and past `Context.full_values` values a tensor whose rule relates rows is checked on
sampled rows (window positions).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import WeightportError
from .orders import canonical_order
from .precision import Cast, CastLost, cast_to
from .storage import Storage

if TYPE_CHECKING:
    from .planner import Step

__all__ = ["Check", "Compare", "Orders", "Context", "At", "BLOCK_BYTES", "SAMPLES", "SAME_ORDER", "checked", "values", "window", "kernel",
           "rows_dot", "leading", "errors", "in_place"]

BLOCK_BYTES = 1 << 20  # float64 working blocks: the check adds a few MiB of memory, whatever the model
SAMPLES = 3
At = Tuple[Optional[Tuple[int, int]], Optional[Tuple[int, int]]]  # (source, target): (descriptor, byte offset) where in place
Result = Tuple[str, float, float]  # (what was compared, max abs error, max relative error)
Params = Dict[str, Any]
Orders = Callable[[Params, int], Tuple[str, str]]  # (source, target) row orders over a window of a spatial rank


class Context:
    """What every check of one verification shares: its random numbers from one seed (rows to
    sample drawn by the standard library, inputs by `standard_normal`), and how big a tensor is
    checked whole (`full_values`) and how many random rows a bigger one is checked on
    (`sampled_rows`, besides the first and the last)."""

    def __init__(self, seed: int, full_values: int, sampled_rows: int) -> None:
        self.seed, self.full_values, self.sampled_rows = seed, full_values, sampled_rows
        self._rows = random.Random(seed)
        self._drawn = 0  # how many values the input generator has given

    def sample(self, population: int, count: int) -> List[int]:
        """`count` distinct integers below `population`."""
        return self._rows.sample(range(population), count)

    def standard_normal(self, shape: Tuple[int, ...]) -> np.ndarray:
        """Standard normal inputs in plain numpy: splitmix64 over a running counter, then
        Box-Muller. numpy.random would do, but importing it costs ~7 MiB (it loads OpenSSL) in a
        conversion that must stay within 64 MiB (a VGG16 from PyTorch is checked on inputs)."""
        count = int(np.prod(shape, dtype=np.int64))
        pairs = (count + 1) // 2
        counter = np.arange(self._drawn, self._drawn + 2 * pairs, dtype=np.uint64) + np.uint64(self.seed) * _GOLDEN
        self._drawn += 2 * pairs
        uniform = ((_splitmix64(counter) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53  # in (0, 1)
        radius, angle = np.sqrt(-2.0 * np.log(uniform[:pairs])), 2.0 * np.pi * uniform[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count].reshape(shape)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele, Lea, Flood 2014) on uint64 counters: arithmetic wraps mod 2**64."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


Check = Callable[["Step", Storage, Storage, Context, At], Result]  # a rule's whole check of one tensor
Compare = Callable[["Step", Storage, Storage, Cast, Context], Result]  # its check of a tensor checked whole


def SAME_ORDER(params: Params, rank: int) -> Tuple[str, str]:
    """Rows in the same order on both sides: the target's (channels_last) window order."""
    return canonical_order(rank), canonical_order(rank)


def checked(compare: Compare, rows: Optional[Orders] = None, rows_equal: bool = False) -> Check:
    """A rule's check: `compare` on the source's values as the output's dtype stores them (a dtype
    that cannot hold them, or loses more than its own rounding, fails the tensor); with `rows`
    (which rows of the source the target's rows are), a tensor bigger than the context's
    `full_values` is checked on sampled rows instead, named `values equal` with `rows_equal`, else
    a dense on the window; `at` as `transfer.raw_location` gives for each side, read straight
    from the files there."""

    def check(step: "Step", source: Storage, target: Storage, context: Context, at: At = (None, None)) -> Result:
        cast = cast_to(source.dtype, target.dtype)
        source, target = in_place(source, at[0]), in_place(target, at[1])
        if cast is None:
            return f"{source.dtype} -> {target.dtype}: this dtype cannot hold the weights", float("inf"), float("inf")
        try:
            if rows is not None and max(source.size, target.size) > context.full_values and min(source.ndim, target.ndim) >= 2:
                name, diff, rel = _sampled_rows(step, source, target, cast, context, rows, rows_equal)
            else:
                name, diff, rel = compare(step, source, target, cast, context)
        except CastLost as lost:
            return f"{source.dtype} -> {target.dtype} loses more than {target.dtype}'s rounding ({lost})", float("inf"), float("inf")
        return (f"{name} {cast.label}" if cast.label else name), diff, rel

    return check


def values(step: "Step", source: Storage, target: Storage, cast: Cast, context: Context) -> Result:
    """The same values (maybe reshaped), element by element."""
    return ("values equal",) + _compare_values(source, target, cast)


def window(orders: Orders) -> Compare:
    """A Dense on the flattened window (rows in its flatten order) against the valid correlation
    of the conv that covers the window, either side the Dense; `orders` as for `checked`."""

    def compare(step: "Step", source: Storage, target: Storage, cast: Cast, context: Context) -> Result:
        source_is_conv = len(step.source_shape) > len(step.target_shape)
        conv_shape = step.source_shape if source_is_conv else step.target_shape
        rank = len(conv_shape) - 2
        x = context.standard_normal((SAMPLES,) + tuple(conv_shape[:-1]))  # channels_last windows
        src_order, tgt_order = orders(step.params, rank)
        want = rows_dot(source, _flatten(x, src_order), cast)
        got = rows_dot(target, _flatten(x, tgt_order))
        return (f"dense on window ({tgt_order if source_is_conv else src_order}) vs conv",) + errors(got, want)

    return compare


def kernel(layout: Optional[Callable[[np.ndarray], np.ndarray]] = None, flipped: Callable[[Params], bool] = lambda params: False) -> Compare:
    """A conv kernel (role kernel, target of rank 3 or more; other tensors: `values`): the
    source's convolution on random patches against Keras's cross-correlation with the output.
    `layout` puts the source's kernel in Keras's axis order (*spatial, in, out), None when it is
    already; `flipped(params)`: the source computed a true convolution (Theano), which flips
    the input. A kernel already in Keras's layout and not flipped is streamed on both sides;
    others (Theano-era kernels: small) are read whole."""

    def compare(step: "Step", source: Storage, target: Storage, cast: Cast, context: Context) -> Result:
        if step.role not in (None, "kernel") or len(step.target_shape) < 3:
            return values(step, source, target, cast, context)
        shape = tuple(step.target_shape)
        spatial = len(shape) - 2
        x = context.standard_normal((SAMPLES,) + shape[:-1])
        flip = bool(flipped(step.params))
        got = rows_dot(target, x.reshape(SAMPLES, -1))
        if layout is None and not flip:  # same layout on both sides: stream the source too
            return ("correlation",) + errors(got, rows_dot(source, x.reshape(SAMPLES, -1), cast))
        weights = cast.store(source.read())
        if layout is not None:
            weights = layout(weights)
        patches = x[(slice(None),) + (slice(None, None, -1),) * spatial] if flip else x  # true convolution flips the input
        want = np.tensordot(patches, weights, axes=spatial + 1)
        return ("true convolution vs correlation" if flip else "correlation",) + errors(got, want)

    return compare


def _sampled_rows(step: "Step", source: Storage, target: Storage, cast: Cast, context: Context, orders: Orders,
                  equal: bool) -> Result:
    """A big tensor: random window positions, the source's row for each (found through the
    source's flatten order) against the target's row for the same position."""
    conv = step.target_shape if len(step.target_shape) >= len(step.source_shape) else step.source_shape
    rank = max(len(conv) - 2, 1)
    axes = canonical_order(rank)
    dims = dict(zip(axes, conv[:-1])) if len(conv) >= 3 else {"w": 1, "c": conv[0]}
    src_order, tgt_order = orders(step.params, rank)
    rows = int(np.prod([dims[a] for a in axes], dtype=np.int64))
    picked = np.union1d([0, rows - 1], context.sample(rows, min(context.sampled_rows, rows)))  # the edges always
    position = dict(zip(axes, np.unravel_index(picked, [dims[a] for a in axes])))
    src_index = np.ravel_multi_index([position[a] for a in src_order], [dims[a] for a in src_order])
    tgt_index = np.ravel_multi_index([position[a] for a in tgt_order], [dims[a] for a in tgt_order])
    per_read = max(1, BLOCK_BYTES // (8 * target.shape[-1]))  # rows whose float64 copies fit a block
    worst, scale = 0.0, 0.0
    for start in range(0, len(picked), per_read):
        want = cast.store(source.read_rows(src_index[start:start + per_read]))
        got = target.read_rows(tgt_index[start:start + per_read]).astype("float64")
        worst, scale = max(worst, _max_diff(got, want)), max(scale, _scale(want))
    name = f"{'values equal' if equal else 'dense on window (' + src_order + ') vs conv'}, {len(picked)} of {rows} rows sampled"
    return name, worst, _relative(worst, scale)


def in_place(storage: Storage, at: Optional[Tuple[int, int]]) -> Storage:
    """The storage, read straight from the descriptor already open on its file where it lies in
    place there (`at`: descriptor, offset, from `transfer.raw_location`): a block of rows is one
    read, where HDF5 would build a selection first and a raw file would be opened again."""
    return storage if at is None else _InPlace(storage, at)


class _InPlace(Storage):
    """A tensor's C-order bytes at an offset of an open descriptor: consecutive rows in one
    read, others one read each; a file shorter than they need is an error naming it."""

    __slots__ = ("_fd",)

    def __init__(self, storage: Storage, at: Tuple[int, int]) -> None:
        super().__init__(storage.file, storage.identity, at[1], storage.shape, storage.dtype)
        self._fd = at[0]

    def read(self) -> np.ndarray:
        return self.read_rows(np.arange(self.size // (self.shape[-1] if self.shape else 1))).reshape(self.shape)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        values = np.empty((len(rows), self.shape[-1] if self.shape else 1), self.dtype)
        size = values.shape[1] * values.itemsize
        if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            spans = [(values.reshape(-1), int(rows[0]))]
        else:
            spans = list(zip(values, rows.tolist()))
        for into, row in spans:
            if into.nbytes and os.preadv(self._fd, [into], self.offset + row * size) != into.nbytes:
                raise WeightportError(self.file, "changed or truncated while being verified",
                                      "convert again once the file is complete and no longer being written")
        return values


def _compare_values(source: Storage, target: Storage, cast: Cast) -> Tuple[float, float]:
    """Element-by-element comparison, in bounded blocks of the first axis where there is more
    than one (the same values, maybe reshaped)."""
    if source.size != target.size:
        return float("inf"), float("inf")
    if source.shape != target.shape or source.ndim <= 1 or not source.size:
        return errors(target.read().astype("float64").reshape(-1), cast.store(source.read()).reshape(-1))
    step = max(1, BLOCK_BYTES // max(1, source.size // source.shape[0] * source.dtype.itemsize * 8))
    worst_diff, scale = 0.0, 0.0
    for start in range(0, source.shape[0], step):
        want = cast.store(leading(source, start, start + step))
        got = leading(target, start, start + step).astype("float64")
        worst_diff, scale = max(worst_diff, _max_diff(got, want)), max(scale, _scale(want))
    return worst_diff, _relative(worst_diff, scale)


def _flatten(x: np.ndarray, order: str) -> np.ndarray:
    """Flatten channels_last windows (n, *spatial, c) in a given axis order."""
    canonical = canonical_order(x.ndim - 2)
    axes = [0] + [1 + canonical.index(a) for a in order]
    return x.transpose(axes).reshape(x.shape[0], -1)


def leading(storage: Storage, start: int, stop: int) -> np.ndarray:
    """Indices `start` to `stop` of the first axis of a tensor of at least two (an `[start:stop]`
    slice), read as the rows they are."""
    shape = (min(stop, storage.shape[0]) - start,) + storage.shape[1:]
    if not storage.size:
        return np.empty(shape, storage.dtype)
    per_first = storage.size // storage.shape[0] // storage.shape[-1]
    return storage.read_rows(np.arange(start * per_first, (start + shape[0]) * per_first)).reshape(shape)


def rows_dot(storage: Storage, rows: np.ndarray, cast: Optional[Cast] = None) -> np.ndarray:
    """rows (n, R) @ the tensor seen as (R, out), reading it in bounded blocks (its values as
    `cast` stores them: the source's, as the output's dtype holds them)."""
    shape = storage.shape
    out = shape[-1]
    per_first = int(np.prod(shape[1:-1], dtype=np.int64)) if len(shape) > 2 else 1
    step = max(1, BLOCK_BYTES // max(1, per_first * out * 8))
    total = np.zeros((rows.shape[0], out))
    for start in range(0, shape[0], step):
        block = leading(storage, start, start + step)
        block = (cast.store(block) if cast else block.astype("float64")).reshape(-1, out)
        total += rows[:, start * per_first:start * per_first + block.shape[0]] @ block
    return total


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want|, where NaN matches NaN (NaN weights are data) and inf matches inf."""
    if not got.size:
        return 0.0
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _scale(want: np.ndarray) -> float:
    finite = np.abs(want[np.isfinite(want)])
    return float(finite.max()) if finite.size else 0.0


def _relative(diff: float, scale: float) -> float:
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def errors(got: np.ndarray, want: np.ndarray) -> Tuple[float, float]:
    if got.shape != want.shape:
        return float("inf"), float("inf")
    diff = _max_diff(got, want)
    return diff, _relative(diff, _scale(want))
