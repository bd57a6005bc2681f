"""`verify --keras`: build both whole models in Keras and compare them end to end.

The only module that imports Keras, and only when called. Building a model from a file runs
whatever code the file's config can name, so configs are checked as data first: a Lambda layer
(stored Python bytecode or source) and a custom object (a class from outside Keras) are refused by
name before Keras is imported, a layer class Keras does not define before anything is built, and
every build runs in Keras's safe mode besides. The source model comes from its
own file (or its sidecar config); the twin from the output's own config when the output is a
whole model, else from the source config rewritten by `twinconfig`. Both run on the same
random inputs at the source's input size, where the twin's score map is 1x1. For a
global-pooling head the twin without its pooling is also compared, location by location, with
the source's own head layers applied to the features at every location.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .config import MODEL_CLASSES, ModelConfig
from .errors import WeightportError
from .head import analyze_head
from .keras_load import first_line, keras_of
from .readers import read
from .transfer import open_data_files
from .twinconfig import as_keras3, twin_config
from .view import ModelView

__all__ = ["Comparison", "EndToEnd", "check_end_to_end", "code_in"]

PathLike = Union[str, Path]


def _keras_for(view: ModelView) -> Any:
    """The Keras that wrote the source: Keras 3, or tf_keras (the Keras 2 line) for the rest."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up log would break the one-line reports
    try:
        return importlib.import_module(keras_of(view))
    except ImportError as exc:
        raise WeightportError(view.path, f"--keras needs Keras ({exc.name} is not installed)", 'pip install "weightport[keras]"') from None


_CODE_CLASSES = {"Lambda", "__lambda__"}  # objects whose config holds Python code (bytecode or a source string)
_HINT_CODE = "verify without --keras: the numpy verification runs nothing from the file"


def _objects(raw: Any) -> Iterator[Dict[str, Any]]:
    """Every serialized object (a dict with a `class_name`) in a config, found without recursion."""
    pending = [raw]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str):
                yield node
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def _keras_module(module: Any) -> bool:
    """A `module` Keras 3 records for its own objects (`keras.layers`, `builtins` for its functions)."""
    return module is None or module in ("keras", "tf_keras", "builtins") or str(module).startswith(("keras.", "tf_keras."))


def _refuse_code(config: Optional[ModelConfig], path: PathLike) -> None:
    """Refuse, from the config as data and before Keras is imported, what building it would run:
    a Lambda layer, or an object from outside Keras (a custom class or function)."""
    for node in _objects(config.raw if config is not None else None):
        cls, settings = node["class_name"], node.get("config")
        name = settings.get("name") if isinstance(settings, dict) else None
        label = f"'{name}' ({cls})" if isinstance(name, str) else f"'{cls}'"
        if cls in _CODE_CLASSES or node.get("function_type") == "lambda":
            raise WeightportError(path, f"the model config holds a Lambda layer {label}, whose stored code building the model would run", _HINT_CODE)
        registered = node.get("registered_name")
        if not _keras_module(node.get("module")) or (isinstance(registered, str) and registered != cls):
            raise WeightportError(path, f"the model config uses the custom object {label} from {node.get('module') or registered}, "
                                        "which --keras does not import", _HINT_CODE)


def _refuse_unknown(K: Any, config: Optional[ModelConfig], path: PathLike) -> None:
    """A layer class this Keras does not define is a custom object too: refused by name, not looked up."""
    for layer in config.layers if config is not None else []:
        if layer.class_name not in MODEL_CLASSES and not isinstance(getattr(K.layers, layer.class_name, None), type):
            raise WeightportError(path, f"the model config uses layer class '{layer.class_name}' ('{layer.name}'), which {K.__name__} "
                                        "does not define (a custom object), so it is not looked up", _HINT_CODE)


def code_in(config: ModelConfig) -> Optional[str]:
    """What in `config` loading it would run (a Lambda, a custom object), or None."""
    try:
        _refuse_code(config, "")
    except WeightportError as exc:
        return exc.problem
    return None


