"""Proving a conversion numerically, with numpy only.

For every transplanted layer pair, random inputs go through the source layer as the source
computed it (a Dense on the window flattened in the source's order, a Theano true
convolution, a Keras 1 `th` kernel in its own layout) and through the target layer as Keras
will compute it (a valid cross-correlation with the output's kernel). Values that are
simply carried (biases, normalisation statistics) are compared element by element. The
source's values are taken as the output's dtype stores them, which may cost that dtype's own
rounding (float32 -> float16) and nothing more: a value beyond its range, or an integer dtype,
fails the pair. Big kernels are read in blocks, so the check costs little memory. It catches the classic
mistakes: the flatten order swapped, a kernel transposed, a flip missing, a layer paired
with the wrong one.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import digests, units
from .errors import WeightportError
from .hdf5 import damaged_hdf5
from .planner import Plan, Step
from .precision import Cast, CastLost, cast_to
from .rules import canonical_order
from .storage import ArrayStorage, Storage
from .transfer import keeps_order, open_data_files, raw_location
from .view import ModelView

__all__ = ["PairCheck", "DigestCheck", "Verification", "VerificationFailed", "verify_plan", "check_source_digest"]

BLOCK_BYTES = 1 << 20  # float64 working blocks: the check adds a few MiB of memory, whatever the model
SAMPLES = 3
FULL_CHECK_VALUES = 1 << 19  # tensors up to this many values are checked whole (<= 4 MiB as float64)
SAMPLED_ROWS = 64  # larger ones: this many random rows (window positions) and the first and last,
# compared exactly; a wrong order, transposition or shift moves nearly every row, so a few dozen
# catch it (a byte mover's edge cases are covered by its own tests, tests/test_transfer.py)
_At = Tuple[Optional[Tuple[int, int]], Optional[Tuple[int, int]]]  # (source, target): (descriptor, byte offset) where in place


@dataclass
class PairCheck:
    """The worst error over one layer pair's tensors."""

    source_layer: str
    target_layer: str
    checks: List[str]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class DigestCheck:
    """The source digest OUT records (its provenance attribute) against SRC's own."""

    attribute: str  # weightport_source_blake3, or weightport_source_sha256 in older outputs
    recorded: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.recorded == self.actual


@dataclass
class Verification:
    """Every pair's check, the tolerances used and, from `verify`, the source digest's check
    (None when not made, or when OUT records no digest) and `verify --keras`'s end-to-end
    comparison (a `keras_check.EndToEnd`; None when not run). `ok` is the verdict over all."""

    pairs: List[PairCheck]
    atol: float
    rtol: float
    digest: Optional[DigestCheck] = None
    keras: Optional[Any] = None

    @property
    def ok(self) -> bool:
        return all(pair.ok for pair in self.pairs) and (self.digest is None or self.digest.ok) and (self.keras is None or self.keras.ok)

    def to_dict(self) -> Dict[str, Any]:
        """The `verify --json` document (contract in the README)."""
        digest = None if self.digest is None else {**asdict(self.digest), "ok": self.digest.ok}
        keras = None if self.keras is None else self.keras.to_dict()
        return {"ok": self.ok, "atol": self.atol, "rtol": self.rtol, "pairs": [asdict(p) for p in self.pairs], "source_digest": digest,
                "keras": keras}


class VerificationFailed(Exception):
    """What `convert` wrote did not pass its check; nothing was written (exit status 1).
    `plan` is the plan that was followed, for the report."""

    def __init__(self, result: Verification, plan: Optional[Plan] = None) -> None:
        self.result = result
        self.plan = plan
        failed = ", ".join(f"{p.source_layer} -> {p.target_layer}" for p in result.pairs if not p.ok)
        super().__init__(f"verification failed for {failed}")


def check_source_digest(source: ModelView, out: ModelView) -> Optional[DigestCheck]:
    """OUT's recorded source digest (the first provenance attribute it has, BLAKE3 or an older
    output's SHA-256) against the digest of SRC as it is now; None when OUT records none (not
    written by weightport). The hash of SRC is taken from `digests.start` if one was started."""
    attribute = next((name for name in digests.RECORDED if name in out.recorded_digests), None)
    if attribute is None:
        return None
    recorded = out.recorded_digests[attribute]
    path = source.data_file or source.path
    actual = digests.source_digest(path) if attribute == digests.ATTRIBUTE else digests.file_digest(path, attribute)
    return DigestCheck(attribute, recorded, actual)


