"""Proving a conversion numerically, with numpy only.

Every tensor of every transplanted layer pair is checked by the rule that made it (`Rule.check`,
made of the pieces in `checks`: random inputs through both sides as each computes with them,
values compared element by element, sampled rows for big tensors), after the quick proof that
most tensors of a model get: the same bytes where the rule keeps every element in place. It
catches the classic mistakes: the flatten order swapped, a kernel transposed, a flip missing, a
layer paired with the wrong one. The worst error over a pair's tensors decides the pair.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import digests
from .checks import BLOCK_BYTES, At, Context
from .hdf5 import damaged_hdf5
from .planner import Plan, Step
from .rules import RULES
from .storage import Storage
from .transfer import keeps_order, open_data_files, raw_location
from .view import ModelView

__all__ = ["PairCheck", "DigestCheck", "Verification", "VerificationFailed", "verify_plan", "check_source_digest"]

FULL_CHECK_VALUES = 1 << 19  # tensors up to this many values are checked whole (<= 4 MiB as float64)
SAMPLED_ROWS = 64  # larger ones: this many random rows (window positions) and the first and last,
# compared exactly; a wrong order, transposition or shift moves nearly every row, so a few dozen
# catch it (a byte mover's edge cases are covered by its own tests, tests/test_transfer.py)


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
    context = Context(seed, FULL_CHECK_VALUES, SAMPLED_ROWS)
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
                    result = (_identical(step, source.storage, target.storage, at)
                              or RULES[step.rule].check(step, source.storage, target.storage, context, at))
            by_layer.setdefault((step.source_layer, step.target_layer), []).append(result)
    pairs = []
    for (src, tgt), results in by_layer.items():
        max_abs = max(r[1] for r in results)
        max_rel = max(r[2] for r in results)
        ok = all(r[1] <= atol or r[2] <= rtol for r in results)
        pairs.append(PairCheck(src, tgt, sorted({r[0] for r in results}), max_abs, max_rel, ok))
    return Verification(pairs, atol, rtol)


def _identical(step: Step, src: Storage, tgt: Storage, at: At) -> Optional[Tuple[str, float, float]]:
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
