"""The plan: which source tensor fills which target tensor, by which named rule.

Layers are paired by position (class by class where a Keras 3 `.weights.h5` leaves the order
across classes unknown), `--map` and `--skip` state deliberate differences, and each tensor
gets exactly one rule that makes it exact, or the pair is refused with both shapes named.
The plan is plain data: printed, saved as JSON and reviewed before anything is written.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from .errors import WeightportError
from .head import HeadRole, is_conv_kernel, is_th_kernel, layer_class, parse_source_order
from .roles import guess_class
from .rules import RULES, canonical_order
from .target import Target, TargetLayer, TargetTensor
from .view import Layer, ModelView, Tensor

__all__ = ["PlanOptions", "Step", "Plan", "make_plan"]

ASSUMED_ORDERS = {"write-order", "path"}


@dataclass
class PlanOptions:
    """The user's choices that shape a plan (CLI flags of the same names)."""

    source_order: Optional[str] = None  # hwc | chw
    flip_kernels: bool = False
    maps: Dict[str, str] = field(default_factory=dict)  # source layer -> target layer
    skips: List[str] = field(default_factory=list)  # target layers left out of the pairing


@dataclass
class Step:
    """One target tensor and how it is made."""

    source_file: str
    source_layer: str
    source_path: str
    target_layer: str
    target_name: str  # legacy weight name
    target_keras3: Optional[str]  # Keras 3 dataset path, None when the target's class is unknown
    role: Optional[str]
    source_shape: List[int]
    target_shape: List[int]
    rule: str
    params: Dict[str, Any]
    source_dtype: str
    target_dtype: str


@dataclass
class Plan:
    """Every step, in target order, plus the target structure the writers lay out."""

    source: str
    target: Target
    steps: List[Step]
    notes: List[str]
    verification: Optional[Any] = None  # set by `convert`: the Verification of what was written

    def to_dict(self) -> Dict[str, Any]:
        """The `plan --json` document (contract in the README)."""
        return {
            "source": self.source,
            "target": self.target.label,
            "steps": [asdict(step) for step in self.steps],
            "notes": self.notes,
            "total_steps": len(self.steps),
            "total_values": int(sum(np.prod(s.target_shape, dtype=np.int64) for s in self.steps)),
        }


def make_plan(source: ModelView, target: Target, head: Dict[str, HeadRole], options: PlanOptions,
              target_view: Optional[ModelView] = None) -> Plan:
    """Pair source and target layers and pick one rule per tensor."""
    classwise = source.order in ASSUMED_ORDERS or (target_view is not None and target_view.order in ASSUMED_ORDERS)
    pairs = _pair(source, target, options, classwise)
    notes = [f"{source.path}: layer order from {source.order} ({source.order_note})"]
    if classwise:
        notes.append("layers paired class by class (the k-th Conv2D with the k-th ...), the source's Dense layers "
                     "with the target's remaining convolutions, because a .weights.h5 does not record the order across classes")
    notes += [f"{name}: {role.kind} {role.reason}" for name, role in head.items()]
    steps: List[Step] = []
    for src, tgt in pairs:
        if src is None:
            steps.extend(_keep_steps(tgt, target_view))
        else:
            steps.extend(_layer_steps(source, src, tgt, head.get(src.name), options))
    return Plan(source=source.path, target=target, steps=steps, notes=notes)


# --- pairing ------------------------------------------------------------------------------

def _pair(source: ModelView, target: Target, options: PlanOptions, classwise: bool) -> List[Tuple[Optional[Layer], TargetLayer]]:
    by_src = {layer.name: layer for layer in source.layers}
    by_tgt = {layer.name: layer for layer in target.layers}
    for src, tgt in options.maps.items():
        _known(source.path, src, by_src, "--map source layer")
        _known(target.label, tgt, by_tgt, "--map target layer")
    for tgt in options.skips:
        _known(target.label, tgt, by_tgt, "--skip target layer")
    fixed = {tgt: by_src[src] for src, tgt in options.maps.items()}
    free_src = [l for l in source.layers if l.name not in options.maps]
    free_tgt = [t for t in target.layers if t.name not in fixed and t.name not in options.skips]
    match = _classwise(source, target, free_src, free_tgt) if classwise else _positional(source, target, free_src, free_tgt)
    return [(fixed.get(t.name) or match.get(t.name), t) for t in target.layers]


