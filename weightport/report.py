"""Rendering views and plans for people (tables) and for programs (the stable JSON)."""

from __future__ import annotations

import json
from typing import List, Optional

from .errors import printable
from .planner import Plan
from .rules import RULES
from .verification import Verification
from .view import Layer, ModelView, Tensor

__all__ = ["view_table", "view_json", "plan_table", "plan_json", "verification_table", "verification_json", "convert_json", "load_line"]


def view_json(view: ModelView) -> str:
    """The `inspect --json` document; its keys are documented in the README."""
    return json.dumps(view.to_dict(), indent=2)


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape) if shape else "scalar"


def _tensor_label(tensor: Tensor) -> str:
    label = tensor.name.rsplit("/", 1)[-1]
    if tensor.k3_var and not tensor.k3_var.startswith("vars/"):  # a wrapper's: say which sub-object holds it
        label = f"{tensor.k3_var.split('/', 1)[0]} {label}"
    if tensor.role and tensor.role not in label:
        label += f" ({tensor.role})"
    return f"{label} {_shape(tensor.shape)} {tensor.dtype}"


def _clip(text: str, width: int = 48) -> str:
    """Keep the table readable when Keras names run to thousands of characters (escaped first,
    so a clip cannot cut an escape in half)."""
    text = printable(text)
    return text if len(text) <= width else f"{text[: width // 2 - 2]}...{text[-(width // 2 - 1):]}"


def _cells(rows: List[List[str]]) -> List[List[str]]:
    """Table cells as they may be printed (`printable`), before their widths are measured."""
    return [[printable(cell) for cell in row] for row in rows]


def _text(lines: List[str]) -> str:
    """The lines of a table or report, each one line whatever names it holds."""
    return "\n".join(printable(line) for line in lines)


CHAIN_WIDTH = 40  # a "fed by" chain longer than this shows its ends and how many layers lie between


def _chain(classes: List[str]) -> str:
    """The weightless layers between a layer and its producer, readable however many there are
    (a DenseNet block has dozens): `BatchNormalization > ... (+12) > Concatenate`."""
    whole = " > ".join(classes)
    if len(whole) <= CHAIN_WIDTH or len(classes) < 3:
        return _clip(whole)
    return f"{_clip(classes[0], 20)} > ... (+{len(classes) - 2}) > {_clip(classes[-1], 20)}"


def _rows(layer: Layer, index: int) -> List[List[str]]:
    labels = [_clip(_tensor_label(t), 56) for t in layer.weights]
    first = [str(index), _clip(layer.name), _clip(layer.display_class or "?", 40), _chain(layer.fed_by), labels[0], f"{layer.params:,}"]
    return [first] + [["", "", "", "", label, ""] for label in labels[1:]]


_FRAMEWORKS = {"torch": "PyTorch state dict"}  # what the layout line says of a file that is not Keras's


def _facts(view: ModelView) -> List[str]:
    version = _FRAMEWORKS.get(view.framework) or (f"Keras {view.keras_version}" if view.keras_version else "Keras version not recorded")
    backend = f", backend {view.backend}" if view.backend else ""
    lines = [f"file     {view.path}", f"layout   {view.layout} ({view.kind}), {version}{backend}"]
    if view.model_class or view.input_shape:
        shape = f", input {tuple(view.input_shape)}" if view.input_shape else ""
        lines.append(f"model    {view.model_class or 'unknown class'}{shape}")
    lines.append(f"order    {view.order}: {view.order_note}")
    lines += [f"note     {note}" for note in view.notes]
    return lines


