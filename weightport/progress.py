"""Progress bars on a terminal for long work, silence everywhere else (pipes, CI, --quiet).

Uses tqdm rather than a hand-written bar; imported only when a bar is actually shown.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional

__all__ = ["byte_progress", "file_progress", "LONG_WORK_BYTES"]

LONG_WORK_BYTES = 256 << 20  # below this a conversion takes well under a second: no bar


def _terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def byte_progress(enabled: bool, label: str) -> Iterator[Optional[Callable[[int, int], None]]]:
    """A `progress(bytes_just_written, total_bytes)` callback drawing a bar, or None when not shown."""
    if not (enabled and _terminal()):
        yield None
        return
    from tqdm import tqdm

    bar = None

    def progress(step: int, total: int) -> None:
        nonlocal bar
        if bar is None and total >= LONG_WORK_BYTES:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False)
        if bar is not None:
            bar.update(step)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


class _Files:
    """Per-file messages and a bar over the files of a sweep."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def write(self, message: str, error: bool) -> None:
        stream = sys.stderr if error else sys.stdout
        if self.bar is not None:
            self.bar.write(message, file=stream)
        else:
            print(message, file=stream)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


@contextlib.contextmanager
def file_progress(count: int, enabled: bool) -> Iterator[_Files]:
    """A bar over `count` files on a terminal; plain lines otherwise."""
    if not (enabled and _terminal() and count > 1):
        yield _Files(None)
        return
    from tqdm import tqdm

    with tqdm(total=count, unit="file", desc="converting") as bar:
        yield _Files(bar)