def verify_plan(plan: Plan, views: Dict[str, ModelView], out: ModelView, atol: float = 1e-6, rtol: float = 1e-5,
                seed: int = 0) -> Verification:
    """Check that `out` holds what `plan` promises, computing both sides of every layer pair."""
    rng = _Random(seed)
    produced = {layer.name: layer.weights for layer in out.layers}
    sources = {(file, t.path): t for file, view in views.items() for t in view.tensors}
    index: Dict[str, int] = {}
    by_layer: Dict[Tuple[str, str], List[Tuple[str, float, float]]] = {}
    with open_data_files([*views.values(), out]) as files:
        for step in plan.steps:
            i = index[step.target_layer] = index.get(step.target_layer, -1) + 1
            source = sources[(step.source_file, step.source_path)]
            made = produced.get(step.target_layer, [])
            target = made[i] if i < len(made) else None
            if target is None or target.shape != tuple(step.target_shape):
                result = ("missing or misshapen in the output", float("inf"), float("inf"))
            else:
                with damaged_hdf5(f"{step.source_file} or {out.path}"):
                    at = raw_location(source, files), raw_location(target, files)
                    result = _identical(step, source.storage, target.storage, at) or _check(step, source.storage, target.storage, rng, at)
            by_layer.setdefault((step.source_layer, step.target_layer), []).append(result)
    pairs = []
    for (src, tgt), results in by_layer.items():
        max_abs = max(r[1] for r in results)
        max_rel = max(r[2] for r in results)
        ok = all(r[1] <= atol or r[2] <= rtol for r in results)
        pairs.append(PairCheck(src, tgt, sorted({r[0] for r in results}), max_abs, max_rel, ok))
    return Verification(pairs, atol, rtol)


def _identical(step: Step, src: Storage, tgt: Storage, at: _At) -> Optional[Tuple[str, float, float]]:
    """The quick proof for most tensors of a model: a rule that keeps every element in place,
    the same dtype on both sides and the same bytes, which no numeric check could tell apart,
    compared a block at a time straight from both files. None (the numeric checks decide) for
    any other tensor, for bytes that differ, and for tensors sampled by rows (bigger than
    FULL_CHECK_VALUES: reading them whole would cost more than the check). `at`: where each lies
    in place in its file (`raw_location`), if it does."""
    src_at, tgt_at = at
    if src_at is None or tgt_at is None or src.dtype != tgt.dtype or src.size != tgt.size or src.size > FULL_CHECK_VALUES:
        return None
    if not keeps_order(step.rule, src.shape, step.params):
        return None
    nbytes = src.size * src.dtype.itemsize
    for start in range(0, nbytes, BLOCK_BYTES):
        count = min(BLOCK_BYTES, nbytes - start)
        if os.pread(src_at[0], count, src_at[1] + start) != os.pread(tgt_at[0], count, tgt_at[1] + start):
            return None
    return "bytes identical", 0.0, 0.0


