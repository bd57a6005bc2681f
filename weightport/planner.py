"""The plan: which source tensor fills which target tensor, by which named rule.

Layers are paired by position (class by class where a Keras 3 `.weights.h5` leaves the order
across classes unknown, or by an order-preserving alignment with `--align`), `--map`, `--drop`
and `--skip` state deliberate differences, and each tensor gets exactly one rule that makes it
exact (`--units` first keeps some output units), or the pair is refused with both shapes named.
The plan is plain data (the steps and the alignment of the two layer lists): printed, saved as
JSON and reviewed before anything is written.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from . import torchrules, units
from .align import Ambiguous, align
from .errors import WeightportError, printable
from .head import HeadRole, is_conv_kernel, is_th_kernel, layer_class, parse_source_order
from .options import PLAN_OPTIONS
from .precision import cast_to
from .roles import guess_class
from .rules import RULES, canonical_order
from .target import Target, TargetLayer, TargetTensor
from .view import Layer, ModelView, Tensor
from .wrappers import pairing_class

__all__ = ["PlanOptions", "Step", "AlignRow", "Plan", "make_plan", "refuse_lossy_casts"]

ASSUMED_ORDERS = {"write-order", "path"}


def _check_options(self: "PlanOptions") -> None:
    """Checked here, once, whether the options come from the API or the command line."""
    for option in PLAN_OPTIONS:
        setattr(self, option.name, option.check(option.name, getattr(self, option.name)))


# The user's choices that shape a plan, one field for each of `options.PLAN_OPTIONS` (CLI flags,
# API keywords of the same names), checked as it is made.
PlanOptions = make_dataclass("PlanOptions", [(option.name, option.type, field(default=option.default)) for option in PLAN_OPTIONS],
                             namespace={"__post_init__": _check_options, "__doc__": "The user's choices that shape a plan (options.PLAN_OPTIONS)."})
PlanOptions.__module__ = __name__


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
class AlignRow:
    """One row of the two layer lists side by side: a pair, a source layer left out (dropped), or
    a target layer that keeps the target file's values (kept); `by` says what decided it."""

    source_layer: Optional[str]
    target_layer: Optional[str]
    status: str  # paired | dropped | kept
    by: str  # position | class | align | map | drop | skip


@dataclass
class Plan:
    """Every step, in target order, plus the target structure the writers lay out."""

    source: str
    target: Target
    steps: List[Step]
    notes: List[str]
    alignment: List[AlignRow] = field(default_factory=list)
    verification: Optional[Any] = None  # set by `convert`: the Verification of what was written
    loaded_by: Optional[str] = None  # set by `convert` of a whole model: the Keras that loaded it
    load_skipped: Optional[str] = None  # or why it was not loaded: code in its config that loading would run
    feeds: Optional[Dict[str, HeadRole]] = None  # a PyTorch source's: what fed each target layer (head.target_feeds)

    def to_dict(self) -> Dict[str, Any]:
        """The `plan --json` document (contract in the README)."""
        return {
            "source": self.source,
            "target": self.target.label,
            "steps": [asdict(step) for step in self.steps],
            "notes": self.notes,
            "alignment": [asdict(row) for row in self.alignment],
            "total_steps": len(self.steps),
            "total_values": int(sum(np.prod(s.target_shape, dtype=np.int64) for s in self.steps)),
        }


def make_plan(source: ModelView, target: Target, head: Dict[str, HeadRole], options: PlanOptions,
              target_view: Optional[ModelView] = None) -> Plan:
    """Pair source and target layers and pick one rule per tensor. `head`: what each source layer
    becomes in the twin (a Keras source), or, for a PyTorch source (whose file records no graph),
    what feeds each target layer (`head.target_feeds`: a Flatten's window), by target layer name."""
    classwise = source.order in ASSUMED_ORDERS or (target_view is not None and target_view.order in ASSUMED_ORDERS)
    pairs, alignment = _pair(source, target, options, classwise, head)
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
            steps.extend(_layer_steps(source, src, tgt, _role_of(source, head, src, tgt), options))
    if source.framework == torchrules.FRAMEWORK:
        notes += torchrules.epsilon_notes([(src.class_name, tgt.name) for src, tgt in pairs if src is not None], target_view)
    return Plan(source=source.path, target=target, steps=steps, notes=notes, alignment=alignment)


