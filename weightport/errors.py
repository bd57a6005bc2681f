"""The one exception type weightport raises for bad input.

Every refusal names the file, says what is wrong and what to do, so the CLI can print it as a
single line (`weightport: error: FILE: problem; hint`) and exit 2 instead of a traceback.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Optional, Union

__all__ = ["WeightportError", "printable"]

# What a terminal acts on or cannot show: control characters (a newline, ESC starting an escape
# sequence), format characters (bidirectional overrides, zero-width ones), line and paragraph
# separators, and lone surrogates (which cannot even be encoded to be written).
_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def printable(text: str) -> str:
    """`text` as it may reach a terminal: every character in `_UNSAFE` written as its Python escape
    (`\\n`, `\\x1b`, `\\u202e`), so a name read from a file can neither move the cursor, recolour
    the screen nor break a line of weightport's output into several (and forge one of them).
    Every name, path and message weightport prints goes through it; applying it twice changes nothing."""
    if text.isprintable():  # the usual case, checked in C
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNSAFE else ch for ch in text)


class WeightportError(Exception):
    """A problem with the user's input: which file, what is wrong, and what to do about it."""

    def __init__(self, file: Optional[Union[str, Path]], problem: str, hint: str = "", detail: str = "") -> None:
        self.file = str(file) if file is not None else None
        self.problem = problem
        self.hint = hint
        self.detail = detail  # optional lines shown after the one-line message (a side-by-side table)
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line message, without the `weightport: error:` prefix: one line whatever the
        file holds (names in it are escaped by `printable`)."""
        text = f"{self.file}: {self.problem}" if self.file else self.problem
        return printable(f"{text}; {self.hint}" if self.hint else text)