class _Random:
    """The checks' random numbers from one seed: rows to sample drawn by the standard library,
    inputs by numpy's generator, made on first use. Importing numpy.random costs ~7 MiB of
    memory (it loads OpenSSL), and most models never need it: their tensors are proved by their
    bytes or by sampled rows."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rows = random.Random(seed)
        self._values: Optional[np.random.Generator] = None

    def sample(self, population: int, count: int) -> List[int]:
        """`count` distinct integers below `population`."""
        return self._rows.sample(range(population), count)

    def standard_normal(self, shape: Tuple[int, ...]) -> np.ndarray:
        if self._values is None:
            self._values = np.random.default_rng(self.seed)
        return self._values.standard_normal(shape)


# --- the checks ---------------------------------------------------------------------------

def _check(step: Step, source: Storage, target: Storage, rng: _Random, at: _At = (None, None)) -> Tuple[str, float, float]:
    """One tensor's check, qualified by the output dtype's rounding where it has one; `at` as
    for `_identical` (sampled rows are read straight from the files where the tensors lie in place)."""
    if step.rule == "units":
        return _check_units(step, source, target, rng)
    cast = cast_to(source.dtype, target.dtype)
    if cast is None:
        return f"{source.dtype} -> {target.dtype}: this dtype cannot hold the weights", float("inf"), float("inf")
    try:
        name, diff, rel = _compare(step, source, target, cast, rng, at)
    except CastLost as lost:
        return f"{source.dtype} -> {target.dtype} loses more than {target.dtype}'s rounding ({lost})", float("inf"), float("inf")
    return (f"{name} {cast.label}" if cast.label else name), diff, rel


def _compare(step: Step, source: Storage, target: Storage, cast: Cast, rng: _Random, at: _At) -> Tuple[str, float, float]:
    if max(source.size, target.size) > FULL_CHECK_VALUES and step.rule in _ROW_ORDERS and min(source.ndim, target.ndim) >= 2:
        return _check_rows(step, source, target, cast, rng, at)
    if step.rule in ("dense-to-conv", "dense-to-1x1", "conv-to-dense"):
        return _check_linear(step, source, target, cast, rng)
    kernel = step.role in (None, "kernel") and len(step.target_shape) >= 3 and step.rule in ("copy", "kernel-flip", "kernel-from-th")
    if kernel:
        return _check_kernel(step, source, target, cast, rng)
    return ("values equal",) + _compare_values(source, target, cast)


def _check_linear(step: Step, source: Storage, target: Storage, cast: Cast, rng: _Random) -> Tuple[str, float, float]:
    """Dense on the flattened window (in its flatten order) vs valid correlation with the conv."""
    conv_shape = step.target_shape if step.rule != "conv-to-dense" else step.source_shape
    rank = len(conv_shape) - 2
    x = rng.standard_normal((SAMPLES,) + tuple(conv_shape[:-1]))  # channels_last windows
    order = step.params.get("order", canonical_order(rank))
    flat = _flatten(x, order)
    canonical = x.reshape(SAMPLES, -1)
    src_rows, tgt_rows = (canonical, flat) if step.rule == "conv-to-dense" else (flat, canonical)
    want = _rows_dot(source, src_rows, cast)
    got = _rows_dot(target, tgt_rows)
    return (f"dense on window ({order}) vs conv",) + _errors(got, want)


def _check_kernel(step: Step, source: Storage, target: Storage, cast: Cast, rng: _Random) -> Tuple[str, float, float]:
    """The source's convolution on random patches vs Keras's cross-correlation with the output."""
    shape = tuple(step.target_shape)
    spatial = len(shape) - 2
    x = rng.standard_normal((SAMPLES,) + shape[:-1])
    flipped = step.rule == "kernel-flip" or step.params.get("flip")
    got = _rows_dot(target, x.reshape(SAMPLES, -1))
    if step.rule == "copy":  # same layout on both sides: stream the source too
        return ("correlation",) + _errors(got, _rows_dot(source, x.reshape(SAMPLES, -1), cast))
    kernel = cast.store(source.read())  # Theano-era kernels: small
    if step.rule == "kernel-from-th":  # stored (out, in, *spatial): contract in that layout
        kernel = np.moveaxis(kernel, (0, 1), (-1, -2))
    patches = x[(slice(None),) + (slice(None, None, -1),) * spatial] if flipped else x  # true convolution flips the input
    want = np.tensordot(patches, kernel, axes=spatial + 1)
    name = "true convolution vs correlation" if flipped else "correlation"
    return (name,) + _errors(got, want)


def _check_units(step: Step, source: Storage, target: Storage, rng: _Random) -> Tuple[str, float, float]:
    """`--units`: the kept units of the source (a head layer: small), held in memory, checked
    against the output by the pair's own rule."""
    kept = units.select(source.read(), step.params["units"])
    inner = replace(step, rule=step.params["rule"], params=step.params["params"], source_shape=list(kept.shape))
    name, worst, relative = _check(inner, ArrayStorage(kept, source.file), target, rng)
    return f"units {step.params['units']}; {name}", worst, relative


# Which row orders a rule relates: (source order, target order) over the window's axes.
_ROW_ORDERS = {
    "dense-to-conv": lambda p, rank: (p["order"], canonical_order(rank)),
    "conv-to-dense": lambda p, rank: (canonical_order(rank), p["order"]),
    "dense-to-1x1": lambda p, rank: (canonical_order(rank), canonical_order(rank)),
    "copy": lambda p, rank: (canonical_order(rank), canonical_order(rank)),
    "reshape-singleton": lambda p, rank: (canonical_order(rank), canonical_order(rank)),
}


