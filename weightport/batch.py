"""Converting many files (checkpoint sweeps): each independently, in parallel if asked.

One bad file is reported and the others are still converted. Each job runs the same
`convert` + numpy `verify` as a single conversion; results come back as plain data so they
can cross process boundaries.
"""

from __future__ import annotations

import concurrent.futures
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import WeightportError

__all__ = ["Job", "Outcome", "run_jobs", "out_path", "exit_status"]


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
    from .verification import VerificationFailed

    try:
        convert(job.source, job.out, verify=verify, **options)
        return Outcome(job, 0, f"wrote {job.out}" + (" (verified)" if verify else ""))
    except VerificationFailed as failed:
        return Outcome(job, 1, f"weightport: {job.out} not written: {failed}")
    except WeightportError as exc:
        return Outcome(job, 2, f"weightport: error: {exc.line()}")
    except Exception as exc:  # reported per file; the sweep goes on
        detail = traceback.format_exc() if debug else ""
        return Outcome(job, 1, f"{detail}weightport: internal error: {job.source}: {type(exc).__name__}: {exc} (rerun with --debug)")


def run_jobs(jobs: List[Job], options: Dict[str, Any], verify: bool, workers: int, debug: bool,
             on_done: Optional[Callable[[Outcome], None]] = None) -> List[Outcome]:
    """Run every job, `workers` at a time, calling `on_done` as each finishes."""
    outcomes: List[Outcome] = []

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    if workers <= 1:
        for job in jobs:
            done(convert_one(job, options, verify, debug))
        return outcomes
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(convert_one, job, options, verify, debug) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                done(future.result())
        except BaseException:  # Ctrl-C, a reader gone away: the queued files are not started
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outcomes


def exit_status(outcomes: Iterable[Outcome]) -> int:
    """1 if any job failed inside weightport or its verification, else 2 if any input was refused, else 0."""
    statuses = {o.status for o in outcomes}
    return 1 if 1 in statuses else 2 if 2 in statuses else 0
