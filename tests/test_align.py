"""--align: the order-preserving alignment of two layer lists, checked against brute force on
small tables and as a property over random classifiers and random edits (a new
BatchNormalization, a new Conv, the old head dropped for a new one): it recovers the edit or
refuses naming the layers in doubt; it never pairs a layer with the wrong one."""

from __future__ import annotations

import doctest
import itertools
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightport
from weightport import align as align_module
from weightport import units as units_module
from weightport.align import Ambiguous, align
from conftest import FIXTURES, run_cli


def test_docstring_examples() -> None:
    assert doctest.testmod(align_module).failed == 0 and doctest.testmod(units_module).failed == 0


# --- the algorithm against brute force ------------------------------------------------------

def _all_alignments(ok: List[List[bool]]) -> List[Tuple[Tuple[int, int], ...]]:
    """Every order-preserving set of allowed pairs (small tables only)."""
    n, m = len(ok), len(ok[0]) if ok else 0
    allowed = [(i, j) for i in range(n) for j in range(m) if ok[i][j]]
    found = [()]
    for size in range(1, min(n, m) + 1):
        for pairs in itertools.combinations(allowed, size):
            if all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pairs, pairs[1:])):
                found.append(pairs)
    return found


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5).flatmap(lambda n: st.integers(0, 5).flatmap(
    lambda m: st.lists(st.lists(st.booleans(), min_size=m, max_size=m), min_size=n, max_size=n).map(lambda ok: (n, m, ok)))))
def test_align_is_the_unique_largest_alignment_or_names_exactly_the_layers_in_doubt(table) -> None:
    n, m, ok = table
    everything = _all_alignments(ok) if n and m else [()]
    most = max(len(a) for a in everything)
    best = [a for a in everything if len(a) == most]
    try:
        got = align(n, m, lambda i, j: ok[i][j])
    except Ambiguous as doubt:
        assert len(best) > 1
        outcomes_src = [{dict(a).get(i) for a in best} for i in range(n)]
        outcomes_tgt = [{dict((j, i) for i, j in a).get(j) for a in best} for j in range(m)]
        assert doubt.sources == [i for i in range(n) if len(outcomes_src[i]) > 1]
        assert doubt.targets == [j for j in range(m) if len(outcomes_tgt[j]) > 1]
        return
    assert best == [tuple(got)]


# --- the planner's alignment over random classifiers and edits ------------------------------

Spec = Tuple[str, Tuple[int, ...]]  # ("conv", (k, cin, cout)) | ("bn", (c,)) | ("dense", (in, out))


def _tensors(kind: str, dims: Tuple[int, ...], rng: np.random.Generator) -> List[Tuple[str, np.ndarray]]:
    if kind == "conv":
        k, cin, cout = dims
        return [("kernel", rng.standard_normal((k, k, cin, cout)).astype("f4")), ("bias", rng.standard_normal(cout).astype("f4"))]
    if kind == "bn":
        return [(role, rng.standard_normal(dims[0]).astype("f4")) for role in ("gamma", "beta", "moving_mean", "moving_variance")]
    return [("kernel", rng.standard_normal(dims).astype("f4")), ("bias", rng.standard_normal(dims[1]).astype("f4"))]


def _save(path: Path, layers: List[Tuple[str, Spec]], seed: int) -> Path:
    """A legacy weights-only file as tf_keras writes it."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "2.21.0", "tensorflow"
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, (kind, dims) in layers:
            group = f.create_group(name)
            tensors = _tensors(kind, dims, rng)
            group.attrs["weight_names"] = [f"{name}/{role}:0".encode() for role, _ in tensors]
            for role, array in tensors:
                group[f"{name}/{role}:0"] = array
    return path


@st.composite
def edited_classifiers(draw):
    """(source layers, target layers, the true pairs) for a random classifier and random edits."""
    widths = st.sampled_from([4, 6, 8, 12])
    body: List[Spec] = []
    channels = 3
    for _ in range(draw(st.integers(1, 5))):
        out = draw(widths)
        body.append(("conv", (draw(st.sampled_from([1, 3])), channels, out)))
        channels = out
        if draw(st.booleans()):
            body.append(("bn", (channels,)))
    hidden, classes = draw(widths), draw(st.sampled_from([5, 10]))
    head: List[Spec] = [("dense", (channels * 4, hidden)), ("dense", (hidden, classes))]
    source = [(f"s{i}", spec) for i, spec in enumerate(body + head)]
    target: List[Tuple[str, Spec]] = []
    truth: Dict[str, str] = {}
    channels = 3
    for name, spec in source[:len(body)]:
        target.append((f"t{len(target)}", spec))
        truth[name] = target[-1][0]
        channels = spec[1][-1]
        for _ in range(draw(st.integers(0, 2))):  # new layers after this one, fed its channels
            new: Spec = ("bn", (channels,)) if draw(st.booleans()) else ("conv", (draw(st.sampled_from([1, 3])), channels, channels))
            target.append((f"new{len(target)}", new))
    for name, spec in source[len(body):]:
        if name == source[-1][0] and draw(st.booleans()):  # the old head dropped, a new one for another task
            target.append((f"new{len(target)}", ("dense", (hidden, classes + draw(st.integers(1, 20))))))
        else:
            target.append((f"t{len(target)}", spec))
            truth[name] = target[-1][0]
    return source, target, truth


def _signature(spec: Spec) -> Tuple[int, ...]:
    """Element counts of a layer's tensors: no rule pairs layers whose counts differ."""
    return tuple(int(np.prod(a.shape)) for _, a in _tensors(spec[0], spec[1], np.random.default_rng(0)))


