"""`--units LAYER=SPEC`: keep only some output units of a layer (its kernel's output axis and its bias).

A 1001-way classifier (background + 1000) goes into a 1000-way target with `1:1001`; a class
subset to fine-tune on is a list, `0,5,9`. A SPEC is kept as the user wrote it, normalised
(`START:STOP` or `a,b,c`), so the plan stays short and readable; `resolve` turns it into the
unit indices once the layer's unit count is known.
"""

from __future__ import annotations

from typing import List, Sequence, Union

import numpy as np

__all__ = ["Spec", "normalize", "resolve", "select"]

Spec = Union[str, Sequence[int]]


def normalize(spec: Spec) -> str:
    """The canonical text of a SPEC (`1:1001`, `0,5,9`); ValueError says what is wrong.

    Example:
        >>> normalize(" 1 : 11 "), normalize([0, 5, 9])
        ('1:11', '0,5,9')
    """
    if not isinstance(spec, str):
        return normalize(",".join(str(i) for i in spec)) if _all_ints(spec) else _bad(spec)
    text = spec.replace(" ", "")
    if ":" in text:
        start, _, stop = text.partition(":")
        if not _natural(start or "0") or not _natural(stop or "0"):
            _bad(spec)
        if start and stop and int(start) >= int(stop):
            raise ValueError(f"'{spec}' keeps no unit (START must be below STOP)")
        return f"{int(start) if start else ''}:{int(stop) if stop else ''}"
    parts = text.split(",")
    if not text or not all(_natural(p) for p in parts):
        _bad(spec)
    indices = [int(p) for p in parts]
    if len(set(indices)) != len(indices):
        raise ValueError(f"'{spec}' names a unit twice")
    return ",".join(map(str, indices))


def resolve(spec: str, count: int) -> List[int]:
    """The unit indices a normalised SPEC keeps out of `count`; ValueError when out of range or empty."""
    if ":" in spec:
        start, _, stop = spec.partition(":")
        first, last = int(start or 0), int(stop or count)
        if last > count or first >= last:
            raise ValueError(f"'{spec}' is outside the layer's {count} units (0 to {count - 1})" if last > count or first >= count
                             else f"'{spec}' keeps no unit")
        return list(range(first, last))
    indices = [int(p) for p in spec.split(",")]
    beyond = [i for i in indices if i >= count]
    if beyond:
        raise ValueError(f"unit {beyond[0]} is outside the layer's {count} units (0 to {count - 1})")
    return indices


def select(array: np.ndarray, spec: str, axis: int = -1) -> np.ndarray:
    """The array with only the kept units along `axis`: a Keras kernel's last, a PyTorch
    weight's first (its `out`; a transposed conv's (in, out, *k): its second)."""
    return np.ascontiguousarray(np.take(array, resolve(spec, array.shape[axis]), axis=axis))


def _natural(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _all_ints(values: Sequence[object]) -> bool:
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values)


def _bad(spec: object) -> str:
    raise ValueError(f"'{spec}' is not a SPEC: give START:STOP (a slice) or a list like 0,5,9")
