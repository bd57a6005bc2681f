"""PyTorch state dicts as weightport sees them: modules as layers, tensors with Keras roles.

A state dict is a flat list of tensors named by the module path they belong to and the
module's attribute (`features.10.weight`, `bn1.running_var`). Every PyTorch reader (the
`.safetensors` header, a `torch.save` pickle) hands its entries here, in the order it knows, and
gets back the modules, each with the class its tensors' names and shapes imply and each tensor's
role in the terms the planner pairs Keras layers by (`kernel`, `gamma`, `moving_mean` ...).
Plain logic: no file is read here and nothing here needs torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import budgets
from .errors import WeightportError
from .view import Layer, ModelView, Tensor

__all__ = ["Entry", "Module", "IGNORED", "ROOT", "split_name", "natural_order", "modules", "infer_class", "ignored_note", "FRAMEWORK", "read_view"]

FRAMEWORK = "torch"  # `ModelView.framework` of every view made here: tensors in PyTorch's layouts
# A counter BatchNorm keeps of the batches it has seen (an int64 scalar): not a weight, nothing
# in Keras holds it, and it changes no output once the running statistics are set.
IGNORED = "num_batches_tracked"
# The module path of a tensor whose name has no dot: the model's own (root module's) parameter.
# Parenthesized so that it cannot be the path of a real module (paths are Python identifiers and numbers).
ROOT = "(root)"

# Attributes in the order PyTorch registers them (parameters, then buffers), which is Keras's
# order for the same roles: BatchNorm's weight, bias, running_mean, running_var are Keras's
# gamma, beta, moving_mean, moving_variance.
_ATTRIBUTE_ORDER = {name: rank for rank, name in enumerate(("weight", "bias", "running_mean", "running_var", IGNORED))}
_NORM_ROLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_KERNEL_ROLES = {"weight": "kernel", "bias": "bias"}
_STATISTICS = {"running_mean": "moving_mean", "running_var": "moving_variance"}  # whatever the class
_CONV_RANKS = {3: "1d", 4: "2d", 5: "3d"}  # weight rank -> spatial rank suffix
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Entry:
    """One tensor of a state dict as its reader found it. `source` is whatever the reader needs to
    read its values later (a storage); nothing here looks at it or at `dtype`."""

    name: str  # the state-dict key, `features.10.weight`
    shape: Tuple[int, ...]
    dtype: Any
    source: Any = None


@dataclass
class Module:
    """The tensors of one module in the order given (`num_batches_tracked` left out), each with
    its Keras role (None: unknown)."""

    path: str  # `features.10`; `ROOT` for tensors of the model itself
    class_name: Optional[str]  # inferred PyTorch class (`Conv2d`, `Linear`, `BatchNorm` ...); None: unclear
    tensors: List[Tuple[Entry, Optional[str]]] = field(default_factory=list)


def split_name(name: str) -> Tuple[str, str]:
    """`features.10.weight` -> (`features.10`, `weight`); `weight` -> (`ROOT`, `weight`)."""
    path, dot, attribute = name.rpartition(".")
    return (path, attribute) if dot else (ROOT, attribute)


def _natural(text: str) -> Tuple[Any, ...]:
    """`features.10` after `features.2`, `layer10` after `layer2`: each dotted part split into its
    text and its digit runs, the runs compared as numbers (`re.split` puts text at even places
    and numbers at odd ones, so like is always compared with like). A run is compared as its
    length without leading zeros, then its digits: the order of the numbers, with no int() of
    a hostile file's 5,000-digit run (which Python refuses)."""
    return tuple(tuple(_number(piece) if i % 2 else piece for i, piece in enumerate(_DIGITS.split(part))) for part in text.split("."))


def _number(digits: str) -> Tuple[int, str]:
    """A run of digits as a key in the order of the numbers: `2` before `10`, `010` level with `10`."""
    significant = digits.lstrip("0")
    return len(significant), significant


def natural_order(names: Sequence[str]) -> List[str]:
    """State-dict keys in the order a format that records none (safetensors keeps its keys
    sorted as text) is best read in: module paths in natural order (`features.2` before
    `features.10`), and within a module the attributes in PyTorch's registration order (weight,
    bias, running_mean, running_var), others after them by name. This is the order of a
    `Sequential` of numbered modules; modules with names (`stem`, `body`, `head`) come out in
    alphabetical order, which a reader must say is assumed."""
    paths: Dict[str, Tuple[Any, ...]] = {ROOT: ()}  # a module's key made once for all its tensors

    def key(name: str) -> Tuple[Any, ...]:
        path, attribute = split_name(name)
        if path not in paths:
            paths[path] = _natural(path)
        return paths[path], _ATTRIBUTE_ORDER.get(attribute, len(_ATTRIBUTE_ORDER)), attribute, name
    return sorted(names, key=key)


def modules(entries: Sequence[Entry]) -> List[Module]:
    """The modules of a state dict given in order, each where its first tensor appears, its
    tensors in their given order, with their inferred class and roles; `num_batches_tracked` is
    left out (`ignored_note` says so), and a module that held nothing else with it."""
    grouped: Dict[str, List[Entry]] = {}
    for entry in entries:
        grouped.setdefault(split_name(entry.name)[0], []).append(entry)
    found = [_module(path, members) for path, members in grouped.items()]
    return [module for module in found if module.tensors]


