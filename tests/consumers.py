"""Running the Keras consumers (tests/keras_consumer.py) over many outputs, one process each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from conftest import ROOT

SCRIPT = ROOT / "tests" / "keras_consumer.py"
# consumer name -> (module it imports, KERAS_BACKEND for Keras 3)
CONSUMERS = {"k3-tensorflow": ("keras", "tensorflow"), "k3-jax": ("keras", "jax"), "tf_keras": ("tf_keras", None)}


def run_consumers(jobs: Dict[str, List[dict]], folder: Path, timeout: int = 900) -> Dict[str, Dict[str, dict]]:
    """{consumer: [job, ...]} -> {consumer: {job id: result}}; the consumers run side by side."""
    running = {}
    for name, batch in jobs.items():
        if not batch:
            continue
        module, backend = CONSUMERS[name]
        job_file, result_file = folder / f"jobs-{name}.json", folder / f"results-{name}.json"
        job_file.write_text(json.dumps(batch))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **({"KERAS_BACKEND": backend} if backend else {}))
        process = subprocess.Popen([sys.executable, str(SCRIPT), module, str(job_file), str(result_file)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        running[name] = (process, result_file)
    results = {}
    for name, (process, result_file) in running.items():
        _, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"consumer {name} failed: {err[-2000:]}"
        document = json.loads(result_file.read_text())
        if CONSUMERS[name][1]:
            assert document["backend"] == CONSUMERS[name][1], f"{name} ran on {document['backend']}"
        results[name] = {r["id"]: r for r in document["results"]}
    return results