def _check_rows(step: Step, source: Storage, target: Storage, cast: Cast, rng: _Random, at: _At) -> Tuple[str, float, float]:
    """A big tensor: random window positions, the source's row for each (found through the
    source's flatten order) against the target's row for the same position."""
    conv = step.target_shape if len(step.target_shape) >= len(step.source_shape) else step.source_shape
    rank = max(len(conv) - 2, 1)
    axes = canonical_order(rank)
    dims = dict(zip(axes, conv[:-1])) if len(conv) >= 3 else {"w": 1, "c": conv[0]}
    src_order, tgt_order = _ROW_ORDERS[step.rule](step.params, rank)
    rows = int(np.prod([dims[a] for a in axes], dtype=np.int64))
    picked = np.union1d([0, rows - 1], rng.sample(rows, min(SAMPLED_ROWS, rows)))  # the edges always
    position = dict(zip(axes, np.unravel_index(picked, [dims[a] for a in axes])))
    src_index = np.ravel_multi_index([position[a] for a in src_order], [dims[a] for a in src_order])
    tgt_index = np.ravel_multi_index([position[a] for a in tgt_order], [dims[a] for a in tgt_order])
    per_read = max(1, BLOCK_BYTES // (8 * target.shape[-1]))  # rows whose float64 copies fit a block
    worst, scale = 0.0, 0.0
    for start in range(0, len(picked), per_read):
        want = cast.store(_read_rows(source, src_index[start:start + per_read], at[0]))
        got = _read_rows(target, tgt_index[start:start + per_read], at[1]).astype("float64")
        worst, scale = max(worst, _max_diff(got, want)), max(scale, _scale(want))
    name = f"{'dense on window (' + src_order + ') vs conv' if step.rule != 'copy' else 'values equal'}, {len(picked)} of {rows} rows sampled"
    return name, worst, _relative(worst, scale)


def _read_rows(storage: Storage, rows: np.ndarray, at: Optional[Tuple[int, int]]) -> np.ndarray:
    """`Storage.read_rows`, straight from the open file when the tensor lies there in place (`at`:
    descriptor, offset): a row is then one run of bytes, read with one call, where HDF5 would
    build a selection of every row first."""
    if at is None:
        return storage.read_rows(rows)
    fd, offset = at
    values = np.empty((len(rows), storage.shape[-1]), storage.dtype)
    size = values.shape[1] * values.itemsize
    for k, row in enumerate(rows):
        if os.preadv(fd, [values[k]], offset + int(row) * size) != size:
            raise WeightportError(storage.file, "changed or truncated while being verified",
                                  "convert again once the file is complete and no longer being written")
    return values


def _compare_values(source: Storage, target: Storage, cast: Cast) -> Tuple[float, float]:
    """Element-by-element comparison, in bounded blocks of the first axis where there is more
    than one (the same values, maybe reshaped)."""
    if source.size != target.size:
        return float("inf"), float("inf")
    if source.shape != target.shape or source.ndim <= 1 or not source.size:
        return _errors(target.read().astype("float64").reshape(-1), cast.store(source.read()).reshape(-1))
    step = max(1, BLOCK_BYTES // max(1, source.size // source.shape[0] * source.dtype.itemsize * 8))
    worst_diff, scale = 0.0, 0.0
    for start in range(0, source.shape[0], step):
        want = cast.store(_leading(source, start, start + step))
        got = _leading(target, start, start + step).astype("float64")
        worst_diff, scale = max(worst_diff, _max_diff(got, want)), max(scale, _scale(want))
    return worst_diff, _relative(worst_diff, scale)


def _flatten(x: np.ndarray, order: str) -> np.ndarray:
    """Flatten channels_last windows (n, *spatial, c) in a given axis order."""
    canonical = canonical_order(x.ndim - 2)
    axes = [0] + [1 + canonical.index(a) for a in order]
    return x.transpose(axes).reshape(x.shape[0], -1)


def _leading(storage: Storage, start: int, stop: int) -> np.ndarray:
    """Indices `start` to `stop` of the first axis of a tensor of at least two (an `[start:stop]`
    slice), read as the rows they are."""
    shape = (min(stop, storage.shape[0]) - start,) + storage.shape[1:]
    if not storage.size:
        return np.empty(shape, storage.dtype)
    per_first = storage.size // storage.shape[0] // storage.shape[-1]
    return storage.read_rows(np.arange(start * per_first, (start + shape[0]) * per_first)).reshape(shape)


def _rows_dot(storage: Storage, rows: np.ndarray, cast: Optional[Cast] = None) -> np.ndarray:
    """rows (n, R) @ the tensor seen as (R, out), reading it in bounded blocks (its values as
    `cast` stores them: the source's, as the output's dtype holds them)."""
    shape = storage.shape
    out = shape[-1]
    per_first = int(np.prod(shape[1:-1], dtype=np.int64)) if len(shape) > 2 else 1
    step = max(1, BLOCK_BYTES // max(1, per_first * out * 8))
    total = np.zeros((rows.shape[0], out))
    for start in range(0, shape[0], step):
        block = _leading(storage, start, start + step)
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


def _errors(got: np.ndarray, want: np.ndarray) -> Tuple[float, float]:
    if got.shape != want.shape:
        return float("inf"), float("inf")
    diff = _max_diff(got, want)
    return diff, _relative(diff, _scale(want))
