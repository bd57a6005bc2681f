"""What feeds a weights-only output's first Dense, read back from the plan weightport recorded
in it (`weightport_rules`, written by `writers`).

A PyTorch state dict records no graph, and neither does a weights-only Keras file: checking
`verify model.pth out.weights.h5` needs the window a Linear after `torch.flatten` saw, which
`convert` took from its target's config (or `--flatten`). The output weightport wrote keeps the
rule it used, with that window (`torch-linear-flatten`: `window`, the source's and the target's
orders): the same window, hence the same plan, without asking for `--flatten` again. Whether the
output was made from this very source is the digest's business (`verify` checks it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

from . import budgets
from .errors import WeightportError
from .head import HeadRole, target_feeds
from .orders import canonical_order
from .view import Layer, ModelView

__all__ = ["ATTRIBUTE", "recorded_feeds"]

ATTRIBUTE = "weightport_rules"  # a JSON list of {target, source, source_file, rule, params}, one per target tensor
_LINEAR = ("torch-linear", "torch-linear-flatten")


def recorded_feeds(view: ModelView) -> Optional[Dict[str, HeadRole]]:
    """What feeds each Dense of `view` (an output with no config) by the rule recorded for its
    first Dense fed by nothing known: the window of its `torch-linear-flatten` (hwc in the
    output), or no window (`torch-linear`: a vector, or a window read in the output's own
    order, either way rows kept in place, so 1x1 reproduces it). None when the file records
    no such rule (not written by weightport, or from a Keras source)."""
    unknown = [name for name, role in target_feeds(view).items() if role.kind == "unknown"]
    layer = next((l for l in view.layers if unknown and l.name == unknown[0]), None)
    made = _rule_of(_records(view), layer, 0) if layer is not None else None
    if made is None:
        return None
    rule, params = made
    inputs = layer.weights[0].shape[0]
    window = tuple(params["window"]) if rule == "torch-linear-flatten" else (1, 1)
    positions = int(np.prod(window, dtype=np.int64))
    if rule == "torch-linear-flatten" and (params.get("target_order") != canonical_order(len(window)) or inputs % positions):
        return None
    flatten = window + (inputs // positions,)
    how = f"{params['order']} in the source" if rule == "torch-linear-flatten" else "rows in place"
    reason = f"after the Flatten of {'x'.join(map(str, flatten))}, as the plan recorded in {view.path} made it ({rule}, {how})"
    return {name: replace(role, reason=reason) if role.kind == "window" else role for name, role in target_feeds(view, flatten).items()}


def _records(view: ModelView) -> List[Dict[str, Any]]:
    """The recorded rules of an HDF5 output ([] when it records none, or not as weightport writes
    them, or more than a model's plan: the record only spares a --flatten, nothing depends on it)."""
    try:
        with h5py.File(view.path, "r") as f:  # as the reader opened it (HDF5 shares the open file)
            if ATTRIBUTE not in f.attrs or f.attrs.get_id(ATTRIBUTE).get_storage_size() > budgets.MAX_CONFIG_BYTES:
                return []
            text = f.attrs[ATTRIBUTE]
        budgets.check_config_text(text, view.path, ATTRIBUTE)
        records = json.loads(text)
    except (OSError, TypeError, ValueError, KeyError, WeightportError):
        return []
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("target"), str) and isinstance(r.get("params"), dict)] \
        if isinstance(records, list) else []


def _rule_of(records: List[Dict[str, Any]], layer: Layer, index: int) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The rule recorded for tensor `index` of `layer` (named in the record by its Keras 3 place
    or its legacy name), its own after `units`; None unless a Linear's."""
    tensor = layer.weights[index]
    names = {tensor.path.lstrip("/"), tensor.name, f"{layer.name}/{tensor.name}", f"layers/{layer.name}/vars/{index}"}
    record = next((r for r in records if r["target"] in names), None)
    if record is None:
        return None
    rule, params = record.get("rule"), record["params"]
    if rule == "units" and isinstance(params.get("params"), dict):
        rule, params = params.get("rule"), params["params"]
    if rule not in _LINEAR or "shape" in params or (rule == "torch-linear-flatten" and not _window(params)):
        return None
    return rule, params


def _window(params: Dict[str, Any]) -> bool:
    window = params.get("window")
    return isinstance(window, list) and 1 <= len(window) <= 3 and all(isinstance(n, int) and n > 0 for n in window) \
        and isinstance(params.get("order"), str) and isinstance(params.get("target_order"), str)