def _role_of(source: ModelView, head: Dict[str, HeadRole], src: Layer, tgt: Any) -> Optional[HeadRole]:
    """A Keras source layer's role in the twin, or what feeds the target layer of a PyTorch source's."""
    return head.get(tgt.name) if source.framework == torchrules.FRAMEWORK else head.get(src.name)


def refuse_lossy_casts(plan: Plan) -> None:
    """Refuse, before anything is written, a target dtype that would destroy the weights
    (float -> int8 keeps a few values of a kernel out of thousands); float16 is allowed."""
    for step in plan.steps:
        if cast_to(step.source_dtype, step.target_dtype) is None:
            raise WeightportError(plan.target.label, f"layer {step.target_layer} holds {step.role or step.target_name} as {step.target_dtype}, and "
                                                     f"{step.source_dtype} -> {step.target_dtype} would destroy the weights",
                                  "give a target whose weights are floating point (float32, float16 ...)")


# --- pairing ------------------------------------------------------------------------------

Pairs = List[Tuple[Optional[Layer], TargetLayer]]


def _pair(source: ModelView, target: Target, options: PlanOptions, classwise: bool, head: Dict[str, HeadRole]) -> Tuple[Pairs, List[AlignRow]]:
    """Every target layer with its source layer (None: it keeps the target's values), and the
    two lists side by side."""
    by_src = {layer.name: layer for layer in source.layers}
    _check_names(source, target, options, by_src)
    fixed = {tgt: by_src[src] for src, tgt in options.maps.items()}
    free_src = [l for l in source.layers if l.name not in options.maps and l.name not in options.drops]
    free_tgt = [t for t in target.layers if t.name not in fixed and t.name not in options.skips]
    if options.align:
        match = _aligned(source, target, free_src, free_tgt, head, options)
    else:
        match = _classwise(source, target, free_src, free_tgt) if classwise else _positional(source, target, free_src, free_tgt)
    pairs = [(fixed.get(t.name) or match.get(t.name), t) for t in target.layers]
    return pairs, _side_by_side(source, pairs, options, "align" if options.align else "class" if classwise else "position")


def _check_names(source: ModelView, target: Target, options: PlanOptions, by_src: Dict[str, Layer]) -> None:
    """Every layer an option names is a weighted layer of its side; --units SPECs fit their layer."""
    by_tgt = {layer.name: layer for layer in target.layers}
    for src, tgt in options.maps.items():
        _known(source.path, src, by_src, "--map source layer")
        _known(target.label, tgt, by_tgt, "--map target layer")
    for tgt in options.skips:
        _known(target.label, tgt, by_tgt, "--skip target layer")
    for src in options.drops:
        _known(source.path, src, by_src, "--drop source layer")
    for src, spec in options.units.items():
        _known(source.path, src, by_src, "--units source layer")
        _check_units(source.path, by_src[src], spec, source.framework == torchrules.FRAMEWORK)


def _side_by_side(source: ModelView, pairs: Pairs, options: PlanOptions, how: str) -> List[AlignRow]:
    """The alignment rows in both lists' order, as a diff shows them: the source layers left out
    between two pairs (dropped), then the target layers between them that keep their values."""
    position = {layer.name: i for i, layer in enumerate(source.layers)}
    paired = {src.name for src, _ in pairs if src is not None}
    left = deque(l.name for l in source.layers if l.name not in paired)
    following = len(position)  # the source position of the next pair, scanning backwards
    upto: List[int] = []
    for src, _ in reversed(pairs):
        following = position[src.name] if src is not None else following
        upto.append(following)
    rows: List[AlignRow] = []
    for (src, tgt), limit in zip(pairs, reversed(upto), strict=True):
        while left and position[left[0]] < limit:
            name = left.popleft()
            rows.append(AlignRow(name, None, "dropped", "drop" if name in options.drops else how))
        if src is None:
            rows.append(AlignRow(None, tgt.name, "kept", "skip" if tgt.name in options.skips else how))
        else:
            rows.append(AlignRow(src.name, tgt.name, "paired", "map" if src.name in options.maps else how))
    rows += [AlignRow(name, None, "dropped", "drop" if name in options.drops else how) for name in left]
    return rows


