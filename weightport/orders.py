"""Flatten orders: strings over a window's logical axes, spatial letters ("w" for 1-D, "hw" for
2-D, "dhw" for 3-D) and "c" for channels. "hwc" is the order of a channels_last Flatten, "chw"
that of a raw channels-first flatten (and of PyTorch's flatten of an NCHW tensor), "cwh" that of
Permute((3, 2, 1)) + Flatten. The rules, their checks and the head analysis all speak them.
"""

from __future__ import annotations

__all__ = ["SPATIAL", "canonical_order", "check_order"]

SPATIAL = {1: "w", 2: "hw", 3: "dhw"}


def canonical_order(rank: int) -> str:
    """The target conv's (channels_last) window order for a spatial rank: 'hwc' for 2-D."""
    return SPATIAL[rank] + "c"


def check_order(order: str, rank: int) -> None:
    """Refuse an order that is not a permutation of the window's axes (ValueError)."""
    if sorted(order) != sorted(canonical_order(rank)):
        raise ValueError(f"flatten order '{order}' is not a permutation of '{canonical_order(rank)}'")
