"""The fully-convolutional twin of a classifier, derived from the source itself.

The twin keeps every weighted layer, in the source's order and with the source's names, so
the FCN model a user builds loads the output with a plain `load_weights`; each Dense of the
head becomes the Conv `head.analyze_head` chose, PReLU alphas in the head get the shape a
PReLU shared over the spatial axes has, and Keras 1 `th` kernels take today's layout.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .errors import WeightportError
from .head import HeadRole, is_th_kernel, layer_class
from .target import Target, TargetLayer, TargetTensor, assign_k3_paths, k3_path_of, legacy_weight_name
from .view import Layer, ModelView, Tensor

__all__ = ["derive_twin"]

TWIN_LABEL = "derived fully-convolutional twin"


def derive_twin(view: ModelView, head: Dict[str, HeadRole], skips: Optional[List[str]] = None) -> Target:
    """The twin's weighted layers; layers named in `skips` are left out of it (each must be one
    of its weighted layers, as `--map`'s names must: a misspelt name is not silently ignored)."""
    names = [layer.name for layer in view.layers]
    for skip in skips or []:
        if skip not in names:
            raise WeightportError(view.path, f"--skip layer '{skip}' is not a weighted layer of this file", f"choose one of: {', '.join(names[:12])}")
    layers: List[TargetLayer] = []
    prefixes: List[Optional[str]] = []
    for layer in view.layers:
        if layer.name in (skips or []):
            continue
        role = head.get(layer.name)
        cls = _twin_class(layer, role)
        weights = [TargetTensor(legacy_weight_name(layer.name, t.role, i, t.name if t.k3_var is None else None, t.k3_var), t.role,
                                _twin_shape(layer, t, role), str(t.dtype), t.k3_var)
                   for i, t in enumerate(layer.weights)]
        layers.append(TargetLayer(layer.name, cls, weights, layer.container, wrapped=layer.wrapped, order_known=layer.order_known))
        prefixes.append(_k3_prefix(layer, view))
    assign_k3_paths(layers, prefixes)
    return Target(label=TWIN_LABEL, layers=layers, keras_version=view.keras_version, backend=view.backend)


def _twin_class(layer: Layer, role: Optional[HeadRole]) -> Optional[str]:
    if role is not None and role.kind in ("window", "1x1"):
        return f"Conv{role.rank}D"
    return layer_class(layer)


def _twin_shape(layer: Layer, tensor: Tensor, role: Optional[HeadRole]) -> Tuple[int, ...]:
    shape = tensor.shape
    is_kernel = tensor.role in (None, "kernel") and len(shape) == 2
    if role is not None and role.kind == "window" and is_kernel:
        return tuple(role.window) + (role.channels, shape[1])
    if role is not None and role.kind == "1x1" and is_kernel:
        return (1,) * role.rank + shape
    if role is not None and role.kind == "per-unit" and tensor.role == "alpha":
        return (1,) * role.rank + (shape[-1],)
    if is_th_kernel(layer, tensor):
        return shape[2:] + (shape[1], shape[0])
    return shape


def _k3_prefix(layer: Layer, view: ModelView) -> Optional[str]:
    """The container part of the Keras 3 group (`layers/` or `layers/functional/layers/`)."""
    path = k3_path_of(layer, view)
    if path is not None:
        return path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return "layers/" if layer.container is None else None
