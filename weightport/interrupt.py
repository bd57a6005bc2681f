"""Stopping cleanly: SIGTERM and SIGHUP end a command as Ctrl-C does.

Their default action kills the process where it stands, which leaves a half-written temporary
beside OUT. Raised as `Interrupted` (a `KeyboardInterrupt`) instead, they run every `finally`
on the way out: temporaries are removed, files closed. Once one has arrived the others are
ignored, so that this cleanup is not itself cut short. A signal that was ignored when the
process started (`nohup`, a background job's SIGINT) stays ignored.
"""

from __future__ import annotations

import signal
TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Callable, Optional

__all__ = ["Interrupted", "STOP_SIGNALS", "install", "exit_status"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The command was told to stop by `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    ignore()
    raise Interrupted(signum)


def ignore() -> None:
    """Ignore the stop signals from now on (the command is already stopping)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def install(handler: Optional[Callable[[int, object], None]] = None) -> None:
    """Route the stop signals to `handler` (default: raise `Interrupted`). Main thread only."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler or _stop)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended (130 for Ctrl-C)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)
