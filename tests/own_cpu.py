"""The CPU time of a piece of in-process work, and of nothing else the test worker does.

`time.process_time()` in a pytest-xdist worker counted two things that are not the work, and
both grow with the load of a full run, not with the input:
- the worker's other threads (execnet's, the BLAS pools' spin-waits: wall time on a busy machine);
- the cyclic garbage collector's passes over everything the worker already holds. Parsing a
  big JSON document makes hundreds of thousands of containers, enough to set off full
  collections; in a worker that has imported torch, TensorFlow and Keras (640,000 objects
  before any model is built) each pass costs 0.3-0.7 s: a 3.4 MB model config parsed in 0.1 s
  took 0.6-0.7 s, a 20,000-tensor safetensors header 0.04 s or 0.3 s, by when a pass fell.
`OwnCPU` counts the calling thread only (the work is single-threaded: weightport's one other
thread, the source digest's, is bounded by the real-process tests, whose child's CPU is all of
it), with the objects that existed before the work frozen out of the collector's reach
(`gc.freeze`), so a pass walks only what the work itself made, as it would in a user's process.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class OwnCPU:
    """`with OwnCPU() as cpu: work()`, then `cpu.seconds`: the calling thread's CPU time for the work."""

    seconds: float

    def __enter__(self) -> "OwnCPU":
        gc.freeze()
        self._start = time.thread_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.thread_time() - self._start
        gc.unfreeze()