def _safe_mode(K: Any) -> ContextManager[Any]:
    """Keras's own safe mode (no Lambda bytecode loaded), which tf_keras's legacy .h5 loading only
    honours inside this scope."""
    with contextlib.suppress(ImportError):
        return importlib.import_module(f"{K.__name__}.src.saving.serialization_lib").SafeModeScope(True)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _pinned(view: ModelView) -> Iterator[str]:
    """A name under which Keras, which opens files by name, opens the very file whose config was
    checked: a symlink, with the file's own name (Keras reads the format from its suffix), to the
    descriptor of that file. A file put in its place since (another model, a FIFO whose open would
    block for ever) is refused, never opened."""
    with open_data_files([view]) as files, tempfile.TemporaryDirectory(prefix="weightport-keras-") as folder:
        link = os.path.join(folder, Path(view.data_file).name)
        os.symlink(f"/proc/self/fd/{files[view.data_file][0]}", link)
        yield link


def _build(K: Any, path: PathLike, config_json: Optional[str]) -> Any:
    with _safe_mode(K):
        return _load(K, path, config_json)


def _cannot_run_source(source: PathLike, exc: BaseException, what: str) -> WeightportError:
    """Keras fails on the source model itself: the environment's limit, not weightport's output."""
    limit = next((line.strip() for line in str(exc).splitlines() if "NHWC" in line), None)
    if limit:  # TensorFlow's CPU kernels for Conv and pooling take channels_last only
        return WeightportError(source, f"TensorFlow on this CPU cannot run channels_first layers, and this model has them: the source fails here too ({limit[:200]})",
                               "run verify --keras where TensorFlow has a GPU, or (a Keras 3 file) with KERAS_BACKEND=jax; the numpy verification stands")
    return WeightportError(source, f"Keras cannot {what} the source model here ({first_line(exc)})", "check with the numpy verification only (without --keras)")


class _TwinFailed(Exception):
    """Keras builds and runs the source but not what weightport wrote: weightport's fault."""


def _twin(K: Any, out: PathLike, name: str, config_json: Optional[str]) -> Any:
    """The twin model, from `name` (`out` as pinned); `_TwinFailed` when Keras cannot build it."""
    try:
        return _build(K, name, config_json)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises, the source built: the fault is the output's
        raise _TwinFailed(f"cannot build the twin from {out} ({first_line(exc)}), though it builds the source") from None


def _run_twin(model: Any, x: np.ndarray) -> Any:
    try:
        return model.predict(x, verbose=0)
    except Exception as exc:  # noqa: BLE001
        raise _TwinFailed(f"cannot run the twin ({first_line(exc)}), though it runs the source") from None


def _config_json(K: Any, config: dict) -> str:
    """A config as this Keras's `model_from_json` reads it (Keras 3: with its class keys)."""
    return json.dumps(as_keras3(config) if K.__name__ == "keras" else config)


def _load(K: Any, path: PathLike, config_json: Optional[str]) -> Any:
    if config_json is None:
        return K.models.load_model(str(path), compile=False)
    model = K.models.model_from_json(config_json)
    model.load_weights(str(path))
    return model


def _inputs(model: Any, rng: np.random.Generator) -> np.ndarray:
    shape = (2,) + tuple(model.input_shape[1:])
    if any(type(layer).__name__ == "Embedding" for layer in model.layers):
        return rng.integers(0, 8, size=shape)
    return rng.standard_normal(shape).astype("float32")


@dataclass
class Comparison:
    """One comparison of two Keras models' outputs on the same random inputs."""

    what: str
    how: str  # "end to end" | "per location"
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class EndToEnd:
    """Every comparison `verify --keras` made, with the Keras that made them."""

    keras: str  # the Keras version, e.g. "3.15.1" (tf_keras: "2.21.0")
    comparisons: List[Comparison]
    failure: Optional[str] = None  # Keras could not build or run the twin, though it did the source

    @property
    def ok(self) -> bool:
        return self.failure is None and all(c.ok for c in self.comparisons)

    def to_dict(self) -> Dict[str, Any]:
        """The `keras` key of the `verify --json` document (contract in the README)."""
        return {"ok": self.ok, "keras_version": self.keras, "comparisons": [asdict(c) for c in self.comparisons], "failure": self.failure}

    def lines(self) -> List[str]:
        """One line per comparison, for the table."""
        return [f"keras {self.keras}: {c.what} {'agree' if c.ok else 'DIFFER'} {c.how} (max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g})"
                for c in self.comparisons] + ([f"keras {self.keras}: FAILED: {self.failure}"] if self.failure else [])


