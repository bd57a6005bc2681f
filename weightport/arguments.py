"""The arguments of a call, checked in one place for the API and the command line alike.

A wrong type or an odd value (a fractional window size, `compression=5`, `atol="x"`, a path
that is not one) is bad input: `WeightportError`, named as the API names it (the command line's
parsers only ever pass values of the right type, and say the same through `argparse`), never a
TypeError or ValueError from deep inside. `PlanOptions` checks the target options with these.
"""

from __future__ import annotations

import math
import numbers
import os

from .errors import WeightportError

TYPE_CHECKING = False  # typing is not imported at run time: the command line's options are declared with these (weightport.options)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Tuple

__all__ = ["path", "window", "source_order", "flag", "tolerance", "compression", "progress", "SOURCE_ORDERS"]

SOURCE_ORDERS = ("hwc", "chw")


def path(what: str, value: Any, optional: bool = False) -> Optional[str]:
    """A file path (str or os.PathLike) as a string; None allowed when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        text = os.fspath(value)
        if isinstance(text, str) and text and "\0" not in text:
            return text
    raise WeightportError(None, f"{what} is {_shown(value)}, not a file path", f"give {what} as a str or pathlib.Path")


def window(value: Any) -> Optional[Tuple[int, ...]]:
    """`flatten`: (L, C), (H, W, C) or (D, H, W, C), positive whole numbers; None when not given."""
    if value is None:
        return None
    sizes = list(value) if isinstance(value, (list, tuple)) else None
    if sizes is None or not 2 <= len(sizes) <= 4 or not all(_whole(n) and 0 < n < 2**31 for n in sizes):
        raise WeightportError(None, f"flatten={_shown(value)} is not a window", "give flatten=(H, W, C) (or (L, C), (D, H, W, C)), positive whole numbers")
    return tuple(int(n) for n in sizes)


def source_order(value: Any) -> Optional[str]:
    """`source_order`: "hwc" or "chw" (None: from the config)."""
    if value is None or (isinstance(value, str) and value in SOURCE_ORDERS):
        return value
    raise WeightportError(None, f"source_order={_shown(value)} is not a flatten order", 'give source_order="hwc" or "chw", or leave it out')


def flag(what: str, value: Any) -> bool:
    """A yes/no argument: True or False, nothing else (a string "no" would be true)."""
    if isinstance(value, bool):
        return value
    raise WeightportError(None, f"{what} is {_shown(value)}, not True or False", f"give {what}=True or {what}=False")


def tolerance(what: str, value: Any) -> float:
    """`atol` / `rtol`: a finite number >= 0."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) and float(value) >= 0:
        return float(value)
    raise WeightportError(None, f"{what}={_shown(value)} is not a tolerance", f"give {what} as a finite number >= 0, e.g. {what}=1e-5")


def compression(value: Any) -> Optional[str]:
    """`compression`: "gzip", "gzip=LEVEL" or "lzf" (None: contiguous, uncompressed)."""
    from .compression import compression_filter

    if value is not None and not isinstance(value, str):
        raise WeightportError(None, f"compression={_shown(value)} is not a compression", 'give compression="gzip", "gzip=LEVEL" (0-9) or "lzf"')
    compression_filter(value)
    return value


def progress(value: Any) -> Optional[Callable[[int, int], None]]:
    """`progress`: a callable taking (bytes written, total), or None."""
    if value is None or callable(value):
        return value
    raise WeightportError(None, f"progress={_shown(value)} is not callable", "give a function progress(done, total), or leave it out")


def _whole(n: Any) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def _shown(value: Any) -> str:
    """The value as the message shows it: short, and one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
