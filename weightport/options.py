"""The options that shape a plan, each declared once: its API keyword (also `PlanOptions`'s field
and the `plan --json` names), type, default, command-line flag, help and check.

`plan`, `convert` and `verify` take them as keywords (`api`: their signatures are made from this
table), `planner.PlanOptions` holds and checks them, and the command line's parsers are made from
it (`add_to`, `from_cli`). Nothing here imports more than the command line's start does.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from . import arguments
from .errors import WeightportError

TYPE_CHECKING = False  # typing is not imported at run time (start-up: tests/test_lean_cli.py)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["Option", "PLAN_OPTIONS", "add_to", "from_cli"]


class Option:
    """One plan option. `check(name, value)` turns the API's value into the one the planner takes
    (a WeightportError naming it otherwise); `cli` is how argparse takes it (action, type, metavar,
    choices) and `from_cli` turns argparse's value into the API's."""

    __slots__ = ("name", "type", "default", "flag", "help", "check", "cli", "from_cli")

    def __init__(self, name: str, type: str, default: Any, flag: str, help: str, check: Callable[[str, Any], Any],
                 cli: Dict[str, Any], from_cli: Callable[[Any], Any] = lambda value: value) -> None:
        self.name, self.type, self.default, self.flag, self.help = name, type, default, flag, help
        self.check, self.cli, self.from_cli = check, cli, from_cli


def _pair(text: str) -> Tuple[str, str]:
    src, sep, dst = text.partition("=")
    if not sep or not src or not dst:
        raise argparse.ArgumentTypeError(f"'{text}' is not SRC_LAYER=DST_LAYER")
    return src, dst


def _units(text: str) -> Tuple[str, str]:
    """`LAYER=SPEC`; the SPEC itself is checked with the other options (`_unit_specs`)."""
    layer, sep, spec = text.rpartition("=")
    if not sep or not layer:
        raise argparse.ArgumentTypeError(f"'{text}' is not SRC_LAYER=SPEC")
    return layer, spec


def _names(what: str, value: Optional[Sequence[str]]) -> List[str]:
    """Layer names: a list (a lone string would be taken letter by letter)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise WeightportError(None, f"{what} takes a list of layer names, not {value!r}", f"e.g. {what}=['predictions']")
    return list(value)


def _mapping(what: str, value: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if value is None:
        return {}
    names = list(value.items()) if isinstance(value, Mapping) else None
    if names is None or not all(isinstance(name, str) and (what == "units" or isinstance(other, str)) for name, other in names):
        raise WeightportError(None, f"{what} takes a dict keyed by source layer names, not {value!r}",
                              f"e.g. {what}={{'predictions': {'1:1001' if what == 'units' else repr('score')}}}")
    return dict(value)


def _unit_specs(what: str, value: Optional[Dict[str, Any]]) -> Dict[str, str]:
    return {layer: _unit_spec(layer, spec) for layer, spec in _mapping(what, value).items()}


def _unit_spec(layer: str, spec: Any) -> str:
    from . import units  # numpy: only when a plan is made

    try:
        if not isinstance(spec, (str, list, tuple)):
            raise ValueError(f"{spec!r} is not a SPEC: give START:STOP (a slice) or a list like 0,5,9")
        return units.normalize(spec)
    except ValueError as exc:
        raise WeightportError(None, f"--units {layer}={spec}: {exc}", "give START:STOP (a slice) or a list like 0,5,9") from None


def _source_order(what: str, value: Any) -> Optional[str]:
    return arguments.source_order(value)


_SWITCH = {"action": "store_true"}

# In the order the command line's help lists them.
PLAN_OPTIONS = (
    Option("source_order", "Optional[str]", None, "--source-order",
           "order in which SRC's Flatten saw its input (default: from the config; hwc)", _source_order, {"choices": arguments.SOURCE_ORDERS}),
    Option("flip_kernels", "bool", False, "--flip-kernels",
           "SRC's conv kernels were trained by Theano (true convolution): flip them spatially", arguments.flag, _SWITCH),
    Option("maps", "Optional[Dict[str, str]]", None, "--map", "pair these two layers (repeatable)", _mapping,
           {"metavar": "SRC_LAYER=DST_LAYER", "type": _pair, "action": "append"}, lambda pairs: dict(pairs or [])),
    Option("skips", "Optional[List[str]]", None, "--skip", "leave this target layer out of the pairing: it keeps the target's values (repeatable)",
           _names, {"metavar": "DST_LAYER", "action": "append"}, lambda names: list(names or [])),
    Option("drops", "Optional[List[str]]", None, "--drop", "leave this source layer out of the pairing: not written (repeatable)",
           _names, {"metavar": "SRC_LAYER", "action": "append"}, lambda names: list(names or [])),
    Option("align", "bool", False, "--align",
           "pair unequal layer lists by the one order-preserving alignment whose every pair a rule makes exact", arguments.flag, _SWITCH),
    Option("units", "Optional[Dict[str, Any]]", None, "--units",
           "keep only these output units of the layer: START:STOP or a list like 0,5,9 (repeatable)", _unit_specs,
           {"metavar": "SRC_LAYER=SPEC", "type": _units, "action": "append"}, lambda pairs: dict(pairs or [])),
    Option("score_map", "bool", False, "--score-map",
           "derived twin: take a global-pooling head's pooling out, so it outputs (rows, cols, classes)", arguments.flag, _SWITCH),
)


def add_to(parser: argparse.ArgumentParser) -> None:
    """The plan options as `parser`'s flags."""
    for option in PLAN_OPTIONS:
        parser.add_argument(option.flag, dest=option.name, help=option.help, **option.cli)


def from_cli(args: argparse.Namespace) -> Dict[str, Any]:
    """The plan options parsed by `add_to`'s flags, as the API takes them (which checks them)."""
    return {option.name: option.from_cli(getattr(args, option.name)) for option in PLAN_OPTIONS}