def _identifiable(source, target, truth) -> bool:
    """No new layer looks like any source layer, and no dropped source layer like any target
    layer: then only the true alignment pairs every kept layer, and it must be found."""
    new = [spec for name, spec in target if name not in truth.values()]
    dropped = [spec for name, spec in source if name not in truth]
    return (not {_signature(s) for s in new} & {_signature(s) for _, s in source}
            and not {_signature(s) for s in dropped} & {_signature(s) for _, s in target})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_classifiers())
def test_align_recovers_the_edit_or_refuses(case) -> None:
    source, target, truth = case
    with tempfile.TemporaryDirectory() as folder:
        src, tgt = _save(Path(folder) / "s.h5", source, 1), _save(Path(folder) / "t.h5", target, 2)
        try:
            built = weightport.plan(src, tgt, align=True)
        except weightport.WeightportError as refused:
            assert "--align" in refused.problem and "in doubt" in refused.problem and "--map" in refused.hint
            assert not _identifiable(source, target, truth), refused.problem
            return
    paired = {row.source_layer: row.target_layer for row in built.alignment if row.status == "paired"}
    assert paired == truth
    kept = [row.target_layer for row in built.alignment if row.status == "kept"]
    assert kept == [name for name, _ in target if name not in truth.values()]


# --- on files: side by side, JSON, refusals --------------------------------------------------

def _legacy(path: Path, layers: List[Tuple[str, Spec]]) -> Path:
    return _save(path, layers, 3)


BODY: List[Tuple[str, Spec]] = [("conv1", ("conv", (3, 3, 8))), ("conv2", ("conv", (3, 8, 16))), ("fc1", ("dense", (64, 32))),
                                ("predictions", ("dense", (32, 10)))]


def test_align_pairs_a_new_bn_and_a_new_head(tmp_path: Path) -> None:
    source = _legacy(tmp_path / "s.h5", BODY)
    target = _legacy(tmp_path / "t.h5", [BODY[0], ("bn_new", ("bn", (8,))), BODY[1], BODY[2], ("score", ("dense", (32, 21)))])
    out = tmp_path / "out.h5"
    refused = run_cli("convert", str(source), "--target", str(target), "-o", str(out))
    assert refused.returncode == 2 and "--align" in refused.stderr and not out.exists()
    result = run_cli("convert", str(source), "--target", str(target), "--align", "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("predictions" in line and "(dropped: not written)" in line for line in lines)
    assert any("bn_new (kept: the target's values)" in line for line in lines)
    with weightport.read(out) as got, weightport.read(source) as src, weightport.read(target) as tgt:
        values = {l.name: [t.read() for t in l.weights] for l in got.layers}
        np.testing.assert_array_equal(values["conv2"][0], src.layers[1].weights[0].read())
        np.testing.assert_array_equal(values["bn_new"][0], tgt.layers[1].weights[0].read())
        np.testing.assert_array_equal(values["score"][0], tgt.layers[4].weights[0].read())
    doc = json.loads(run_cli("plan", str(source), "--target", str(target), "--align", "--json").stdout)
    assert [(r["source_layer"], r["target_layer"], r["status"]) for r in doc["alignment"]] == [
        ("conv1", "conv1", "paired"), (None, "bn_new", "kept"), ("conv2", "conv2", "paired"), ("fc1", "fc1", "paired"),
        ("predictions", None, "dropped"), (None, "score", "kept")]
    assert {r["by"] for r in doc["alignment"]} == {"align"}


def test_align_refuses_a_tie_naming_the_layers_in_doubt(tmp_path: Path) -> None:
    """A new BatchNormalization next to one of the same width: either could take the old one."""
    source = _legacy(tmp_path / "s.h5", [BODY[0], ("bn", ("bn", (8,))), *BODY[1:]])
    target = _legacy(tmp_path / "t.h5", [BODY[0], ("bn", ("bn", (8,))), ("bn_new", ("bn", (8,))), *BODY[1:]])
    result = run_cli("plan", str(source), "--target", str(target), "--align")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "in doubt: source bn, target bn, bn_new" in result.stderr and "--map" in result.stderr
    resolved = weightport.plan(source, target, align=True, maps={"bn": "bn"})
    assert ("bn", "bn", "paired", "map") in {(r.source_layer, r.target_layer, r.status, r.by) for r in resolved.alignment}


def test_align_needs_a_target() -> None:
    result = run_cli("plan", str(FIXTURES / "seq__k3.keras"), "--align")
    assert result.returncode == 2 and "--align aligns the source's layers with a --target's layers" in result.stderr
