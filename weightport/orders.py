"""Flatten orders: strings over a window's logical axes, spatial letters ("w" for 1-D, "hw" for
2-D, "dhw" for 3-D) and "c" for channels. "hwc" is the order of a channels_last Flatten, "chw"
that of a raw channels-first flatten (and of PyTorch's flatten of an NCHW tensor), "cwh" that of
Permute((3, 2, 1)) + Flatten. The rules, their checks and the head analysis all speak them.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["SPATIAL", "canonical_order", "check_order", "parse_source_order"]

SPATIAL = {1: "w", 2: "hw", 3: "dhw"}


def canonical_order(rank: int) -> str:
    """The target conv's (channels_last) window order for a spatial rank: 'hwc' for 2-D."""
    return SPATIAL[rank] + "c"


def check_order(order: str, rank: int) -> None:
    """Refuse an order that is not a permutation of the window's axes (ValueError)."""
    if sorted(order) != sorted(canonical_order(rank)):
        raise ValueError(f"flatten order '{order}' is not a permutation of '{canonical_order(rank)}'")


def parse_source_order(order: Optional[str], rank: int) -> Optional[str]:
    """`--source-order hwc|chw` in the window's rank: 'chw' is 'cw' in 1-D, 'cdhw' in 3-D."""
    if order is None:
        return None
    mapped = {"hwc": canonical_order(rank), "chw": "c" + SPATIAL[rank]}.get(order, order)
    check_order(mapped, rank)
    return mapped
