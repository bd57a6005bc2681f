"""weightport: move trained Keras weights into another architecture straight from the HDF5 file.

The public API mirrors the pipeline read -> plan -> write -> verify; this release reads.

Example:
    >>> import weightport
    >>> with weightport.read("fixtures/seq__k3.weights.h5") as view:  # doctest: +SKIP
    ...     [(layer.class_name, [t.shape for t in layer.weights]) for layer in view.layers]
"""

from ._version import __version__
from .config import ModelConfig, load_config_file
from .errors import WeightportError
from .readers import read
from .view import Layer, ModelView, Tensor

__all__ = ["__version__", "read", "load_config_file", "ModelConfig", "ModelView", "Layer", "Tensor", "WeightportError"]