def _known(file: str, name: str, layers: Dict[str, Any], what: str) -> None:
    if name not in layers:
        raise WeightportError(file, f"{what} '{name}' is not a weighted layer of this file", f"choose one of: {', '.join(list(layers)[:12])}")


def _target_class(layer: TargetLayer) -> Optional[str]:
    return layer.class_name or guess_class([w.role for w in layer.weights], [w.shape for w in layer.weights])


def _compatible(src: Optional[str], tgt: Optional[str]) -> bool:
    if src is None or tgt is None or src == tgt:
        return True
    convs = {src, tgt} - {"Dense"}
    return len(convs) == 1 and next(iter(convs)).startswith("Conv")


def _positional(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer]) -> Dict[str, Layer]:
    classes = [(layer_class(s), _target_class(t)) for s, t in zip(src, tgt)]
    if len(src) != len(tgt) or not all(_compatible(a, b) for a, b in classes):
        raise _mismatch(source, target, src, tgt, f"{len(src)} weighted layers in the source, {len(tgt)} in the target")
    return {t.name: s for s, t in zip(src, tgt, strict=True)}


def _classwise(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer]) -> Dict[str, Layer]:
    """Pair the k-th layer of each class with the k-th (views keep Keras 3's per-class
    numbering in order); the source's Dense layers take the target's convolutions left over."""
    pools: Dict[Optional[str], Deque[Layer]] = defaultdict(deque)
    for layer in src:
        pools[layer_class(layer)].append(layer)
    match: Dict[str, Layer] = {}
    for layer in tgt:
        cls = _target_class(layer)
        pool = pools[cls] if pools[cls] else pools["Dense"] if (cls or "").startswith("Conv") else pools[cls]
        if not pool:
            raise _mismatch(source, target, src, tgt, f"target layer '{layer.name}' ({cls}) has no source layer of its class left")
        match[layer.name] = pool.popleft()
    left = [l.name for pool in pools.values() for l in pool]
    if left:
        raise _mismatch(source, target, src, tgt, f"source layer(s) {', '.join(left[:5])} have no target layer")
    return match


def _describe(layer: Any) -> str:
    cls = layer_class(layer) if isinstance(layer, Layer) else _target_class(layer)
    shapes = " ".join("x".join(map(str, w.shape)) for w in layer.weights)
    return f"{layer.name} ({cls or '?'}) {shapes}"


def _mismatch(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer], problem: str) -> WeightportError:
    """The error for layers that do not pair: both lists side by side, first divergence marked."""
    left, right = [_describe(l) for l in src], [_describe(t) for t in tgt]
    width = max([len(s) for s in left] + [len("source: " + source.path)])
    rows = [f"   {'source: ' + source.path:<{width}}  target: {target.label}"]
    diverged = False
    for i in range(max(len(left), len(right))):
        a = src[i] if i < len(src) else None
        b = tgt[i] if i < len(tgt) else None
        bad = not diverged and (a is None or b is None or not _compatible(layer_class(a), _target_class(b)))
        diverged = diverged or bad
        mark = ">>" if bad else "  "
        rows.append(f"{mark} {left[i] if a else '(none)':<{width}}  {right[i] if b else '(none)'}")
    return WeightportError(source.path, problem, "pair them with --map SRC=DST, leave target layers out with --skip DST", detail="\n".join(rows))


# --- rules --------------------------------------------------------------------------------

