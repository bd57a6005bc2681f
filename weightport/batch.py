"""Converting many files (checkpoint sweeps): each independently, in parallel if asked.

One bad file is reported and the others are still converted. Each job runs the same
`convert` + numpy `verify` as a single conversion; results come back as plain data so they
can cross process boundaries.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from . import interrupt
from .errors import WeightportError

__all__ = ["Job", "Outcome", "run_jobs", "out_path", "exit_status", "check_outputs", "worker_count"]

_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.2


@dataclass(frozen=True)
class Job:
    source: str
    out: str


@dataclass(frozen=True)
class Outcome:
    """How one job ended: status 0 ok, 1 internal error or failed verification, 2 bad input."""

    job: Job
    status: int
    message: str


def out_path(source: str, out_dir: Path) -> str:
    """The output of `source` in `out_dir`: the same file name, so the same format."""
    return str(out_dir / Path(source).name)


def convert_one(job: Job, options: Dict[str, Any], verify: bool, debug: bool) -> Outcome:
    """Convert (and verify) one file; never raises, so one failure does not stop a sweep."""
    from .api import convert
    from .keras_load import LoadFailed
    from .verification import VerificationFailed

    try:
        convert(job.source, job.out, verify=verify, **options)
        return Outcome(job, 0, f"wrote {job.out}" + (" (verified)" if verify else ""))
    except (VerificationFailed, LoadFailed) as failed:
        return Outcome(job, 1, f"weightport: {job.out} not written: {failed}")
    except WeightportError as exc:
        return Outcome(job, 2, f"weightport: error: {exc.line('cli')}")
    except Exception as exc:  # reported per file; the sweep goes on
        detail = traceback.format_exc() if debug else ""
        return Outcome(job, 1, f"{detail}weightport: internal error: {job.source}: {type(exc).__name__}: {exc} (rerun with --debug)")


def check_outputs(jobs: List[Job]) -> None:
    """Refuse, before anything is converted, two inputs that would be written to the same output."""
    seen: Dict[str, str] = {}
    for job in jobs:
        key = os.path.normcase(os.path.abspath(job.out))
        if key in seen:
            raise WeightportError(job.out, f"two inputs would be written here: {seen[key]} and {job.source}",
                                  "convert them into different folders (one --out-dir each); nothing was converted")
        seen[key] = job.source


def worker_count(asked: int, files: int) -> int:
    """`-j` capped at the number of files and of the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(asked, files, cores))


def run_jobs(jobs: List[Job], options: Dict[str, Any], verify: bool, workers: int, debug: bool,
             on_done: Optional[Callable[[Outcome], None]] = None) -> List[Outcome]:
    """Run every job, `workers` at a time, calling `on_done` as each finishes. Interrupted, it
    stops the workers (their current files cleaned up, the queued ones never started) and re-raises."""
    outcomes: List[Outcome] = []

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    if workers <= 1:
        for job in jobs:
            done(convert_one(job, options, verify, debug))
        return outcomes
    context = multiprocessing.get_context()
    stop = context.Event()
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                                                initargs=(os.getpid(), stop)) as pool:
        try:
            pending = {pool.submit(_work, job, options, verify, debug) for job in jobs}
            while pending:  # woken often: a stop signal taken by another thread is handled at once, not after the next file
                finished, pending = concurrent.futures.wait(pending, timeout=_WATCH_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    done(future.result())
        except BaseException:  # Ctrl-C, SIGTERM, a reader gone away: no file is started after this
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outcomes


# --- in a worker process ------------------------------------------------------------------

class _Worker:
    """A worker's state: its parent, whether it is converting a file, whether it was stopped."""

    parent = 0
    busy = False
    stopped = False


def _start_worker(parent: int, stop: Any) -> None:
    """Pool initializer: the worker stops when the command stops, and dies with it.

    Linux sends it SIGTERM when its parent dies (PR_SET_PDEATHSIG); a watcher thread also stops
    it when `stop` is set or the parent is gone (a system without prctl, a parent killed before it)."""
    _Worker.parent = parent
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)
    interrupt.install(_worker_signal)
    threading.Thread(target=_watch, args=(stop,), name="weightport-watch", daemon=True).start()


def _watch(stop: Any) -> None:
    """Stop the main thread's file once the command stops; once the parent is gone and that
    file is cleaned up, end the process (an idle worker waits on a queue nobody feeds)."""
    while not stop.wait(_WATCH_SECONDS) and os.getppid() == _Worker.parent:
        pass
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # to the main thread: its blocking call is interrupted
    while os.getppid() == _Worker.parent or _Worker.busy:
        time.sleep(_WATCH_SECONDS)  # a live parent ends its workers itself (pool shutdown)
    os._exit(128 + signal.SIGTERM)


def _worker_signal(signum: int, frame: object) -> None:
    """Stop taking files and abandon the current one, cleaned up on the way out. Later signals
    are no-ops: they must not cut that cleanup short."""
    if _Worker.stopped:
        return
    _Worker.stopped = True
    if _Worker.busy:
        raise interrupt.Interrupted(signum)


def _work(job: Job, options: Dict[str, Any], verify: bool, debug: bool) -> Outcome:
    """`convert_one` in a worker, unless the command was stopped."""
    interrupted = Outcome(job, 2, f"weightport: {job.source}: not converted, the command was interrupted")
    if _Worker.stopped:
        return interrupted
    _Worker.busy = True
    try:
        return convert_one(job, options, verify, debug)
    except KeyboardInterrupt:
        return interrupted
    finally:
        _Worker.busy = False


def exit_status(outcomes: Iterable[Outcome]) -> int:
    """1 if any job failed inside weightport or its verification, else 2 if any input was refused, else 0."""
    statuses = {o.status for o in outcomes}
    return 1 if 1 in statuses else 2 if 2 in statuses else 0
