"""`verify --keras`: build both whole models in Keras and compare them end to end.

The only module that imports Keras, and only when called. The source model comes from its
own file (or its sidecar config); the twin from the output's own config when the output is a
whole model, else from the source config rewritten by `twinconfig`. Both run on the same
random inputs at the source's input size, where the twin's score map is 1x1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from .errors import WeightportError
from .head import analyze_head
from .readers import read
from .twinconfig import twin_config
from .view import ModelView

__all__ = ["check_end_to_end"]

PathLike = Union[str, Path]


def _keras_for(view: ModelView) -> Any:
    """Keras 3 for files Keras 3 wrote, tf_keras (the Keras 2 line) for the rest."""
    keras3 = (view.keras_version or "").startswith("3") or (view.keras_version is None and view.layout != "legacy-h5")
    try:
        if keras3:
            import keras
            return keras
        import tf_keras
        return tf_keras
    except ImportError as exc:
        raise WeightportError(view.path, f"--keras needs Keras ({exc.name} is not installed)", 'pip install "weightport[keras]"') from None


def _build(K: Any, path: PathLike, view: ModelView, config_json: Optional[str]) -> Any:
    try:
        if config_json is None:
            return K.models.load_model(str(path), compile=False)
        model = K.models.model_from_json(config_json)
        model.load_weights(str(path))
        return model
    except WeightportError:
        raise
    except Exception as exc:  # Keras's own refusal: report it as the input problem it is
        raise WeightportError(path, f"Keras cannot build this model here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                              "check with the numpy verification only (without --keras)") from None


def _inputs(model: Any, rng: np.random.Generator) -> np.ndarray:
    shape = (2,) + tuple(model.input_shape[1:])
    if any(type(layer).__name__ == "Embedding" for layer in model.layers):
        return rng.integers(0, 8, size=shape)
    return rng.standard_normal(shape).astype("float32")


def check_end_to_end(source: PathLike, out: PathLike, config: Optional[PathLike] = None, atol: float = 1e-6,
                     rtol: float = 1e-5) -> Tuple[bool, str]:
    """(ok, a one-line report) comparing the source model and the twin on random inputs."""
    with read(source, config=config) as src, read(out) as converted:
        K = _keras_for(src)
        whole_source = src.kind == "full-model" and config is None
        source_model = _build(K, source, src, None if whole_source else json.dumps(src.config.raw) if src.config else None)
        twin_json = None if converted.kind == "full-model" else json.dumps(twin_config(src, analyze_head(src)))
        twin = _build(K, out, converted, twin_json)
    x = _inputs(source_model, np.random.default_rng(0))
    wants, gots = source_model.predict(x, verbose=0), twin.predict(x, verbose=0)
    wants, gots = (v if isinstance(v, list) else [v] for v in (wants, gots))
    worst_abs, worst_rel = 0.0, 0.0
    for want, got in zip(wants, gots, strict=True):
        got = np.asarray(got, "float64").reshape(want.shape)
        diff = float(np.abs(got - want).max())
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.abs(want).max()), 1e-30))
    ok = worst_abs <= atol or worst_rel <= rtol
    verdict = "agree" if ok else "DIFFER"
    return ok, f"keras {K.__version__}: source and twin models {verdict} end to end (max abs {worst_abs:.3g}, max rel {worst_rel:.3g})"
