"""What the output file must hold: the target architecture's weighted layers, in order.

A target comes from a file weightport reads (`--target`, typically the untrained twin saved
by Keras) or is derived from the source (the fully-convolutional twin). Either way it is plain
data the writers can lay out in the legacy `.h5` or the Keras 3 `.weights.h5` layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .config import to_snake_case
from .view import Layer, ModelView

__all__ = ["TargetTensor", "TargetLayer", "Target", "target_from_view", "legacy_weight_name", "assign_k3_paths", "k3_path_of"]


@dataclass
class TargetTensor:
    """One tensor of the output: its stored names in both layouts, shape and dtype."""

    legacy_name: str  # name in the legacy layout (`fc6/kernel:0`), relative to its top-level group
    role: Optional[str]
    shape: Tuple[int, ...]
    dtype: str
    k3_var: Optional[str] = None  # below the layer's Keras 3 group (`vars/1`, `forward_layer/cell/vars/0`); None: unknown

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.legacy_name, "role": self.role, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class TargetLayer:
    """A weighted layer of the output, with where each layout stores it."""

    name: str
    class_name: Optional[str]
    weights: List[TargetTensor]
    container: Optional[str] = None  # nested model (top-level entry of the legacy layout)
    k3_path: Optional[str] = None  # `layers/conv2d_13` (Keras 3 layout), None if unknown
    wrapped: Optional[str] = None  # what a wrapper holds (`Dense` in TimeDistributed(Dense))
    order_known: bool = True  # False: its tensors sit in sub-objects whose order weightport assumed

    @property
    def entry(self) -> str:
        """The top-level `layer_names` entry (a nested model holds several layers)."""
        return self.container or self.name


@dataclass
class Target:
    """The whole output architecture plus the file facts a writer needs."""

    label: str  # the target file, or "derived fully-convolutional twin"
    layers: List[TargetLayer]
    keras_version: Optional[str] = None
    backend: Optional[str] = None


def legacy_weight_name(layer: str, role: Optional[str], index: int, stored: Optional[str] = None, k3_var: Optional[str] = None) -> str:
    """A legacy weight name: keep a stored legacy one, else `layer/role:0` like tf_keras, with the
    sub-object a wrapper keeps it in (`bidirectional/forward_layer/cell/kernel:0`)."""
    if stored and "/" in stored and stored != k3_var:
        return stored
    sub, _, number = k3_var.rpartition("vars/") if k3_var else ("", "", str(index))
    return f"{layer}/{sub}{role or number}:0"


def assign_k3_paths(layers: List[TargetLayer], prefixes: List[Optional[str]]) -> None:
    """Give each layer the group Keras 3 would: `<prefix><snake(class)>[_n]`, counted per
    class within each container prefix, in order (what `save_weights` does)."""
    counters: Dict[Tuple[str, str], int] = {}
    for layer, prefix in zip(layers, prefixes, strict=True):
        if layer.class_name is None or prefix is None:
            continue
        snake = to_snake_case(layer.class_name)
        count = counters.get((prefix, snake), 0)
        counters[(prefix, snake)] = count + 1
        layer.k3_path = prefix + (snake if count == 0 else f"{snake}_{count}")


def k3_path_of(layer: Layer, view: ModelView) -> Optional[str]:
    """The Keras 3 group of a layer read from a file: its own group in a Keras 3 file, what
    its config entry gives in a legacy file, None when neither says."""
    if view.layout != "legacy-h5":  # a Keras 3 group: `/layers/dense/vars`, or a wrapper's `/layers/bidirectional`
        group = layer.group.strip("/")
        return group[: -len("/vars")] if group.endswith("/vars") else group
    spec = view.config.get(layer.name) if view.config else None
    return spec.k3_path if spec else None


def target_from_view(view: ModelView) -> Target:
    """The target described by a file weightport read (`--target`)."""
    layers = []
    for layer in view.layers:
        weights = [
            TargetTensor(legacy_weight_name(layer.name, t.role, i, t.name, t.k3_var), t.role, t.shape, str(t.dtype), t.k3_var)
            for i, t in enumerate(layer.weights)
        ]
        layers.append(TargetLayer(layer.name, layer.class_name, weights, layer.container, k3_path_of(layer, view), layer.wrapped, layer.order_known))
    return Target(label=view.path, layers=layers, keras_version=view.keras_version, backend=view.backend)
