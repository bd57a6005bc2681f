"""Layers whose weights sit in sub-objects: wrappers (Bidirectional, TimeDistributed) and
recurrent layers (their `cell`), down to the layer that owns each tensor.

Keras 3 stores such a layer's tensors in groups below its own, one per sub-object attribute
(`layers/bidirectional/forward_layer/cell/vars/0`); legacy files list them all under the layer,
in `layer.weights` order (forward before backward). Keras's own classes name these attributes
(`forward_layer`, `backward_layer`, `layer`, `cell`), so weightport knows where each tensor sits
and in which order Keras lists them; for any other sub-object (a custom layer holding
sublayers) the order is an assumption, and the layer says so (`order_known`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .config import class_of
from .roles import class_roles, roles_for_class

__all__ = ["Owner", "owner_at", "roles_at", "arrange", "wrapped_class", "pairing_class", "var_paths"]

# Sub-object attributes of Keras's own layers, in the order `layer.weights` lists them.
_ATTRIBUTES = ("forward_layer", "backward_layer", "layer", "cell")
_WRAPPERS = {"Bidirectional", "TimeDistributed"}
_RECURRENT = {"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
_CELL_ROLES = ["kernel", "recurrent_kernel", "bias"]  # every Keras recurrent cell, bias optional

Owner = Tuple[Optional[str], Optional[Dict[str, Any]]]  # (class, config) of the object holding tensors


def _spec(value: Any) -> Owner:
    """(class, config) of a serialized inner layer (`{"class_name": "LSTM", "config": {...}}`)."""
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
        return None, None
    config = value.get("config")
    return class_of(value["class_name"]), config if isinstance(config, dict) else {}


def _child(owner: Owner, attribute: str) -> Optional[Owner]:
    """The (class, config) at `attribute` of `owner`; None when the class has no such attribute
    (a sub-object weightport does not know)."""
    class_name, config = owner
    config = config if config is not None else {}
    if class_name == "Bidirectional" and attribute in ("forward_layer", "backward_layer"):
        return _spec(config.get(attribute) if attribute == "backward_layer" and config.get(attribute) else config.get("layer"))
    if class_name == "TimeDistributed" and attribute == "layer":
        return _spec(config.get("layer"))
    if attribute == "cell" and (class_name in _RECURRENT or class_name is None):
        return "cell", config  # a recurrent layer's cell: kernel, recurrent_kernel, bias
    if class_name is None and attribute in _ATTRIBUTES:
        return None, None  # a wrapper's inner layer, class unknown without a config
    return None


def owner_at(class_name: Optional[str], config: Optional[Dict[str, Any]], relative: str) -> Optional[Owner]:
    """The (class, config) of the object at `relative` below a layer (`forward_layer/cell`),
    or None when a step of the path is not an attribute weightport knows for that class."""
    owner: Optional[Owner] = (class_name, config)
    for attribute in filter(None, relative.split("/")):
        owner = _child(owner, attribute) if owner is not None else None
    return owner


def roles_at(owner: Optional[Owner], count: int) -> List[Optional[str]]:
    """Roles of the `count` numbered variables the object `owner` holds."""
    if owner is not None and owner[0] == "cell":
        return list(_CELL_ROLES[:count]) if count in (2, 3) else [None] * count
    return roles_for_class(owner[0], count, owner[1]) if owner is not None else [None] * count


def _rank(relative: str) -> Tuple:
    """Sort key of a sub-object path: known attributes in Keras's weight order, others after."""
    return tuple((_ATTRIBUTES.index(a), a) if a in _ATTRIBUTES else (len(_ATTRIBUTES), a) for a in relative.split("/") if a)


def arrange(class_name: Optional[str], config: Optional[Dict[str, Any]], relatives: List[str]) -> Tuple[List[str], bool]:
    """The sub-object paths of a layer (`""` for its own variables) in the order `layer.weights`
    lists their tensors, and whether that order is Keras's (every step a known attribute)."""
    ordered = sorted(relatives, key=_rank)
    return ordered, all(owner_at(class_name, config, r) is not None for r in relatives)


def wrapped_class(class_name: Optional[str], config: Optional[Dict[str, Any]]) -> Optional[str]:
    """What a wrapper holds, `LSTM` for Bidirectional(LSTM) and `Bidirectional(LSTM)` for
    TimeDistributed(Bidirectional(LSTM)); None for any other layer or when unknown."""
    if class_name not in _WRAPPERS or not config:
        return None
    inner, inner_config = _spec(config.get("layer"))
    if inner is None:
        return None
    deeper = wrapped_class(inner, inner_config)
    return f"{inner}({deeper})" if deeper else inner


def pairing_class(class_name: Optional[str], wrapped: Optional[str]) -> Optional[str]:
    """The class a layer pairs as: a TimeDistributed layer applies its inner layer to each step
    with the inner layer's own tensors, so TimeDistributed(Dense) pairs as a Dense."""
    if class_name == "TimeDistributed" and wrapped and "(" not in wrapped:
        return wrapped
    return class_name


def var_paths(class_name: Optional[str], config: Optional[Dict[str, Any]], roles: List[Optional[str]]) -> Optional[List[str]]:
    """Where Keras 3 stores each of a layer's tensors (`vars/0`, `forward_layer/cell/vars/2`),
    given the roles a legacy file lists them with, in its order; None when that cannot be told
    (an unknown class, or roles that do not match the class's)."""
    slots = _slots((class_name, config))
    if slots is None or len(slots) != len(roles) or any(r is not None and s[1] != r for s, r in zip(slots, roles)):
        return None
    return [path for path, _ in slots]


def _slots(owner: Owner) -> Optional[List[Tuple[str, Optional[str]]]]:
    """Every (Keras 3 path, role) of the object's tensors, in `layer.weights` order."""
    class_name, config = owner
    attributes = {"Bidirectional": ("forward_layer", "backward_layer"), "TimeDistributed": ("layer",)}.get(class_name or "")
    if attributes is None and class_name in _RECURRENT:
        attributes = ("cell",)
    if attributes is None:
        roles = class_roles(class_name, config)
        return None if roles is None else [(f"vars/{i}", role) for i, role in enumerate(roles)]
    slots: List[Tuple[str, Optional[str]]] = []
    for attribute in attributes:
        child = _child(owner, attribute)
        inner = _cell_slots(config or {}) if child is not None and child[0] == "cell" else _slots(child) if child and child[0] else None
        if inner is None:
            return None
        slots += [(f"{attribute}/{path}", role) for path, role in inner]
    return slots


def _cell_slots(config: Dict[str, Any]) -> List[Tuple[str, Optional[str]]]:
    roles = _CELL_ROLES if config.get("use_bias", True) else _CELL_ROLES[:2]
    return [(f"vars/{i}", role) for i, role in enumerate(roles)]
