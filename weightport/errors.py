"""The one exception type weightport raises for bad input.

Every refusal names the file, says what is wrong and what to do, so the CLI can print it as a
single line (`weightport: error: FILE: problem; hint`) and exit 2 instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

__all__ = ["WeightportError"]


class WeightportError(Exception):
    """A problem with the user's input: which file, what is wrong, and what to do about it."""

    def __init__(self, file: Optional[Union[str, Path]], problem: str, hint: str = "", detail: str = "") -> None:
        self.file = str(file) if file is not None else None
        self.problem = problem
        self.hint = hint
        self.detail = detail  # optional lines shown after the one-line message (a side-by-side table)
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line message, without the `weightport: error:` prefix."""
        text = f"{self.file}: {self.problem}" if self.file else self.problem
        return f"{text}; {self.hint}" if self.hint else text
