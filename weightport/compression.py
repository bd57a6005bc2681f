"""The `--compression` option: which HDF5 filters an output may use, parsed in one place.

Kept free of numpy and h5py so the command line can check the option before anything heavy
imports (and before the source's hash starts).
"""

from __future__ import annotations

from typing import Optional, Tuple

from .errors import WeightportError

__all__ = ["COMPRESSIONS", "compression_filter"]

COMPRESSIONS = ("gzip", "lzf")  # gzip is built into HDF5; lzf ships with h5py


def compression_filter(text: Optional[str]) -> Optional[Tuple[str, Optional[int]]]:
    """("gzip", level) or ("lzf", None) from "gzip", "gzip=LEVEL" (0-9) or "lzf", any case; None for None."""
    if text is None:
        return None
    name, sep, level = text.lower().partition("=")
    if name not in COMPRESSIONS or (sep and (name != "gzip" or not (level.isascii() and level.isdecimal()) or int(level) > 9)):
        raise WeightportError(None, f"unknown compression '{text}'", "give gzip, gzip=LEVEL (0-9) or lzf")
    return name, int(level) if sep else None