def check_end_to_end(source: PathLike, out: PathLike, config: Optional[PathLike] = None, atol: float = 1e-6,
                     rtol: float = 1e-5, score_map: bool = False) -> EndToEnd:
    """Every comparison of the source model and the twin on random inputs.
    With `score_map`, OUT is the twin without its global pooling (`convert --score-map`): only
    the per-location comparison applies, with OUT's own config when it is a whole model."""
    with read(source, config=config) as src, read(out) as converted, _pinned(src) as source_name, _pinned(converted) as out_name:
        _refuse_code(src.config, config or source)
        _refuse_code(converted.config, out)
        K = _keras_for(src)
        _refuse_unknown(K, src.config, config or source)
        _refuse_unknown(K, converted.config, out)
        head = analyze_head(src)
        poolings = [role.pooling for role in head.values() if role.pooling]
        if score_map and not poolings:
            raise WeightportError(source, "--score-map: this head has no global pooling to take out", "verify without --score-map")
        whole_source = src.kind == "full-model" and config is None
        try:
            source_model = _build(K, source_name, None if whole_source else _config_json(K, src.config.raw) if src.config else None)
        except Exception as exc:  # noqa: BLE001 - Keras's own refusal of the input
            raise _cannot_run_source(config or source, exc, "build") from None
        x = _inputs(source_model, np.random.default_rng(0))
        own = converted.kind == "full-model"
        try:  # the twins are built first: a twin Keras cannot build is weightport's fault, whatever the source does
            twin = None if score_map else _twin(K, out, out_name, None if own else _config_json(K, twin_config(src, head)))
            mapper = _twin(K, out, out_name, None if own and score_map else _config_json(K, twin_config(src, head, per_location=True))) if poolings else None
        except _TwinFailed as failed:
            return EndToEnd(K.__version__, [], str(failed))
        try:
            want = source_model.predict(x, verbose=0)
            wanted_map = _head_per_location(K, source_model, poolings[0], x) if poolings else None
        except Exception as exc:  # noqa: BLE001
            raise _cannot_run_source(source, exc, "run") from None
        results: List[Comparison] = []
        try:
            if twin is not None:
                got = _run_twin(twin, x)
                if np.size(want) != np.size(got):
                    raise WeightportError(out, f"the twin gives {np.shape(got)} where the source gives {np.shape(want)}",
                                          "an output written with --score-map is verified with --score-map")
                results.append(_verdict("source and twin models", "end to end", _worst(want, got), atol, rtol))
            if mapper is not None:
                results.append(_verdict("the source's head at every location and the twin's score map", "per location",
                                        _worst(wanted_map, _run_twin(mapper, x)), atol, rtol))
        except _TwinFailed as failed:
            return EndToEnd(K.__version__, results, str(failed))
    return EndToEnd(K.__version__, results)


def _head_per_location(K: Any, model: Any, pooling: str, x: np.ndarray) -> np.ndarray:
    """The source's own head layers (after its global pooling) applied at every location of
    the features that fed the pooling: Dense and the per-unit layers act on the last axis."""
    names = [layer.name for layer in model.layers]
    features = K.Model(model.inputs, model.get_layer(pooling).input)(x)
    for layer in model.layers[names.index(pooling) + 1:]:
        features = layer(features, training=False)
    return np.asarray(features)


def _worst(wants: Any, gots: Any) -> Tuple[float, float]:
    worst_abs, worst_rel = 0.0, 0.0
    for want, got in zip(*(v if isinstance(v, list) else [v] for v in (wants, gots)), strict=True):
        want = np.asarray(want, "float64")
        got = np.asarray(got, "float64").reshape(want.shape)
        diff = float(np.abs(got - want).max())
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / max(float(np.abs(want).max()), 1e-30))
    return worst_abs, worst_rel


def _verdict(what: str, how: str, worst: Tuple[float, float], atol: float, rtol: float) -> Comparison:
    return Comparison(what, how, worst[0], worst[1], worst[0] <= atol or worst[1] <= rtol)
