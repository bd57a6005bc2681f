"""What a change of dtype may cost: the target dtype's own rounding, and nothing more.

A conversion moves values; it never quantizes them. float32 -> float16 rounds each value to
the nearest float16 (a relative error up to half of float16's epsilon, an absolute one up to
half its smallest subnormal), which is allowed; a value beyond float16's range becoming inf is
not, and float -> an integer destroys the weights (an int8 kernel of a trained model is nearly
all zeros): the planner refuses it and the verification fails it. One rule for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

__all__ = ["Cast", "cast_to", "CastLost"]

DTypeLike = Union[str, np.dtype]


class CastLost(Exception):
    """Storing the source's values in the target dtype cost more than that dtype's rounding."""


@dataclass(frozen=True)
class Cast:
    """Storing source values in `dtype`: |stored - value| <= rel * |value| + abs for each value."""

    dtype: np.dtype
    rel: float
    abs: float
    lossless: bool  # every source value fits exactly (same dtype, or a wider one)

    @property
    def label(self) -> str:
        """How the check is qualified: "" when exact, else "within float16 rounding"."""
        return "" if self.lossless or not (self.rel or self.abs) else f"within {self.dtype.name} rounding"

    def store(self, values: np.ndarray) -> np.ndarray:
        """`values` as `dtype` holds them, in float64; CastLost if any moved beyond the rounding
        (a value beyond the dtype's range, an integer wrapped)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a value out of range: reported below, not warned
            stored = values.astype(self.dtype)
        if not self.lossless:
            self._check(np.asarray(values, "float64"), np.asarray(stored, "float64"))
        return np.asarray(stored, "float64")

    def _check(self, values: np.ndarray, stored: np.ndarray) -> None:
        same = (stored == values) | (np.isnan(stored) & np.isnan(values))
        with np.errstate(invalid="ignore"):
            moved = ~same & ~(np.abs(stored - values) <= self.rel * np.abs(values) + self.abs)
        if moved.any():
            raise CastLost(f"{values[moved].flat[0]!r} stored as {stored[moved].flat[0]!r}")


def cast_to(source: DTypeLike, target: DTypeLike) -> Optional[Cast]:
    """The cast from `source` values to `target`; None when `target` cannot hold weights at all
    (a float source into an integer or boolean target)."""
    source, target = np.dtype(source), np.dtype(target)
    if target.kind != "f":
        if source == target or (source.kind in "iub" and target.kind in "iu"):
            return Cast(target, 0.0, 0.0, lossless=source == target or np.can_cast(source, target, "safe"))
        return None
    info = np.finfo(target)
    wider = source == target or np.can_cast(source, target, "safe")
    return Cast(target, float(info.eps) / 2, float(info.smallest_subnormal) / 2, lossless=wider)
