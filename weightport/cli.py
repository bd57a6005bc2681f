"""The `weightport` command line: argument parsing, error reporting, exit codes.

Exit 0 on success, 2 on bad input (one line, `weightport: error: FILE: problem; hint`),
1 on an internal error (short message; `--debug` shows the traceback). TensorFlow is never
imported here: only commands that need Keras import it, inside their own code.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
TYPE_CHECKING = False  # typing is not imported at run time (start-up: tests/test_lean_cli.py)
if TYPE_CHECKING:
    from typing import Any, List, NoReturn, Optional

from . import interrupt
from . import options as option_table
from ._version import __version__
from .errors import WeightportError, printable

__all__ = ["main", "run"]


def _out(text: str) -> None:
    """Print to standard output. A reader gone away (`| head`) is left to `main`; an output that
    cannot be written (a full disk, /dev/full) is reported like any file weightport cannot write,
    and so is one that is closed (`>&-`), where Python would drop the text without a word."""
    if sys.stdout is None:
        raise WeightportError(None, "cannot write standard output: it is closed", "send the output to a file or a pipe")
    try:
        print(text)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _unwritable(exc) from None


def _unwritable(exc: OSError) -> WeightportError:
    return WeightportError(None, f"cannot write standard output: {exc.strerror or exc}", "free some space, or send the output elsewhere")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .readers import read
    from .report import view_json, view_table

    with read(args.file, config=args.config) as view:
        _out(view_json(view) if args.json else view_table(view))
    return 0


def _window(text: str) -> List[int]:
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of sizes like 7,7,512") from None
    from .arguments import window  # the one rule for a window, the API's too

    try:
        return list(window(dims))
    except WeightportError:
        raise argparse.ArgumentTypeError(f"'{text}' must be L,C or H,W,C or D,H,W,C with positive sizes") from None


def _compression(text: str) -> str:
    from .compression import compression_filter

    try:
        compression_filter(text)
    except WeightportError as exc:
        raise argparse.ArgumentTypeError(f"{exc.problem}; {exc.hint}") from None
    return text


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return int(text)


def _plan_options(args: argparse.Namespace) -> dict:
    """The target options as the API takes them (which checks them: `planner.PlanOptions`)."""
    return dict(config=args.config, flatten=args.flatten, **option_table.from_cli(args))


def _cmd_plan(args: argparse.Namespace) -> int:
    from .api import plan
    from .report import plan_json, plan_table

    built = plan(args.source, args.target, **_plan_options(args))
    _out(plan_json(built) if args.json else plan_table(built))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    if (args.out is None) == (args.out_dir is None):
        raise WeightportError(None, "give either -o OUT (one SRC) or --out-dir DIR (any number of SRC)", "see weightport convert --help")
    if args.out is not None and len(args.source) > 1:
        raise WeightportError(None, f"-o takes one SRC and {len(args.source)} were given", "use --out-dir DIR to convert several files")
    if args.out_dir is not None:
        if args.json:
            raise WeightportError(None, "--json describes one conversion (-o OUT), not a sweep", "convert the files one at a time with -o OUT --json")
        return _convert_many(args, Path(args.out_dir))
    return _convert_single(args, args.source[0], args.out)


def _convert_single(args: argparse.Namespace, source: str, out: str) -> int:
    from . import digests

    digests.start(source)  # the provenance hash runs on the other core while numpy and h5py import
    try:
        return _convert_and_report(args, source, out)
    finally:
        digests.discard(source)  # the writer took it if it got that far; otherwise it is not needed


def _convert_and_report(args: argparse.Namespace, source: str, out: str) -> int:
    from pathlib import Path

    from .api import convert
    from .keras_load import LoadFailed
    from .progress import byte_progress
    from .report import convert_json, load_line, plan_table, verification_table
    from .verification import VerificationFailed
    from .writers import output_layout

    layout = output_layout(Path(out))
    try:
        with byte_progress(enabled=not args.quiet, label=Path(out).name) as progress:
            built = convert(source, out, args.target, force=args.force, full_model=args.full_model, progress=progress,
                            verify=not args.no_verify, compression=args.compression, **_plan_options(args))
    except VerificationFailed as failed:
        _out(convert_json(failed.plan, out, layout, written=False) if args.json else verification_table(failed.result))
        print(printable(f"weightport: {out} not written: what was converted did not pass verification"), file=sys.stderr)
        return 1
    except LoadFailed as failed:
        if args.json and failed.plan is not None:
            _out(convert_json(failed.plan, out, layout, written=False, load_failure=str(failed)))
        print(printable(f"weightport: {out} not written: {failed}"), file=sys.stderr)
        return 1
    if args.json:
        _out(convert_json(built, out, layout, written=True))
    elif not args.quiet:
        _out(plan_table(built, layout))
        _out(printable(f"wrote {out} ({layout} layout)"))
        if built.verification is not None:
            _out(verification_table(built.verification))
            if args.full_model or layout == "keras-archive":
                _out(load_line(built))
    return 0


def _convert_many(args: argparse.Namespace, out_dir) -> int:
    from .batch import Job, check_outputs, exit_status, out_path, run_jobs, worker_count
    from .progress import file_progress

    if not out_dir.is_dir():
        raise WeightportError(out_dir, "no such folder", "create the output folder first")
    jobs = [Job(source, out_path(source, out_dir)) for source in args.source]
    check_outputs(jobs)
    options = dict(target=args.target, force=args.force, full_model=args.full_model, compression=args.compression, **_plan_options(args))
    with file_progress(len(jobs), enabled=not args.quiet) as tick:
        def report(outcome) -> None:
            if outcome.status or not args.quiet:
                tick.write(outcome.message if args.debug else printable(outcome.message), error=bool(outcome.status))
            tick.advance()

        outcomes = run_jobs(jobs, options, verify=not args.no_verify, workers=worker_count(args.jobs, len(jobs)), debug=args.debug, on_done=report)
    failed = [o for o in outcomes if o.status]
    if not args.quiet or failed:
        summary = f"{len(outcomes) - len(failed)} of {len(outcomes)} files converted"
        if failed:
            print(summary, file=sys.stderr)
        else:
            _out(summary)
    return exit_status(outcomes)


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import digests

    digests.start(args.source)  # SRC's digest, to check against OUT's record, runs while numpy and h5py import
    from .api import verify
    from .report import verification_json, verification_table

    result = verify(args.source, args.out, atol=args.atol, rtol=args.rtol, **_plan_options(args))
    if args.keras and result.ok:  # before anything is printed: a Keras refusal is the one line of exit 2
        from .keras_check import check_end_to_end

        result.keras = check_end_to_end(args.source, args.out, config=args.config, atol=args.atol, rtol=args.rtol, score_map=args.score_map)
    _out(verification_json(result) if args.json else verification_table(result))
    return 0 if result.ok else 1


def _add_target_options(parser: argparse.ArgumentParser, target: bool = True, many: bool = False) -> None:
    parser.add_argument("source", metavar="SRC", nargs="+" if many else None, help="the trained weights: .h5 / .hdf5, .weights.h5, .keras or .safetensors")
    if target:
        parser.add_argument("--target", metavar="FILE", help="a file describing the target architecture (e.g. the untrained FCN's save_weights); "
                            "default: derive the fully-convolutional twin from SRC's config")
    parser.add_argument("--config", metavar="JSON", help="sidecar model config (model.to_json()) for a weights-only SRC")
    parser.add_argument("--flatten", metavar="H,W,C", type=_window, help="the window that fed the first Dense (L,C / H,W,C / D,H,W,C) when SRC has no config")
    option_table.add_to(parser)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, its width found as argparse finds it (COLUMNS, else the terminal's,
    else 80) without `shutil`, which argparse imports for it and which loads zlib, bz2 and lzma:
    ~5 ms of every start, `--version` included."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width if width is not None else _columns() - 2)


def _columns() -> int:
    """What `shutil.get_terminal_size().columns` gives: COLUMNS if a positive number, else the
    width of the terminal standard output is, else 80."""
    with contextlib.suppress(ValueError):
        if int(os.environ.get("COLUMNS", "")) > 0:
            return int(os.environ["COLUMNS"])
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """argparse's parser with `_Formatter`, its subcommands' too (they are made as this class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="weightport",
        description="Move trained Keras weights into another architecture (Dense -> Conv, FCN twins) "
                    "straight from the HDF5 file, with no model built.",
    )
    parser.add_argument("--version", action="version", version=f"weightport {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    inspect = commands.add_parser("inspect", help="list the weighted layers of a weights file, in model order")
    inspect.add_argument("file", metavar="FILE", help=".h5 / .hdf5 (Keras 1-3), .weights.h5, .keras or .safetensors")
    inspect.add_argument("--config", metavar="JSON", help="sidecar model config (model.to_json()) for a weights-only file")
    inspect.add_argument("--json", action="store_true", help="print one JSON document (contract in the README)")
    inspect.set_defaults(run=_cmd_inspect)

    plan = commands.add_parser("plan", help="show, without writing, how every target tensor is made")
    _add_target_options(plan)
    plan.add_argument("--json", action="store_true", help="print one JSON document (contract in the README)")
    plan.set_defaults(run=_cmd_plan)

    convert = commands.add_parser("convert", help="plan and write the converted weights")
    _add_target_options(convert, many=True)
    convert.add_argument("-o", "--out", metavar="OUT",
                         help="*.weights.h5 (Keras 3 layout), *.h5 / *.hdf5 (legacy layout) or *.keras (whole Keras 3 model)")
    convert.add_argument("--out-dir", metavar="DIR", help="convert every SRC into DIR, each under its own file name (a checkpoint sweep)")
    convert.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N",
                         help="with --out-dir: convert N files at a time (default 1; at most one per file and per core)")
    convert.add_argument("--quiet", action="store_true", help="print nothing but errors (for pipelines)")
    convert.add_argument("--json", action="store_true", help="with -o OUT: print one JSON document, the plan, its verification and the output (contract in the README)")
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")
    convert.add_argument("--full-model", action="store_true", help="with a .h5 OUT: write a whole legacy model (the twin's model_config and its weights)")
    convert.add_argument("--no-verify", action="store_true", help="skip the numpy check of what was written")
    convert.add_argument("--compression", metavar="gzip[=LEVEL]|lzf", type=_compression,
                         help="store the tensors chunked and compressed (smaller, slower to write); default: contiguous and uncompressed, as Keras writes them")
    convert.set_defaults(run=_cmd_convert)

    verify = commands.add_parser("verify", help="prove numerically that OUT is SRC converted (exit 0 ok, 1 not, 2 bad input)")
    _add_target_options(verify, target=False)
    verify.add_argument("out", metavar="OUT", help="the converted file to check")
    verify.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    verify.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance, to the largest source value (default 1e-5)")
    verify.add_argument("--keras", action="store_true", help="also build both whole models in Keras and compare them end to end")
    verify.add_argument("--json", action="store_true", help="print one JSON document (contract in the README)")
    verify.set_defaults(run=_cmd_verify)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except WeightportError as exc:
        print(f"weightport: error: {exc.line('cli')}", file=sys.stderr)
        if exc.detail:
            print("\n".join(printable(line) for line in exc.detail.split("\n")), file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (weightport.interrupt): temporaries are gone by now
        print(f"weightport: interrupted ({stop})" if str(stop) else "weightport: interrupted", file=sys.stderr)
        return interrupt.exit_status(stop)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal error: short message, traceback only on request
        if args.debug:
            import traceback

            traceback.print_exc()
        print(printable(f"weightport: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"), file=sys.stderr)
        return 1


def run() -> NoReturn:
    """The console script and `python -m weightport`: `main`, then straight out of the process.

    By then every file weightport wrote is closed, fsynced and renamed, and every input closed;
    after the atexit handlers and a checked flush of standard output, `os._exit` skips the
    interpreter's teardown of numpy and h5py, ~30-40 ms of a ~0.6 s VGG16 conversion. Under a
    profiler, a tracer or a debugger (sys.setprofile, sys.settrace or sys.monitoring), which
    report after the program returns, it exits normally. `main` itself returns. SIGTERM and
    SIGHUP stop it as Ctrl-C does, cleaning up on the way (weightport.interrupt)."""
    interrupt.install()
    try:
        status = main()
    except KeyboardInterrupt as stop:  # arrived before or after main's own handling
        status = interrupt.exit_status(stop)
    except SystemExit as done:  # argparse: --help, --version, usage errors
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else _say(done.code))
    if _observed():
        sys.exit(status)
    atexit._run_exitfuncs()
    status = _flush_stdio(status)
    os._exit(status)


def _observed() -> bool:
    """Whether a profiler, tracer or debugger watches this process."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: cProfile, coverage and debuggers may use it instead
    return monitoring is not None and any(monitoring.get_tool(tool) for tool in range(6))


def _flush_stdio(status: int) -> int:
    """Flush what is still buffered: a reader gone away (`| head`) is not an error, a full or
    failing output is (exit 2, as for any output weightport cannot write)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except OSError as exc:
            with contextlib.suppress(OSError):
                print(f"weightport: error: {_unwritable(exc).line()}", file=sys.__stderr__)
            status = status or 2
    return status


def _say(message: object) -> int:
    print(message, file=sys.stderr)
    return 1
