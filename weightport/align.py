"""An order-preserving alignment of two layer lists, as a diff aligns two files' lines.

Layer i of the source and layer j of the target may pair only where `allowed(i, j)` (for the
planner: a rule makes every tensor of the pair exact). The alignment pairs as many layers as
possible without crossing, like a longest common subsequence. It must be the only one that
does: where two alignments pair equally many layers differently, guessing could pair a layer
with a look-alike, so the layers whose partner differs between them are named instead
(`Ambiguous`). Optimal alignments are counted, not enumerated, so this costs O(n m).
"""

from __future__ import annotations

from typing import Callable, List, Tuple

__all__ = ["Ambiguous", "align"]

Table = List[List[int]]


class Ambiguous(Exception):
    """Several alignments pair equally many layers: the source and target positions in doubt."""

    def __init__(self, sources: List[int], targets: List[int]) -> None:
        self.sources, self.targets = sources, targets
        super().__init__(f"source layers {sources} and target layers {targets} pair differently in equally good alignments")


def align(n: int, m: int, allowed: Callable[[int, int], bool]) -> List[Tuple[int, int]]:
    """The one alignment of lists of `n` and `m` layers pairing the most: (i, j) pairs in order.

    Example:
        >>> align(3, 4, lambda i, j: "abc"[i] == "axbc"[j])
        [(0, 0), (1, 2), (2, 3)]
        >>> align(1, 2, lambda i, j: True)  # either target layer could take source layer 0
        Traceback (most recent call last):
        ...
        weightport.align.Ambiguous: source layers [0] and target layers [0, 1] pair differently in equally good alignments
    """
    ok = [[allowed(i, j) for j in range(m)] for i in range(n)]
    best, count = _tables(ok, n, m)
    if count[0][0] > 1:
        raise Ambiguous(*_in_doubt(ok, n, m, best, count))
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if ok[i][j] and best[i + 1][j + 1] + 1 == best[i][j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i + 1][j] == best[i][j]:
            i += 1
        else:
            j += 1
    return pairs


def _tables(ok: List[List[bool]], n: int, m: int) -> Tuple[Table, Table]:
    """best[i][j]: the most pairs aligning source[i:] with target[j:]; count[i][j]: how many
    distinct alignments (sets of pairs) reach it. Every alignment leaves source i unpaired (A),
    target j unpaired (B), or pairs them (C); A and B overlap in those leaving both, and an
    order-preserving alignment cannot pair both i and j elsewhere, so |A| + |B| - |A and B| + |C|."""
    best = [[0] * (m + 1) for _ in range(n + 1)]
    count = [[1] * (m + 1) for _ in range(n + 1)]
    for i in reversed(range(n)):
        for j in reversed(range(m)):
            paired = best[i + 1][j + 1] + 1 if ok[i][j] else -1
            top = max(best[i + 1][j], best[i][j + 1], paired)
            ways = (count[i + 1][j] if best[i + 1][j] == top else 0) + (count[i][j + 1] if best[i][j + 1] == top else 0)
            ways -= count[i + 1][j + 1] if best[i + 1][j + 1] == top else 0
            ways += count[i + 1][j + 1] if paired == top else 0
            best[i][j], count[i][j] = top, ways
    return best, count


def _in_doubt(ok: List[List[bool]], n: int, m: int, best: Table, count: Table) -> Tuple[List[int], List[int]]:
    """The positions whose outcome (a partner, or none) differs between optimal alignments."""
    before, before_count = _tables([row[::-1] for row in ok[::-1]], n, m)  # on the reversed lists: prefixes
    total, ways = best[0][0], count[0][0]
    through = [[before_count[n - i][m - j] * count[i + 1][j + 1]
                if ok[i][j] and before[n - i][m - j] + 1 + best[i + 1][j + 1] == total else 0 for j in range(m)] for i in range(n)]

    def doubtful(counts: List[int]) -> bool:
        outcomes = sum(1 for c in counts if c) + (1 if sum(counts) < ways else 0)
        return outcomes > 1

    sources = [i for i in range(n) if doubtful(through[i])]
    targets = [j for j in range(m) if doubtful([through[i][j] for i in range(n)])]
    return sources, targets
