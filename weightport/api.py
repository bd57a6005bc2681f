"""The Python API for pipelines: plan and convert from paths, or straight into a live model.

Each call opens the files it needs, closes them when done, and raises `WeightportError` for
bad input, exactly as the CLI reports it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import arguments, digests
from .errors import WeightportError, speaks_api
from .head import HeadRole, analyze_head, target_feeds
from .statedict import FRAMEWORK
from .config import parse_model_config
from .keras_check import code_in
from .keras_load import LoadFailed, keras_of, load_in_keras
from .options import PLAN_OPTIONS
from .planner import Plan, PlanOptions, make_plan, refuse_lossy_casts
from .readers import read
from .recorded import recorded_feeds
from .target import target_from_view
from .twin import derive_twin
from .twinconfig import as_keras3, open_input_size, twin_config
from .verification import Verification, VerificationFailed, check_source_digest, verify_plan
from .view import ModelView
from .writers import output_layout, write

__all__ = ["plan", "convert", "verify", "convert_into_model"]

PathLike = Union[str, Path]


@contextlib.contextmanager
def planned(source: PathLike, target: Optional[PathLike] = None, config: Optional[PathLike] = None,
            flatten: Optional[Sequence[int]] = None, options: Optional[PlanOptions] = None,
            opened: Optional[ModelView] = None, feeds: Optional[Dict[str, HeadRole]] = None) -> Iterator[Tuple[Plan, Dict[str, ModelView]]]:
    """The plan and the open views its steps read from (closed on exit, but for `opened`: the
    source's view, already open, which convert's check reuses; and `feeds`: what fed the target's
    layers when a PyTorch source's plan was made, which its check plans with again)."""
    options = options or PlanOptions()
    with contextlib.ExitStack() as stack:
        src = opened if opened is not None else stack.enter_context(read(source, config=config))
        views = {src.path: src}
        if target is not None:
            tgt = stack.enter_context(read(target))
            views[tgt.path] = tgt
            if src.framework == FRAMEWORK:  # a state dict records no graph: the target's says what feeds each Dense
                head = feeds if feeds is not None else _feeds(tgt, flatten)
            else:
                head = analyze_head(src, flatten, options.source_order, required=False) if (src.config is not None or flatten) else {}
            built = make_plan(src, target_from_view(tgt), head, options, target_view=tgt)
            built.feeds = head if src.framework == FRAMEWORK else None
        elif src.framework == FRAMEWORK:
            raise WeightportError(src.path, "a PyTorch state dict records no model to derive a Keras twin from",
                                  "give --target: the Keras model to fill (its .keras, or an .h5 saved by Keras)")
        else:
            built = _twin_plan(src, flatten, options)
        yield built, views


def _feeds(target: ModelView, flatten: Optional[Sequence[int]]) -> Dict[str, HeadRole]:
    """What feeds each Dense of the target a PyTorch source fills: from its config or `--flatten`,
    else from the plan weightport recorded in it (an output it wrote: `verify model.pth out.weights.h5`)."""
    if flatten or target.config is not None:
        return target_feeds(target, flatten)
    return recorded_feeds(target) or target_feeds(target)


def _twin_plan(src: ModelView, flatten: Optional[Sequence[int]], options: PlanOptions) -> Plan:
    """The plan into the derived twin; the layers `--skip` or `--drop` names are left out of it."""
    for given, flag, what in ((options.maps, "--map", "pairs source layers with"), (options.align, "--align", "aligns the source's layers with"),
                              (options.units, "--units", "fits a layer's units to")):
        if given:
            raise WeightportError(src.path, f"{flag} {what} a --target's layers", f"give --target, or leave out {flag}")
    head = analyze_head(src, flatten, options.source_order)
    pooled = _score_map_poolings(src, head) if options.score_map else []
    left_out = [*options.skips, *options.drops]
    built = make_plan(src, derive_twin(src, head, left_out), head, PlanOptions(source_order=options.source_order, flip_kernels=options.flip_kernels,
                                                                              drops=left_out))
    built.notes += [f"{name}: taken out (--score-map): the head runs at every location, giving (rows, cols, classes)" for name in pooled]
    return built


def _score_map_poolings(src: ModelView, head: Dict[str, HeadRole]) -> List[str]:
    """The global poolings `--score-map` takes out (refused for a head that has none)."""
    pooled = sorted({role.pooling for role in head.values() if role.pooling})
    if not pooled:
        raise WeightportError(src.path, "--score-map takes out a global pooling, and this head has none",
                              "leave out --score-map: a Flatten head's twin already gives a score map")
    return pooled


def _derived_only(options: PlanOptions, target: Optional[PathLike]) -> None:
    if options.score_map and target is not None:
        raise WeightportError(target, "--score-map rewrites the derived twin, and --target gives the model instead",
                              "leave out --target, or build the target without its pooling")


def _plan_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, which takes `options` (a PlanOptions), as it is called: with each of
    `options.PLAN_OPTIONS` as a keyword of its own in `options`'s place (its signature, and
    `help()`, show them), made into one PlanOptions, which checks them. A keyword it does not
    take is the TypeError Python gives for any."""
    signature = inspect.signature(function)
    parameters = []
    for name, parameter in signature.parameters.items():
        parameters += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=o.type)
                       for o in PLAN_OPTIONS] if name == "options" else [parameter]
    shown = signature.replace(parameters=parameters)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        given = shown.bind(*args, **kwargs).arguments
        options = PlanOptions(**{o.name: given.pop(o.name, o.default) for o in PLAN_OPTIONS})
        return function(**given, options=options)

    call.__signature__ = shown  # type: ignore[attr-defined]
    return call


def _files(source: Any, target: Any, config: Any, flatten: Any) -> Tuple[str, Optional[str], Optional[str], Optional[Tuple[int, ...]]]:
    """The files and window every call takes, checked (`arguments`): bad ones are WeightportError."""
    return (arguments.path("source", source), arguments.path("target", target, optional=True),
            arguments.path("config", config, optional=True), arguments.window(flatten))


@speaks_api
@_plan_options
def plan(source: PathLike, target: Optional[PathLike] = None, *, config: Optional[PathLike] = None,
         flatten: Optional[Sequence[int]] = None, options: PlanOptions) -> Plan:
    """Plan a conversion without writing anything.

    Args:
        source: the trained weights (any file `weightport.read` takes).
        target: a file describing the target architecture (e.g. the untrained FCN saved with
            `save_weights`); None derives the fully-convolutional twin from the source's config.
        config: sidecar JSON config for a weights-only source.
        flatten: the window (H, W, C) that fed the first Dense when the source has no config.
        source_order: "hwc" or "chw", the order the source's Flatten saw its input (default: from the config).
        flip_kernels: the source's conv kernels were trained by Theano (flip them spatially).
        maps: {source layer: target layer} pairs to force; skips: target layers to leave out (they
            keep the target file's values); drops: source layers to leave out.
        units: {source layer: SPEC}, the output units kept, SPEC "START:STOP" or "0,5,9" (or a list of ints).
        align: pair unequal layer lists by the one order-preserving alignment in which every pair is exact.
        score_map: (derived twin) take a global-pooling head's pooling out: the twin gives (rows, cols, classes).

    Returns:
        A `Plan`; `plan.to_dict()` is the `plan --json` document.

    Example:
        >>> p = weightport.plan("vgg16.keras")  # doctest: +SKIP
        >>> [(s.target_layer, s.rule) for s in p.steps][-6:]  # doctest: +SKIP
    """
    source, target, config, flatten = _files(source, target, config, flatten)
    _derived_only(options, target)
    with planned(source, target, config, flatten, options) as (built, _):
        return built


@speaks_api
@_plan_options
def convert(source: PathLike, out: PathLike, target: Optional[PathLike] = None, *, force: bool = False,
            full_model: bool = False, config: Optional[PathLike] = None, flatten: Optional[Sequence[int]] = None,
            options: PlanOptions, progress: Optional[Callable[[int, int], None]] = None,
            verify: bool = True, compression: Optional[str] = None) -> Plan:
    """Plan, write and (by default) verify the conversion to `out`.

    `out`'s name picks the format: `.weights.h5` (Keras 3 layout), `.h5`/`.hdf5` (legacy
    layout; with `full_model` a whole legacy model, config included), `.keras` (a whole Keras 3
    model: the twin's config and weights, for `keras.models.load_model`; with `score_map` the
    twin without its global pooling). Other arguments as
    for `plan`; `force` replaces an existing `out`; `progress(bytes_written, total)` is called as
    the tensor bytes go in. With `verify` the file is checked with numpy before it takes `out`'s
    place: an `.h5` as soon as its tensors are in place (the provenance attributes are added
    after), a `.keras` archive whole; `plan.verification` holds the result, and a failure raises
    `VerificationFailed`. A whole model (`.keras`, `full_model`) is then loaded by the Keras it
    is for (Keras 3, or tf_keras for a Keras 2 config) in a child process, when that Keras is
    installed: `plan.loaded_by` names it (None: not installed, or `plan.load_skipped` says what
    code in the config loading it would run), and a model it cannot load raises `LoadFailed`
    (or `WeightportError` when it cannot load the source either).
    `compression` ("gzip", "gzip=LEVEL" with LEVEL 0-9, or "lzf") stores the tensors chunked and
    compressed (smaller, slower to write); by default they are contiguous, as Keras writes them.
    The output is written atomically: `out` is either left as it was or replaced by a complete,
    checked file.

    Example:
        >>> weightport.convert("vgg16.keras", "fcn.keras")  # doctest: +SKIP
    """
    source, target, config, flatten = _files(source, target, config, flatten)
    out = arguments.path("out", out)
    force, full_model, verify = (arguments.flag(name, value) for name, value in (("force", force), ("full_model", full_model), ("verify", verify)))
    progress, compression = arguments.progress(progress), arguments.compression(compression)
    _derived_only(options, target)
    layout = output_layout(Path(out))
    if full_model and layout != "legacy":
        raise WeightportError(out, "--full-model is for a legacy .h5 output", "name the output *.h5, or *.keras for a whole Keras 3 model")
    with planned(source, target, config, flatten, options) as (built, views):
        refuse_lossy_casts(built)
        whole = full_model or layout == "keras-archive"
        model_config = _whole_model_config(views, str(source), target, flatten, options, layout) if whole else None
        consumer = keras_of(views[str(target) if target is not None else str(source)]) if whole else None

        checked = options if target is not None else replace(options, skips=[], drops=[*options.skips, *options.drops])

        def check(written: Path) -> None:
            built.verification = _verify(source, written, config, flatten, checked, opened=views[str(source)], feeds=built.feeds)
            if not built.verification.ok:
                raise VerificationFailed(built.verification, built)
            if consumer is not None:
                built.load_skipped = code_in(parse_model_config(model_config, str(out)))
                if built.load_skipped is None:
                    try:
                        built.loaded_by = load_in_keras("keras" if layout == "keras-archive" else consumer, written, Path(out), str(source), config)
                    except LoadFailed as failed:
                        failed.plan = built  # what was planned and verified, for the caller's report
                        raise

        write(built, Path(out), views, force=force, model_config=model_config, keras_version=views[str(source)].keras_version,
              progress=progress, check=check if verify else None, compression=compression,
              inputs=[str(config)] if config is not None else [])
        return built


def _whole_model_config(views: Dict[str, ModelView], source: str, target: Optional[PathLike], flatten: Optional[Sequence[int]],
                        options: PlanOptions, layout: str) -> Dict:
    """The output model's config: the target's own, or the source's rewritten as its twin,
    its input opened to any spatial size where the layers allow it."""
    model = views[str(target)] if target is not None else views[source]
    if model.config is None:
        raise WeightportError(model.path, "no model config to write a whole model from", "give a .keras or full-model .h5 file")
    if layout == "keras-archive" and keras_of(model) != "keras":
        raise WeightportError(model.path, f"a .keras output holds a Keras 3 config, and this one was written by Keras {model.keras_version or model.config.keras_version or '2'}",
                              "write a whole legacy model instead: -o OUT.h5 --full-model")
    if target is not None:
        config = model.config.raw
    else:
        head = analyze_head(model, flatten, options.source_order)
        config = twin_config(model, head, per_location=options.score_map, left_out=[*options.skips, *options.drops])
        open_input_size(config, model)
    return as_keras3(config) if layout == "keras-archive" else config


@speaks_api
@_plan_options
def verify(source: PathLike, out: PathLike, *, config: Optional[PathLike] = None, flatten: Optional[Sequence[int]] = None,
           options: PlanOptions, atol: float = 1e-6, rtol: float = 1e-5) -> Verification:
    """Prove numerically, with numpy only, that `out` is `source` converted.

    Each layer pair of `source` and `out` (paired as `plan` pairs them, with `out` as the
    target) is run on random inputs on both sides; `Verification.ok` is True when every
    pair agrees within `atol` or `rtol` and the source digest `out` records (if any) is
    `source`'s, computed on a second thread meanwhile. Options as for `plan`, describing the source.

    Example:
        >>> weightport.verify("vgg16.keras", "fcn.weights.h5").ok  # doctest: +SKIP
        True
    """
    source, _, config, flatten = _files(source, None, config, flatten)
    out, atol, rtol = arguments.path("out", out), arguments.tolerance("atol", atol), arguments.tolerance("rtol", rtol)
    digests.start(source)
    try:
        return _verify(source, out, config, flatten, options, atol, rtol, digest=True)
    finally:
        digests.discard(str(source))


def _verify(source: PathLike, out: PathLike, config: Optional[PathLike], flatten: Optional[Sequence[int]], options: PlanOptions,
            atol: float = 1e-6, rtol: float = 1e-5, opened: Optional[ModelView] = None, digest: bool = False,
            feeds: Optional[Dict[str, HeadRole]] = None) -> Verification:
    """The numeric check; with `digest`, also OUT's recorded source digest (convert's own check
    leaves it out: it is the one computing it)."""
    with planned(source, out, config, flatten, options, opened, feeds) as (built, views):
        result = verify_plan(built, views, views[str(out)], atol=atol, rtol=rtol)
        if digest:
            result.digest = check_source_digest(views[str(source)], views[str(out)])
        return result


@speaks_api
def convert_into_model(source: PathLike, model: Any, **options: Any) -> Plan:
    """Transplant `source` into a live Keras model (Keras 3 or tf_keras) and load it.

    The model's own weights file, saved to a temporary folder, is the target, so the model
    gets exactly its own layout; then `model.load_weights` reads the converted file.

    Example:
        >>> fcn = build_my_fcn()  # doctest: +SKIP
        >>> weightport.convert_into_model("vgg16.keras", fcn)  # doctest: +SKIP
    """
    source = arguments.path("source", source)
    if not all(callable(getattr(model, name, None)) for name in ("save_weights", "load_weights")):
        raise WeightportError(None, f"model is {type(model).__name__}, not a Keras model", "give a Keras 3 or tf_keras model (with save_weights and load_weights)")
    known = [name for name, p in inspect.signature(convert).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise WeightportError(None, f"convert_into_model takes no {', '.join(unknown)}", f"its options are those of convert: {', '.join(known)}")
    legacy = type(model).__module__.startswith("tf_keras")
    suffix = ".h5" if legacy else ".weights.h5"
    with tempfile.TemporaryDirectory(prefix="weightport-") as folder:
        template, out = Path(folder) / f"target{suffix}", Path(folder) / f"converted{suffix}"
        model.save_weights(str(template))
        built = convert(source, out, template, **options)
        model.load_weights(str(out))
        return built