def _known(file: str, name: str, layers: Dict[str, Any], what: str) -> None:
    if name not in layers:
        raise WeightportError(file, f"{what} '{name}' is not a weighted layer of this file", f"choose one of: {', '.join(list(layers)[:12])}")


def _source_class(layer: Layer) -> Optional[str]:
    """The Keras class a source layer pairs as (a PyTorch module's: Linear as Dense ...)."""
    cls = torchrules.keras_class(layer.class_name) if torchrules.is_torch_class(layer.class_name) else layer_class(layer)
    return pairing_class(cls, layer.wrapped)


def _target_class(layer: TargetLayer) -> Optional[str]:
    return pairing_class(layer.class_name or guess_class([w.role for w in layer.weights], [w.shape for w in layer.weights]), layer.wrapped)


def _compatible(src: Optional[str], tgt: Optional[str]) -> bool:
    """Classes that may pair: the same, a Dense and a Conv (the twin's head), and a convolution
    and its depthwise or transposed kind, which a PyTorch state dict cannot tell apart."""
    if src is None or tgt is None or src == tgt or tgt in torchrules.conv_kinds(src) or src in torchrules.conv_kinds(tgt):
        return True
    convs = {src, tgt} - {"Dense"}
    return len(convs) == 1 and next(iter(convs)).startswith("Conv")


def _positional(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer]) -> Dict[str, Layer]:
    classes = [(_source_class(s), _target_class(t)) for s, t in zip(src, tgt)]
    if len(src) != len(tgt) or not all(_compatible(a, b) for a, b in classes):
        raise _mismatch(source, target, src, tgt, f"{len(src)} weighted layers in the source, {len(tgt)} in the target")
    return {t.name: s for s, t in zip(src, tgt, strict=True)}


def _classwise(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer]) -> Dict[str, Layer]:
    """Pair the k-th layer of each class with the k-th (views keep Keras 3's per-class
    numbering in order); the source's Dense layers take the target's convolutions left over."""
    pools: Dict[Optional[str], Deque[Layer]] = defaultdict(deque)
    for layer in src:
        pools[_source_class(layer)].append(layer)
    match: Dict[str, Layer] = {}
    for layer in tgt:
        cls = _target_class(layer)
        taken = _take(pools, layer, cls)
        if taken is None:
            raise _mismatch(source, target, src, tgt, f"target layer '{layer.name}' ({cls}) has no source layer of its class left")
        match[layer.name] = taken
    left = [l.name for pool in pools.values() for l in pool]
    if left:
        raise _mismatch(source, target, src, tgt, f"source layer(s) {', '.join(left[:5])} have no target layer")
    return match


def _aligned(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer], head: Dict[str, HeadRole],
             options: PlanOptions) -> Dict[str, Layer]:
    """`--align`: the one order-preserving alignment pairing the most layers, where a pair is
    allowed only when a rule makes every tensor of it exact (shapes, roles, the head's window)."""
    def allowed(i: int, j: int) -> bool:
        if len(src[i].weights) != len(tgt[j].weights) or not _compatible(_source_class(src[i]), _target_class(tgt[j])):
            return False
        try:
            _layer_steps(source, src[i], tgt[j], _role_of(source, head, src[i], tgt[j]), options)
        except WeightportError:
            return False
        return True

    try:
        pairs = align(len(src), len(tgt), allowed)
    except Ambiguous as doubt:
        names = [src[i].name for i in doubt.sources[:6]], [tgt[j].name for j in doubt.targets[:6]]
        raise WeightportError(source.path, f"--align: alignments that pair the layers differently are equally good; in doubt: "
                                           f"source {', '.join(names[0]) or '-'}, target {', '.join(names[1]) or '-'}",
                              "pair those layers yourself with --map SRC=DST (or leave them out with --drop / --skip)") from None
    return {tgt[j].name: src[i] for i, j in pairs}