def view_table(view: ModelView) -> str:
    """A readable table: position, layer, class, what feeds it, tensors, parameters; totals."""
    header = ["#", "layer", "class", "fed by", "tensors", "params"]
    rows = _cells([row for i, layer in enumerate(view.layers) for row in _rows(layer, i)])
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]

    def fmt(row: List[str]) -> str:
        cells = [cell.rjust(w) if c in (0, 5) else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    total = f"{len(view.layers)} weighted layers, {len(view.tensors)} tensors, {view.params:,} parameters"
    return _text(_facts(view) + ["", fmt(header)] + [fmt(r) for r in rows] + ["", total])


def plan_json(plan: Plan) -> str:
    """The `plan --json` document; its keys are documented in the README."""
    return json.dumps(plan.to_dict(), indent=2)


def plan_table(plan: Plan, layout: Optional[str] = None) -> str:
    """One row per tensor: source path, target path (in `layout`), shapes, rule, dtype."""
    header = ["#", "source", "shape", "rule", "target", "shape", "dtype"]
    rows = []
    for i, step in enumerate(plan.steps):
        target = step.target_name if layout == "legacy" or not step.target_keras3 else step.target_keras3
        dtype = step.target_dtype if step.source_dtype == step.target_dtype else f"{step.source_dtype}->{step.target_dtype}"
        rows.append([str(i), _clip(step.source_path.lstrip("/"), 56), _shape(step.source_shape), RULES[step.rule].label(step.params),
                     _clip(target, 56), _shape(step.target_shape), dtype])
    rows = _cells(rows)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = [f"source   {plan.source}", f"target   {plan.target.label}"] + [f"note     {n}" for n in plan.notes] + [""]
    lines += alignment_table(plan)
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    return _text(lines + ["", f"{len(plan.steps)} tensors, {plan.to_dict()['total_values']:,} values"])


_STATUS = {"paired": "->", "dropped": "  ", "kept": "  "}


def alignment_table(plan: Plan) -> List[str]:
    """The two layer lists side by side (paired / dropped / kept from the target), when the
    pairing is more than position by position; else nothing."""
    if all(row.status == "paired" and row.by in ("position", "class") for row in plan.alignment):
        return []
    left = [_clip(row.source_layer or "", 40) for row in plan.alignment]
    width = max([len("source layer")] + [len(cell) for cell in left])
    lines = [f"{'source layer':<{width}}     target layer"]
    for cell, row in zip(left, plan.alignment, strict=True):
        right = {"paired": _clip(row.target_layer or "", 40), "dropped": "(dropped: not written)",
                 "kept": f"{_clip(row.target_layer or '', 40)} (kept: the target's values)"}[row.status]
        lines.append(f"{cell:<{width}}  {_STATUS[row.status]} {right}  [{row.by}]".rstrip())
    return lines + [""]


def verification_json(result: Verification) -> str:
    """The `verify --json` document; its keys are documented in the README."""
    return json.dumps(result.to_dict(), indent=2)


def convert_json(plan: Plan, out: str, layout: str, written: bool, load_failure: Optional[str] = None) -> str:
    """The `convert --json` document: the plan, its verification, the final Keras load of a whole
    model and the output; its keys are documented in the README. `ok` is the verdict the exit
    status gives."""
    verification = plan.verification.to_dict() if plan.verification is not None else None
    ok = written and (plan.verification is None or plan.verification.ok)
    load = {"loaded_by": plan.loaded_by, "skipped": plan.load_skipped, "failure": load_failure}
    return json.dumps({"ok": ok, "output": {"path": out, "layout": layout, "written": written}, "plan": plan.to_dict(),
                       "verification": verification, "load": load}, indent=2)


def verification_table(result: Verification) -> str:
    """One row per layer pair: what was computed on both sides and how far apart they are."""
    header = ["source layer", "target layer", "check", "max abs", "max rel", ""]
    rows = [[_clip(p.source_layer, 40), _clip(p.target_layer, 40), "; ".join(p.checks), f"{p.max_abs:.3g}", f"{p.max_rel:.3g}",
             "ok" if p.ok else "FAIL"] for p in result.pairs]
    rows = _cells(rows)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    failed = [p for p in result.pairs if not p.ok]
    verdict = (f"verified: {len(result.pairs)} layer pairs within atol {result.atol:g} or rtol {result.rtol:g}" if not failed else
               f"FAILED: {len(failed)} of {len(result.pairs)} layer pairs differ: " + ", ".join(f"{p.source_layer} -> {p.target_layer}" for p in failed))
    if result.digest is not None and not result.digest.ok:
        verdict = ("FAILED: " if not failed else verdict + "; and ") + "OUT was converted from another file than SRC (source digest differs)"
    keras = result.keras.lines() if result.keras is not None else []
    return _text(lines + _digest_lines(result) + ["", verdict] + keras)


def _digest_lines(result: Verification) -> List[str]:
    """The provenance check of `verify`: what OUT records of its source against SRC's digest."""
    check = result.digest
    if check is None:
        return []
    algorithm = check.attribute.rsplit("_", 1)[-1]
    if check.ok:
        return ["", f"source {algorithm}: {check.actual}, as OUT records ({check.attribute})"]
    return ["", f"source {algorithm}: {check.actual}, but OUT records {check.recorded} ({check.attribute}): DIFFERS"]


def load_line(plan: Plan) -> str:
    """What the final check of a whole model found: which Keras loaded it, or that none could."""
    if plan.loaded_by:
        return f"loaded: {plan.loaded_by} loads the whole model"
    why = f"{plan.load_skipped}, and it is not run here" if plan.load_skipped else "not installed"
    return f"not loaded in Keras ({why}): the numpy check above proves the weights, not that Keras can build the model"
