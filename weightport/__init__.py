"""weightport: move trained Keras weights into another architecture straight from the HDF5 file.

The public API mirrors the pipeline: `read` a file into an ordered view, `plan` a
conversion, `convert` (plan and write), `verify` (prove it numerically), `convert_into_model`
(into a live Keras model).

Names are imported on first use, so `weightport --version` and `import weightport` start
fast: h5py and numpy load only when a function needs them.

Example:
    >>> import weightport
    >>> with weightport.read("fixtures/seq__k3.weights.h5") as view:  # doctest: +SKIP
    ...     [(layer.class_name, [t.shape for t in layer.weights]) for layer in view.layers]
"""

import importlib

from ._version import __version__
from .errors import WeightportError

_LAZY = {
    "read": ".readers",
    "plan": ".api",
    "convert": ".api",
    "verify": ".api",
    "convert_into_model": ".api",
    "load_config_file": ".config",
    "ModelConfig": ".config",
    "ModelView": ".view",
    "Layer": ".view",
    "Tensor": ".view",
}

__all__ = ["__version__", "WeightportError", *_LAZY]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'weightport' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
