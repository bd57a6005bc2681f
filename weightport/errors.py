"""The one exception type weightport raises for bad input.

Every refusal names the file, says what is wrong and what to do, so the CLI can print it as a
single line (`weightport: error: FILE: problem; hint`) and exit 2 instead of a traceback.
"""

from __future__ import annotations

import functools
import re
import unicodedata

TYPE_CHECKING = False  # typing and pathlib are not imported at run time: every command, `--version` too, starts here
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, Optional, TypeVar, Union

    Function = TypeVar("Function", bound=Callable[..., Any])

__all__ = ["WeightportError", "printable", "in_api_terms", "speaks_api"]

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


# The command line's options as the Python API names them, for messages raised to an API caller:
# the CLI says `pass --force`, the API `pass force=True`. Values first, then the bare options.
_API_TERMS = [
    (re.compile(r"--flatten (\w+(?:,\w+)+)"), lambda m: f"flatten=({', '.join(m.group(1).split(','))})"),
    (re.compile(r"--(map|units) ([^\s=]+)=(\S+?)(:?)(?=\s|$|,|\))"), lambda m: f"{m.group(1).rstrip('s')}s={{{m.group(2)!r}: {m.group(3)!r}}}{m.group(4)}"),
    (re.compile(r"--(skip|drop) (it|the target layer|the source layer)\b"), lambda m: f"add {m.group(2)} to {m.group(1)}s"),
    (re.compile(r"--(skip|drop) ([A-Z]+)\b"), lambda m: f"{m.group(1)}s=[{m.group(2)!r}]"),
    (re.compile(r"-o (\S+) --full-model"), lambda m: f"out={m.group(1)!r}, full_model=True"),
    (re.compile(r"--config (\S+\.json)"), lambda m: f"config={m.group(1)!r}"),
    (re.compile(r"--(force|full-model|flip-kernels|align|score-map)\b"), lambda m: f"{m.group(1).replace('-', '_')}=True"),
    (re.compile(r"--no-verify\b"), lambda m: "verify=False"),
    (re.compile(r"--(map|skip|drop)\b"), lambda m: f"{m.group(1)}s"),
    (re.compile(r"--(units|flatten|config|target|source-order|compression)\b"), lambda m: m.group(1).replace("-", "_")),
]


def in_api_terms(text: str) -> str:
    """`text`, written with the command line's options, in the Python API's argument names."""
    for pattern, replace in _API_TERMS:
        text = pattern.sub(replace, text)
    return text


class WeightportError(Exception):
    """A problem with the user's input: which file, what is wrong, and what to do about it.

    Messages are written in the command line's terms (`--force`); `terms = "api"` (set as the
    error leaves a public API function) shows them in the API's (`force=True`)."""

    def __init__(self, file: Optional[Union[str, Path]], problem: str, hint: str = "", detail: str = "") -> None:
        self.file = str(file) if file is not None else None
        self.problem = problem
        self.hint = hint
        self.detail = detail  # optional lines shown after the one-line message (a side-by-side table)
        self.terms = "cli"
        super().__init__(self.line())

    def line(self, terms: Optional[str] = None) -> str:
        """The one-line message, without the `weightport: error:` prefix, in `terms` ("cli" or
        "api"; default: the error's own): one line whatever the file holds (names in it are
        escaped by `printable`)."""
        problem, hint = (self.problem, self.hint) if (terms or self.terms) == "cli" else (in_api_terms(self.problem), in_api_terms(self.hint))
        text = f"{self.file}: {problem}" if self.file else problem
        return printable(f"{text}; {hint}" if hint else text)

    def __str__(self) -> str:
        return self.line()


def speaks_api(function: "Function") -> "Function":
    """A public API function: a WeightportError leaving it speaks in the API's terms (`force=True`).
    The command line calls the same functions and prints `line("cli")`."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except WeightportError as exc:
            exc.terms = "api"
            raise
    return call  # type: ignore[return-value]
