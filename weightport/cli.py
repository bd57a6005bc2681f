"""The `weightport` command line: argument parsing, error reporting, exit codes.

Exit 0 on success, 2 on bad input (one line, `weightport: error: FILE: problem; hint`),
1 on an internal error (short message; `--debug` shows the traceback). TensorFlow is never
imported here: only commands that need Keras import it, inside their own code.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import List, Optional

from ._version import __version__
from .errors import WeightportError

__all__ = ["main"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .readers import read
    from .report import view_json, view_table

    with read(args.file, config=args.config) as view:
        print(view_json(view) if args.json else view_table(view))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightport",
        description="Move trained Keras weights into another architecture (Dense -> Conv, FCN twins) "
                    "straight from the HDF5 file, with no model built.",
    )
    parser.add_argument("--version", action="version", version=f"weightport {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    inspect = commands.add_parser("inspect", help="list the weighted layers of a weights file, in model order")
    inspect.add_argument("file", metavar="FILE", help=".h5 / .hdf5 (Keras 1-3), .weights.h5 or .keras")
    inspect.add_argument("--config", metavar="JSON", help="sidecar model config (model.to_json()) for a weights-only file")
    inspect.add_argument("--json", action="store_true", help="print one JSON document (contract in the README)")
    inspect.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except WeightportError as exc:
        print(f"weightport: error: {exc.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weightport: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal error: short message, traceback only on request
        if args.debug:
            traceback.print_exc()
        print(f"weightport: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
