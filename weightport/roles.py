"""What each stored tensor is for a layer (`kernel`, `bias`, `gamma` ...).

Legacy files name their datasets (`dense_1/kernel:0`, Keras 1 `dense_1_W`); Keras 3
`.weights.h5` files only number them (`vars/0`), so the role comes from the layer class and,
where a layer's variables depend on its settings, from the config. Tables, not if-chains.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["role_from_name", "class_roles", "roles_for_class", "guess_class"]

# Keras 1 suffixes (`dense_1_W`) and old spellings -> today's variable names.
_KERAS1_ROLES = {
    "W": "kernel",
    "b": "bias",
    "U": "recurrent_kernel",
    "alphas": "alpha",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
}

_KERNEL_BIAS = ["kernel", "bias"]
# Variable order of layers whose Keras 3 `vars/<i>` numbering is fixed by the class alone,
# given with and without the optional bias.
_CLASS_ROLES: Dict[str, List[str]] = {
    **{cls: _KERNEL_BIAS for cls in (
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
        "Conv3DTranspose", "LocallyConnected1D", "LocallyConnected2D")},
    "DepthwiseConv1D": ["depthwise_kernel", "bias"],
    "DepthwiseConv2D": ["depthwise_kernel", "bias"],
    "SeparableConv1D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "PReLU": ["alpha"],
    "Embedding": ["embeddings"],
}
_NORMALIZATION = {"BatchNormalization": ["moving_mean", "moving_variance"], "LayerNormalization": []}


def role_from_name(stored: str, layer_name: str) -> str:
    """`dense_1/kernel:0` -> `kernel`; Keras 1 `dense_1_W` -> `kernel`."""
    last = stored.rsplit("/", 1)[-1].split(":", 1)[0]
    if "/" not in stored and last.startswith(layer_name + "_"):
        last = last[len(layer_name) + 1:]
    return _KERAS1_ROLES.get(last, last)


def class_roles(class_name: Optional[str], config: Optional[Dict[str, Any]] = None) -> Optional[List[str]]:
    """The variables a layer of `class_name` holds, in Keras's order, as its config sets them
    (the bias as `use_bias` says); None for a class this table does not know."""
    config = config or {}
    if class_name in _NORMALIZATION:
        affine = (["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else [])
        return affine + _NORMALIZATION[class_name]
    if class_name in _CLASS_ROLES:
        roles = list(_CLASS_ROLES[class_name])
        return roles[:-1] if roles[-1] == "bias" and not config.get("use_bias", True) else roles
    return None


def roles_for_class(class_name: Optional[str], count: int, config: Optional[Dict[str, Any]] = None) -> List[Optional[str]]:
    """Roles of a Keras 3 layer's numbered variables, or None where they cannot be known."""
    roles: Optional[List[Optional[str]]] = class_roles(class_name, config)
    if roles is None:
        return [None] * count
    if class_name in _CLASS_ROLES and count == len(_CLASS_ROLES[class_name]) - 1 and _CLASS_ROLES[class_name][-1] == "bias":
        roles = list(_CLASS_ROLES[class_name][:-1])  # the count says the bias is absent
    return roles if len(roles) == count else [None] * count


# Role sets that identify a layer class when no config says what a layer is.
_CLASS_BY_ROLES = {
    frozenset({"gamma", "beta", "moving_mean", "moving_variance"}): "BatchNormalization",
    frozenset({"alpha"}): "PReLU",
    frozenset({"embeddings"}): "Embedding",
}
_CLASS_BY_KERNEL_RANK = {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}


def guess_class(roles: List[Optional[str]], shapes: List[tuple]) -> Optional[str]:
    """A layer's likely class from its tensors (kernel rank, BatchNormalization's four
    vectors ...), for legacy weights-only files that carry no config; None when unclear."""
    known = frozenset(r for r in roles if r)
    if known in _CLASS_BY_ROLES:
        return _CLASS_BY_ROLES[known]
    if known <= {"kernel", "bias"} and roles and roles[0] == "kernel":
        return _CLASS_BY_KERNEL_RANK.get(len(shapes[0]))
    return None
