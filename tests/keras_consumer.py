"""A Keras that loads weightport's outputs and compares them with the source models, run as
`python keras_consumer.py MODULE JOBS.json RESULTS.json` in its own process.

One process per consumer (Keras 3 with the backend KERAS_BACKEND names before it is imported,
or tf_keras) goes through many jobs, so TensorFlow or JAX is imported once. Each job names the
output (a whole model, or weights with the twin's config to build it from), a reference model
this Keras can load holding the same weights as the source, and the training input shape. The
twin is compared with the reference at the training size (its map is 1x1) and, when its input
accepts other sizes, on an input twice as large on every free axis, window by window: the
twin's score at each map position against the reference run on the crop under it (a twin that
keeps a global pooling gives one score, compared with the reference on the whole input).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _load(K: Any, job: Dict[str, Any]) -> Any:
    if job.get("twin_json"):
        with open(job["twin_json"], encoding="utf-8") as fh:
            model = K.models.model_from_json(fh.read())
        model.load_weights(job["output"])
        return model
    return K.models.load_model(job["output"], compile=False)


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False)).astype("float64")


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def _opened(model: Any, free: List[int]) -> Any:
    """The same model and weights with its input open on the `free` axes (no batch axis)."""
    config = json.loads(model.to_json())
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key in ("batch_shape", "batch_input_shape"):
                if isinstance(node.get(key), list):
                    node[key] = [None if i - 1 in free else n for i, n in enumerate(node[key])]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    K = sys.modules[type(model).__module__.split(".")[0]]
    opened = K.models.model_from_json(json.dumps(config))
    opened.set_weights(model.get_weights())
    return opened


def _windows(twin: Any, reference: Any, train: List[int], dtype: str, map_first: bool, rng: np.random.Generator) -> Optional[Dict[str, Any]]:
    """Twin on an input twice as large on its free axes vs the reference on every window."""
    free = [i for i, n in enumerate(twin.input_shape[1:]) if n is None]
    if not free:
        return None
    big = [n * 2 if i in free else n for i, n in enumerate(train)]
    x = rng.standard_normal([1, *big]).astype(dtype)
    scores = _run(twin, x)[0]
    scores = np.moveaxis(scores, 0, -1) if map_first else scores  # (*map, classes)
    grid = scores.shape[:-1]
    moving = [a for a, m in enumerate(grid) if m > 1]
    if not moving:  # the twin keeps a global pooling: one score for the whole input, as the source gives
        got, want = scores.reshape(1, -1), _run(_opened(reference, free), x).reshape(1, -1)
        return {"input": big, "map": list(grid), "windows": 1, "rel_error": _error(got, want)}
    if len(moving) != len(free):
        return {"error": f"map {grid} from input {big}: {len(moving)} axes slide, {len(free)} input axes are free"}
    strides = {}
    for axis, a in zip(free, moving):
        step, rest = divmod(big[axis] - train[axis], grid[a] - 1)
        if rest:
            return {"error": f"map axis {a} of {grid[a]} does not tile input axis {axis} ({train[axis]} -> {big[axis]})"}
        strides[a] = (axis, step)
    crops, places = [], list(itertools.product(*(range(m) for m in grid)))
    for place in places:
        index = [slice(0, n) for n in train]
        for a, (axis, step) in strides.items():
            index[axis] = slice(place[a] * step, place[a] * step + train[axis])
        crops.append(x[0][tuple(index)])
    want = _run(reference, np.stack(crops)).reshape(len(places), -1)
    got = np.stack([scores[place] for place in places]).reshape(len(places), -1)
    return {"input": big, "map": list(grid), "windows": len(places), "rel_error": _error(got, want)}


def _job(K: Any, job: Dict[str, Any], references: Dict[str, Any]) -> Dict[str, Any]:
    result: Dict[str, Any] = {"id": job["id"]}
    try:
        twin = _load(K, job)
    except Exception as exc:  # the verdict this test is about
        return dict(result, loaded=False, error=_first_line(exc))
    result.update(loaded=True, input_shape=list(twin.input_shape))
    if job["reference"] not in references:
        references[job["reference"]] = K.models.load_model(job["reference"], compile=False)
    reference, rng = references[job["reference"]], np.random.default_rng(0)
    try:
        x = rng.standard_normal([2, *job["train"]]).astype(job["dtype"])
        want = _run(reference, x).reshape(2, -1)
    except Exception as exc:  # this Keras cannot run the source model itself (channels_first on a CPU)
        return dict(result, reference_error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    try:
        result["train_rel_error"] = _error(_run(twin, x).reshape(2, -1), want)
        result["big"] = _windows(twin, reference, job["train"], job["dtype"], job.get("map_first", False), rng)
    except Exception as exc:
        result["run_error"] = _first_line(exc)
    return result


def main(module: str, jobs_path: str, results_path: str) -> None:
    K = __import__(module)
    with open(jobs_path, encoding="utf-8") as fh:
        jobs = json.load(fh)
    references: Dict[str, Any] = {}
    results = []
    for job in jobs:
        try:
            results.append(_job(K, job, references))
        except Exception:  # a broken job is reported with its traceback, the others still run
            results.append({"id": job["id"], "loaded": False, "error": traceback.format_exc(limit=3)})
    with open(results_path, "w", encoding="utf-8") as fh:
        json.dump({"keras": K.__version__, "backend": K.backend.backend(), "results": results}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