def _module(path: str, members: List[Entry]) -> Module:
    kept = [e for e in members if split_name(e.name)[1] != IGNORED]
    shapes = {split_name(e.name)[1]: tuple(e.shape) for e in kept}
    class_name = infer_class(shapes)
    return Module(path, class_name, [(e, _role(class_name, split_name(e.name)[1])) for e in kept])


def infer_class(shapes: Dict[str, Tuple[int, ...]]) -> Optional[str]:
    """The PyTorch class a module's tensors (attribute -> shape) imply, or None when unclear.

    A state dict holds no class, so only what the shapes say is claimed:
    - weight (out, in, *k) with an optional bias of `out` values: `Conv1d/2d/3d`. A depthwise
      conv (C*m, 1, *k) and a transposed conv whose in and out channels are equal have exactly
      these shapes: the planner decides by the target's class (DepthwiseConv2D, Conv2DTranspose).
      A bias of `weight.shape[1]` values that is not `weight.shape[0]` is a transposed conv
      (its weight is (in, out, *k)): `ConvTranspose1d/2d/3d`.
    - weight (out, in) with an optional bias of `out` values: `Linear` (an Embedding has a 2-D
      weight too, and no bias: nothing in the state dict tells them apart).
    - running_mean and running_var (with or without weight and bias): `BatchNorm` (the rank of
      BatchNorm1d/2d/3d is not in the state dict).
    - a 1-D weight and bias of the same length, nothing else: `Norm` (LayerNorm, GroupNorm,
      InstanceNorm with affine, a BatchNorm that tracks no statistics: all alike).
    """
    attributes = set(shapes)
    weight, bias = shapes.get("weight"), shapes.get("bias")
    vectors = all(len(shape) == 1 for shape in shapes.values())
    if {"running_mean", "running_var"} <= attributes <= {"weight", "bias", "running_mean", "running_var"} and vectors \
            and len(set(shapes.values())) == 1:
        return "BatchNorm"
    if weight is None or not attributes <= {"weight", "bias"} or (bias is not None and len(bias) != 1):
        return None
    if len(weight) == 1 and bias is not None:
        return "Norm" if bias == weight else None
    if len(weight) == 2 and (bias is None or bias[0] == weight[0]):
        return "Linear"
    suffix = _CONV_RANKS.get(len(weight))
    if suffix is None:
        return None
    if bias is None or bias[0] == weight[0]:
        return f"Conv{suffix}"
    return f"ConvTranspose{suffix}" if bias[0] == weight[1] else None


def _role(class_name: Optional[str], attribute: str) -> Optional[str]:
    """A tensor's role in Keras's terms, which the planner pairs by: a Conv/Linear weight is a
    `kernel`, a norm's weight and bias are `gamma` and `beta`; running statistics are Keras's
    moving ones whatever the class; a weight of an unknown class has no known role."""
    if class_name in ("BatchNorm", "Norm"):
        return _NORM_ROLES.get(attribute)
    if class_name is not None:
        return _KERNEL_ROLES.get(attribute)
    return _STATISTICS.get(attribute) or ("bias" if attribute == "bias" else None)


def ignored_note(entries: Sequence[Entry]) -> Optional[str]:
    """What `modules` leaves out of the weights, for a view's notes; None when nothing."""
    count = sum(split_name(entry.name)[1] == IGNORED for entry in entries)
    if not count:
        return None
    return (f"{count} {IGNORED} tensor{'s' if count > 1 else ''} ignored (BatchNorm's count of the batches it has seen: "
            "not a weight, Keras has no place for it, no output depends on it)")


def read_view(path: Union[str, Path], layout: str, entries: Sequence[Entry], order: str, order_note: str,
              notes: Sequence[str] = ()) -> ModelView:
    """The view of a state dict whose entries (in the order the format gives or implies) carry
    their `Storage` as `source`: one layer per module, named by its path, its tensors named by
    their state-dict keys; `notes` are the reader's own. `framework` says the tensors are in
    PyTorch's layouts (a Linear's weight is (out, in), a conv's (out, in, *k)): the planner must
    not take them for Keras's."""
    budgets.check_state_dict(path, longest=max((len(entry.name) for entry in entries), default=0))
    found = modules(entries)
    budgets.check_state_dict(path, modules=len(found))
    if not found:
        held = f"only {IGNORED} counters" if entries else "no tensors"
        raise WeightportError(path, f"a state dict with no weights in it ({held})", "save the model's state_dict() once the model is built")
    layers = [Layer(name=module.path, class_name=module.class_name, group=module.path,
                    weights=[Tensor(entry.name, role, entry.name, entry.source) for entry, role in module.tensors]) for module in found]
    note = ignored_note(entries)
    return ModelView(path=str(path), layout=layout, kind="weights-only", layers=layers, order=order, order_note=order_note,
                     framework=FRAMEWORK, notes=list(notes) + ([note] if note else []))