def _layer_steps(source: ModelView, src: Layer, tgt: TargetLayer, role: Optional[HeadRole], options: PlanOptions) -> List[Step]:
    if len(src.weights) != len(tgt.weights):
        raise WeightportError(source.path, f"layer pair {src.name} -> {tgt.name}: {len(src.weights)} tensors in the source, {len(tgt.weights)} in the target",
                              "pair the layers differently with --map, or --skip the target layer")
    return [_step(source.path, src, t, tgt, i, _rule(source.path, src, t, tt, role, options))
            for i, (t, tt) in enumerate(zip(src.weights, tgt.weights, strict=True))]


def _step(file: str, src: Layer, tensor: Tensor, tgt: TargetLayer, index: int, rule: Tuple[str, Dict[str, Any]]) -> Step:
    wanted = tgt.weights[index]
    return Step(
        source_file=file, source_layer=src.name, source_path=tensor.path, target_layer=tgt.name,
        target_name=wanted.legacy_name, target_keras3=f"{tgt.k3_path}/vars/{index}" if tgt.k3_path else None,
        role=wanted.role or tensor.role, source_shape=list(tensor.shape), target_shape=list(wanted.shape),
        rule=rule[0], params=rule[1], source_dtype=str(tensor.dtype), target_dtype=wanted.dtype,
    )


def _keep_steps(tgt: TargetLayer, target_view: Optional[ModelView]) -> List[Step]:
    """`--skip`: the target layer keeps the values it has in the target file."""
    layer = next(l for l in target_view.layers if l.name == tgt.name) if target_view else None
    if layer is None:
        return []
    return [_step(target_view.path, layer, t, tgt, i, ("copy", {})) for i, t in enumerate(layer.weights)]


def _rule(file: str, src: Layer, tensor: Tensor, wanted: TargetTensor, role: Optional[HeadRole],
          options: PlanOptions) -> Tuple[str, Dict[str, Any]]:
    """The one rule that makes `wanted` exactly from `tensor`, or a refusal naming both."""
    have, want = tensor.shape, tuple(wanted.shape)
    is_kernel = is_conv_kernel(src, tensor)
    if is_th_kernel(src, tensor):
        params = {"flip": options.flip_kernels}
        if RULES["kernel-from-th"].apply(np.empty(have, np.int8), params).shape == want:
            return "kernel-from-th", params
    elif have == want:
        return ("kernel-flip", {}) if is_kernel and options.flip_kernels else ("copy", {})
    elif len(have) == 2 and len(want) >= 3:
        found = _dense_to_conv(have, want, role, options)
        if found:
            return found
    elif len(have) >= 3 and len(want) == 2 and int(np.prod(have[:-1])) == want[0] and have[-1] == want[-1]:
        return "conv-to-dense", {"order": parse_source_order(options.source_order, len(have) - 2) or canonical_order(len(have) - 2)}
    if [n for n in have if n != 1] == [n for n in want if n != 1]:
        return "reshape-singleton", {"shape": list(want)}
    raise WeightportError(file, f"layer pair {src.name} -> {wanted.legacy_name.split('/')[0]}: no exact rule takes {tensor.role or tensor.name} "
                                f"{'x'.join(map(str, have))} to {'x'.join(map(str, want))}",
                          "check the target architecture, or pair the layers with --map / --skip")


def _dense_to_conv(have: Tuple[int, ...], want: Tuple[int, ...], role: Optional[HeadRole], options: PlanOptions) -> Optional[Tuple[str, Dict[str, Any]]]:
    window, channels, out = want[:-2], want[-2], want[-1]
    if have != (int(np.prod(window, dtype=np.int64)) * channels, out):
        return None
    if all(n == 1 for n in window):
        return "dense-to-1x1", {"shape": list(want)}
    rank = len(window)
    if role is not None and role.kind == "window" and (role.window, role.channels) != (tuple(window), channels):
        return None
    order = role.order if role is not None and role.kind == "window" else parse_source_order(options.source_order, rank) or canonical_order(rank)
    return "dense-to-conv", {"window": list(window), "order": order}