def _take(pools: Dict[Optional[str], Deque[Layer]], layer: TargetLayer, cls: Optional[str]) -> Optional[Layer]:
    """The next source layer for a target layer of class `cls`: of its class, or its stand-in;
    else, where one side's file does not say what a wrapper holds, the next wrapper of the same
    class (TimeDistributed(Dense) otherwise pools with the Dense layers); else, where either side
    names no class (a target file without one, a PyTorch norm), the next with the same tensor shapes."""
    pool = pools[cls] if pools[cls] else _stand_in(pools, cls)
    if pool:
        return pool.popleft()
    shapes = [tuple(w.shape) for w in layer.weights]
    for pool in pools.values():
        found = next((c for c in pool if (c.class_name == layer.class_name is not None and None in (c.wrapped, layer.wrapped))
                      or (None in (layer.class_name, _source_class(c)) and [t.shape for t in c.weights] == shapes)), None)
        if found is not None:
            pool.remove(found)
            return found
    return None


def _stand_in(pools: Dict[Optional[str], Deque[Layer]], cls: Optional[str]) -> Deque[Layer]:
    """A Dense and a convolution stand in for each other (dense-to-conv, conv-to-dense): a
    target convolution takes the source's next Dense, a target Dense the next convolution left."""
    plain = next((kind for kind in torchrules.plain_convs(cls) if pools[kind]), None)
    if plain is not None:  # a depthwise or transposed target conv: the next plain one (a PyTorch source's)
        return pools[plain]
    if (cls or "").startswith("Conv"):
        return pools["Dense"]
    if cls == "Dense":
        return next((pool for name, pool in list(pools.items()) if (name or "").startswith("Conv") and pool), pools[cls])
    return pools[cls]


def _describe(layer: Any) -> str:
    cls = _source_class(layer) if isinstance(layer, Layer) else _target_class(layer)
    shapes = " ".join("x".join(map(str, w.shape)) for w in layer.weights)
    return f"{layer.name} ({cls or '?'}) {shapes}"


def _mismatch(source: ModelView, target: Target, src: List[Layer], tgt: List[TargetLayer], problem: str) -> WeightportError:
    """The error for layers that do not pair: both lists side by side, first divergence marked."""
    left, right = [printable(_describe(l)) for l in src], [printable(_describe(t)) for t in tgt]
    header = printable("source: " + source.path)
    width = max([len(s) for s in left] + [len(header)])
    rows = [f"   {header:<{width}}  target: {printable(target.label)}"]
    diverged = False
    for i in range(max(len(left), len(right))):
        a = src[i] if i < len(src) else None
        b = tgt[i] if i < len(tgt) else None
        bad = not diverged and (a is None or b is None or not _compatible(_source_class(a), _target_class(b)))
        diverged = diverged or bad
        mark = ">>" if bad else "  "
        rows.append(f"{mark} {left[i] if a else '(none)':<{width}}  {right[i] if b else '(none)'}")
    return WeightportError(source.path, problem, "align them with --align, pair them with --map SRC=DST, leave source layers out with "
                           "--drop SRC and target layers with --skip DST", detail="\n".join(rows))


# --- rules --------------------------------------------------------------------------------

def _layer_steps(source: ModelView, src: Layer, tgt: TargetLayer, role: Optional[HeadRole], options: PlanOptions) -> List[Step]:
    if len(src.weights) != len(tgt.weights):
        raise WeightportError(source.path, f"layer pair {src.name} -> {tgt.name}: {len(src.weights)} tensors in the source, {len(tgt.weights)} in the target",
                              "pair the layers differently with --map, or --skip the target layer")
    _check_sub_objects(source, src, tgt)
    spec = options.units.get(src.name)
    if source.framework == torchrules.FRAMEWORK:
        return [_step(source.path, src, t, tgt, i, _torch_units(source, src, t, tt, tgt, role, options, spec))
                for i, (t, tt) in enumerate(zip(src.weights, tgt.weights, strict=True))]
    return [_step(source.path, src, t, tgt, i, _chosen(source.path, src, t, tt, role, options, spec))
            for i, (t, tt) in enumerate(zip(src.weights, tgt.weights, strict=True))]


