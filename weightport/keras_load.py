"""The final check of a whole-model output: the Keras it targets loads it, in a child process.

A `.keras` archive or a full legacy `.h5` is only worth writing if that Keras can load it, and
no numpy check proves that (a key Keras needs in the config, a shape it cannot build). So
`convert` hands the finished temporary file to a separate Python process that calls
`load_model`: the CLI itself never imports TensorFlow, and a crash inside Keras (an abort, an
out-of-memory kill) is reported instead of taking weightport down. When the output does not
load, the child also tries the source: if that does not load either, the model needs code this
environment lacks (a custom layer) and the input is refused; if it does, weightport wrote
something wrong and says so.

Run as a script (`python keras_load.py PARENT_PID MODULE OUT SOURCE [CONFIG]`) this file imports nothing
but the Keras it is asked for, so the child needs no weightport on its path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["LoadFailed", "first_line", "keras_of", "load_in_keras"]

TIMEOUT = 600  # seconds: importing TensorFlow alone takes 5-20 s on a busy machine
_NAMES = {"keras": "Keras 3", "tf_keras": "tf_keras"}


class LoadFailed(Exception):
    """Keras could not load what weightport wrote from a source it loads: weightport's fault.
    `plan` is the conversion that was written and verified before the load failed."""

    plan: Any = None


def keras_of(view: Any) -> str:
    """The Keras whose config a file (or its sidecar) holds, and so the one a whole model
    written from it is for: "keras" (Keras 3) or "tf_keras" (the Keras 2 line). The recorded
    version decides; without one (a `.weights.h5` with a sidecar config), the config's own
    marks: Keras 3 writes an input's `batch_shape` and `DTypePolicy` dtypes, Keras 2
    `batch_input_shape` and dtype names."""
    version = view.keras_version or (view.config.keras_version if view.config is not None else None)
    if version:
        return "keras" if version.startswith("3") else "tf_keras"
    if view.layout == "keras-archive":
        return "keras"
    layers = view.config.layers if view.config is not None else []
    marked = any("batch_shape" in layer.config or _is_policy(layer.config.get("dtype")) for layer in layers)
    return "keras" if marked else "tf_keras"


def _is_policy(dtype: Any) -> bool:
    return isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy"


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it."""
    return importlib.util.find_spec(module) is not None


def load_in_keras(module: str, written: Path, out: Path, source: str, config: Optional[str]) -> Optional[str]:
    """Load `written` (the temporary file that becomes `out`) with `module`'s `load_model`.

    Returns what loaded it ("Keras 3 3.15.1 (tensorflow backend)"), or None when `module` is
    not installed. Raises `LoadFailed` when it does not load and the source does, and a
    `WeightportError` when neither loads (the model needs code this environment lacks)."""
    from .errors import WeightportError

    if not installed(module):
        return None
    with tempfile.TemporaryDirectory(prefix="weightport-load-") as folder:
        named = Path(folder) / out.name  # Keras picks the format by the file's suffix; the temporary has none
        named.symlink_to(Path(written).resolve())
        report = _run_child(module, named, source, config)
    if report.get("ok"):
        return f"{_NAMES[module]} {report['version']} ({report['backend']} backend)"
    what = f"{_NAMES[module]} {report.get('version', '')}".strip()
    if report.get("source_error"):
        raise WeightportError(source, f"{what} cannot load this model here ({report['source_error']}), so the whole model written from it cannot be checked",
                              "write the weights only (-o OUT.weights.h5 or OUT.h5) and build the twin in code, or pass --no-verify")
    raise LoadFailed(f"{what} cannot load what weightport wrote ({report['error']}), though it loads the source")


def _run_child(module: str, named: Path, source: str, config: Optional[str]) -> Dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), module, str(named), str(Path(source).resolve()),
               str(Path(config).resolve()) if config else ""]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LoadFailed(f"{_NAMES[module]} did not finish loading the output in {TIMEOUT} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise LoadFailed(f"{_NAMES[module]} crashed loading the output (exit status {done.returncode}: {last})")
    return json.loads(lines[-1])


# --- the child ----------------------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def _load_source(K: Any, source: str, config: str) -> None:
    if not config:
        K.models.load_model(source, compile=False)
        return
    with open(config, encoding="utf-8") as fh:
        model = K.models.model_from_json(fh.read())
    model.load_weights(source)


def _safe_mode(module: str) -> Any:
    """Keras's safe mode (no stored Lambda code loaded), which legacy `.h5` loading honours only
    inside this scope; the parent has already declined to load a config holding code."""
    import contextlib
    import importlib

    try:
        return importlib.import_module(f"{module}.src.saving.serialization_lib").SafeModeScope(True)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _end_with_parent(parent: int) -> None:
    """End this child when weightport ends. Killed or timed out by a pipeline, weightport can
    no longer time the child out, and a Keras load can run for many minutes (a Sequential model
    of thousands of layers), or block for ever (a file that is a pipe) holding the GIL. Linux
    kills the child itself on the parent's death; elsewhere a thread watches for it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # gone before the watch began
        os._exit(3)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def _child(module: str, out: str, source: str, config: str) -> Dict[str, Any]:
    K = __import__(module)
    report: Dict[str, Any] = {"version": K.__version__, "backend": K.backend.backend()}
    try:
        with _safe_mode(module):
            K.models.load_model(out, compile=False)
        return dict(report, ok=True)
    except Exception as exc:  # Keras's refusal, whatever its type: reported, then the source is tried
        report.update(ok=False, error=first_line(exc))
    try:
        with _safe_mode(module):
            _load_source(K, source, config)
    except Exception as exc:
        report["source_error"] = first_line(exc)
    return report


if __name__ == "__main__":
    del sys.path[0]  # this file's folder: weightport's modules must not shadow what Keras imports
    _end_with_parent(int(sys.argv[1]))
    print(json.dumps(_child(*sys.argv[2:6])))
