"""weightport: move trained Keras weights into another architecture straight from the HDF5 file.

The public API mirrors the pipeline: `read` a file into an ordered view, `plan` a
conversion, `convert` (plan and write), `verify` (prove it numerically), `convert_into_model`
(into a live Keras model).

Example:
    >>> import weightport
    >>> with weightport.read("fixtures/seq__k3.weights.h5") as view:  # doctest: +SKIP
    ...     [(layer.class_name, [t.shape for t in layer.weights]) for layer in view.layers]
"""

from ._version import __version__
from .api import convert, convert_into_model, plan, verify
from .config import ModelConfig, load_config_file
from .errors import WeightportError
from .readers import read
from .view import Layer, ModelView, Tensor

__all__ = ["__version__", "read", "plan", "convert", "verify", "convert_into_model", "load_config_file", "ModelConfig", "ModelView", "Layer", "Tensor", "WeightportError"]