def _check_sub_objects(source: ModelView, src: Layer, tgt: TargetLayer) -> None:
    """A layer whose tensors sit in sub-objects weightport does not know (a custom layer holding
    sublayers) has no known tensor order; its tensors pair only where both sides name the same
    Keras 3 places for them, never by an assumed position."""
    if src.order_known and tgt.order_known:
        return
    if [t.k3_var for t in src.weights] != [t.k3_var for t in tgt.weights] or None in (t.k3_var for t in src.weights):
        where = sorted({t.k3_var.rsplit("/vars/", 1)[0] for t in src.weights if t.k3_var and "/vars/" in t.k3_var})
        raise WeightportError(source.path, f"layer pair {src.name} -> {tgt.name} ({src.display_class or tgt.class_name or 'class unknown'}): its tensors sit in "
                                           f"sub-objects{' (' + ', '.join(where[:4]) + ')' if where else ''} whose order weightport cannot establish across these files",
                              "convert between files of the same layout (both Keras 3 .weights.h5/.keras), or --skip the target layer")


_WITH_UNITS = {"Dense", "Conv1D", "Conv2D", "Conv3D"}  # layers whose tensors all end in the output units


def _check_units(file: str, src: Layer, spec: str, torch: bool) -> None:
    """A layer with output units (a Keras Dense or Conv: its tensors' last axis; a PyTorch Linear
    or conv: `torchrules.unit_count`), and a SPEC within them."""
    if torch:
        count = torchrules.unit_count(src.class_name, {t.role: t.shape for t in src.weights})
    else:
        keras = layer_class(src) in _WITH_UNITS and src.weights and not any(is_th_kernel(src, t) for t in src.weights)
        count = src.weights[0].shape[-1] if keras else None
    if count is None:
        raise WeightportError(file, f"--units {src.name}={spec}: {src.name} ({layer_class(src) or 'unknown class'}) has no output units to choose",
                              "--units takes a Dense or Conv layer (its kernel's output axis and its bias)"
                              + (": a PyTorch Linear, Conv or ConvTranspose module" if torch else ""))
    try:
        units.resolve(spec, count)
    except ValueError as exc:
        raise WeightportError(file, f"--units {src.name}={spec}: {exc}", "units are numbered from 0; inspect shows the layer's size") from None


def _chosen(file: str, src: Layer, tensor: Tensor, wanted: TargetTensor, role: Optional[HeadRole], options: PlanOptions,
            spec: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """The pair's rule, after `--units` keeps some output units (the named rule `units`)."""
    if spec is None:
        return _rule(file, src, tensor, tensor.shape, wanted, role, options)
    kept = len(units.resolve(spec, tensor.shape[-1]))
    name, params = _rule(file, src, tensor, tensor.shape[:-1] + (kept,), wanted, role, options)
    return "units", {"units": spec, "rule": name, "params": params}


def _torch_units(source: ModelView, src: Layer, tensor: Tensor, wanted: TargetTensor, tgt: TargetLayer, feed: Optional[HeadRole],
                 options: PlanOptions, spec: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """`_torch_rule`, after `--units` keeps some output units of a PyTorch tensor: along the axis
    its layout holds them in (a weight's `out`, the first; a transposed conv's, the second). A
    depthwise target conv takes no subset of units: refused, naming the pair."""
    if spec is None:
        return _torch_rule(source, src, tensor, tensor.shape, wanted, tgt, feed, options)
    axis = torchrules.units_axis(src.class_name, tensor.role, _target_class(tgt), wanted.role)
    if axis is None:
        raise WeightportError(source.path, f"--units {src.name}={spec}: layer pair {src.name} ({src.class_name}) -> {tgt.name} ({_target_class(tgt)}) is a "
                                    "depthwise conv, whose every output channel reads its own input channel: no subset of its units is exact",
                              f"leave --units {src.name} out and convert the whole layer, or --drop {src.name} and --skip {tgt.name} "
                              "to keep the target's values")
    have = list(tensor.shape)
    have[axis] = len(units.resolve(spec, have[axis]))
    name, params = _torch_rule(source, src, tensor, tuple(have), wanted, tgt, feed, options)
    return "units", {"units": spec, "axis": axis, "rule": name, "params": params}


def _step(file: str, src: Layer, tensor: Tensor, tgt: TargetLayer, index: int, rule: Tuple[str, Dict[str, Any]]) -> Step:
    wanted = tgt.weights[index]
    return Step(
        source_file=file, source_layer=src.name, source_path=tensor.path, target_layer=tgt.name,
        target_name=wanted.legacy_name, target_keras3=f"{tgt.k3_path}/{wanted.k3_var}" if tgt.k3_path and wanted.k3_var else None,
        role=wanted.role or tensor.role, source_shape=list(tensor.shape), target_shape=list(wanted.shape),
        rule=rule[0], params=rule[1], source_dtype=str(tensor.dtype), target_dtype=wanted.dtype,
    )


def _keep_steps(tgt: TargetLayer, target_view: Optional[ModelView]) -> List[Step]:
    """`--skip`: the target layer keeps the values it has in the target file."""
    layer = next(l for l in target_view.layers if l.name == tgt.name) if target_view else None
    if layer is None:
        return []
    return [_step(target_view.path, layer, t, tgt, i, ("copy", {})) for i, t in enumerate(layer.weights)]


def _rule(file: str, src: Layer, tensor: Tensor, have: Tuple[int, ...], wanted: TargetTensor, role: Optional[HeadRole],
          options: PlanOptions) -> Tuple[str, Dict[str, Any]]:
    """The one rule that makes `wanted` exactly from `tensor` (of shape `have`, after --units),
    or a refusal naming both."""
    want = tuple(wanted.shape)
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


def _torch_rule(source: ModelView, src: Layer, tensor: Tensor, have: Tuple[int, ...], wanted: TargetTensor, tgt: TargetLayer, feed: Optional[HeadRole],
                options: PlanOptions) -> Tuple[str, Dict[str, Any]]:
    """The rule from a PyTorch layout (`torchrules`), the target layer's class and what feeds it
    deciding: a DepthwiseConv2D takes a (C*m, 1, *k) kernel, a Dense fed by a Flatten of a window
    takes a Linear's rows reordered. A Linear into a Dense whose input nobody can tell (a target
    without its config) is refused rather than guessed. `have`: the tensor's shape (after --units)."""
    if feed is not None and feed.kind == "unknown" and src.class_name == "Linear" and tensor.role == "kernel":
        raise WeightportError(source.path, f"Linear '{src.name}' ({have[1]} inputs) goes into Dense '{tgt.name}', and without the target's config "
                                           "(or the plan weightport records in a file it wrote) nothing says whether a Flatten of a window "
                                           "(NCHW: rows to reorder) or a vector feeds it, nor the window's shape",
                              "give the target with its config (.keras, or a full-model .h5), or " + torchrules.window_hint(source.layers, src.name, have[1]))
    window = (tuple(feed.window), feed.channels, feed.order) if feed is not None and feed.kind == "window" else None
    found = torchrules.choose(src.class_name, tensor.role, have, (_target_class(tgt), wanted.role, tuple(wanted.shape)), window, options.source_order)
    if found is None:
        raise WeightportError(source.path, f"layer pair {src.name} ({src.class_name or 'class unknown'}) -> {tgt.name} ({tgt.class_name or 'class unknown'}): "
                                    f"no exact rule takes PyTorch's {tensor.role or tensor.name} {'x'.join(map(str, have))} "
                                    f"to {'x'.join(map(str, wanted.shape))}", "check the target architecture, or pair the layers with --map / --skip")
    return found


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
