"""--drop (source layers left out), --units (output units kept, the named rule `units`) and the
alignment rows of the plan, planned and converted without Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import FIXTURES, import_or_skip, run_cli
from test_plan import legacy_file

SEQ = FIXTURES / "seq__tfk_weights.h5"  # conv2d 3x3x3x4, dense 196x8, dense_1 8x5


def _target(tmp_path: Path, head_units: int = 3) -> Path:
    """The source's body with a new head: c, d, then `new_head` (8 -> head_units) filled with 7s."""
    return legacy_file(tmp_path / "t.h5", [("c", [np.zeros((3, 3, 3, 4), "f4"), np.zeros(4, "f4")]),
                                           ("d", [np.zeros((196, 8), "f4"), np.zeros(8, "f4")]),
                                           ("new_head", [np.full((8, head_units), 7.0, "f4"), np.full(head_units, 7.0, "f4")])])


def _read(path: Path) -> dict:
    with weightport.read(path) as view:
        return {layer.name: [t.read() for t in layer.weights] for layer in view.layers}


def test_drop_leaves_the_old_head_out(tmp_path: Path) -> None:
    target, out = _target(tmp_path), tmp_path / "out.h5"
    refused = run_cli("plan", str(SEQ), "--target", str(target), "--skip", "new_head")
    assert refused.returncode == 2 and "--drop SRC" in refused.stderr and "--align" in refused.stderr
    result = run_cli("convert", str(SEQ), "--target", str(target), "--drop", "dense_1", "--skip", "new_head", "-o", str(out))
    assert result.returncode == 0, result.stderr
    got, src = _read(out), _read(SEQ)
    assert list(got) == ["c", "d", "new_head"]
    np.testing.assert_array_equal(got["d"][0], src["dense"][0])
    np.testing.assert_array_equal(got["new_head"][0], np.full((8, 3), 7.0))
    assert "(dropped: not written)" in result.stdout and "(kept: the target's values)" in result.stdout


def test_plan_json_records_drops_and_kept_layers(tmp_path: Path) -> None:
    built = weightport.plan(SEQ, _target(tmp_path), drops=["dense_1"], skips=["new_head"])
    rows = built.to_dict()["alignment"]
    assert rows == [{"source_layer": "conv2d", "target_layer": "c", "status": "paired", "by": "position"},
                    {"source_layer": "dense", "target_layer": "d", "status": "paired", "by": "position"},
                    {"source_layer": "dense_1", "target_layer": None, "status": "dropped", "by": "drop"},
                    {"source_layer": None, "target_layer": "new_head", "status": "kept", "by": "skip"}]
    assert "dense_1" not in {s.source_layer for s in built.steps}


def test_drop_names_a_source_layer(tmp_path: Path) -> None:
    result = run_cli("plan", str(SEQ), "--target", str(_target(tmp_path)), "--drop", "nope", "--skip", "new_head")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "--drop source layer 'nope' is not a weighted layer" in result.stderr


def test_drop_and_skip_leave_a_layer_out_of_the_derived_twin(tmp_path: Path) -> None:
    """Without --target, the layer is not in the twin; convert's own check agrees."""
    for flag in ("--drop", "--skip"):
        out = tmp_path / f"twin{flag}.weights.h5"
        result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), flag, "dense_1", "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert list(_read(out)) == ["conv2d", "dense"]


def test_units_keep_a_slice_of_the_head(tmp_path: Path) -> None:
    target, out = _target(tmp_path, head_units=3), tmp_path / "out.h5"
    built = weightport.convert(SEQ, out, target=target, units={"dense_1": "1:4"})
    kernel = next(s for s in built.steps if s.source_layer == "dense_1" and s.role == "kernel")
    assert (kernel.rule, kernel.params) == ("units", {"units": "1:4", "rule": "copy", "params": {}})
    assert built.verification.ok
    got, src = _read(out), _read(SEQ)
    np.testing.assert_array_equal(got["new_head"][0], src["dense_1"][0][:, 1:4])
    np.testing.assert_array_equal(got["new_head"][1], src["dense_1"][1][1:4])
    assert weightport.verify(SEQ, out, units={"dense_1": [1, 2, 3]}).ok
    assert not weightport.verify(SEQ, out, units={"dense_1": "2:5"}).ok  # the wrong units are caught
    table = run_cli("plan", str(SEQ), "--target", str(target), "--units", "dense_1=1:4").stdout
    assert "units 1:4 > copy" in table


def test_units_list_into_a_derived_shape(tmp_path: Path) -> None:
    """A list of units, and a Dense into a 1x1 Conv: the pair's own rule after the units."""
    target = legacy_file(tmp_path / "t.h5", [("c", [np.zeros((3, 3, 3, 4), "f4"), np.zeros(4, "f4")]),
                                             ("d", [np.zeros((196, 8), "f4"), np.zeros(8, "f4")]),
                                             ("score", [np.zeros((1, 1, 8, 2), "f4"), np.zeros(2, "f4")])])
    out = tmp_path / "out.h5"
    built = weightport.convert(SEQ, out, target=target, units={"dense_1": "4,0"})
    assert {s.params.get("rule") for s in built.steps if s.rule == "units"} == {"dense-to-1x1", "copy"}
    np.testing.assert_array_equal(_read(out)["score"][0][0, 0], _read(SEQ)["dense_1"][0][:, [4, 0]])


@pytest.mark.parametrize("spec, problem", [
    ("dense_1=3:9", "outside the layer's 5 units"),
    ("dense_1=7", "unit 7 is outside the layer's 5 units"),
    ("dense_1=3:3", "keeps no unit"),
    ("dense_1=", "is not a SPEC"),
    ("dense_1=1,1", "names a unit twice"),
    ("dense_1=a:b", "is not a SPEC"),
    ("nope=1:2", "--units source layer 'nope' is not a weighted layer"),
])
def test_bad_units_are_one_line_errors(spec: str, problem: str, tmp_path: Path) -> None:
    result = run_cli("plan", str(SEQ), "--target", str(_target(tmp_path)), "--units", spec)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("weightport: error: ") and problem in result.stderr


def test_units_on_a_layer_without_units(tmp_path: Path) -> None:
    gap = FIXTURES / "gap__k3.keras"
    result = run_cli("plan", str(gap), "--target", str(gap), "--units", "batch_normalization=0:2")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "batch_normalization (BatchNormalization) has no output units to choose" in result.stderr
    with pytest.raises(weightport.WeightportError, match="is not a SPEC"):
        weightport.plan(gap, gap, units={"dense": [-1]})


@pytest.mark.parametrize("fixture", ["seq__k3.keras", "seq__tfk.h5", "gap__k3.keras", "conv1d__k3.keras"])
@pytest.mark.parametrize("fcn_suffix", [".weights.h5", ".h5"])
def test_classifier_fcn_classifier_round_trip_without_map(fixture: str, fcn_suffix: str, tmp_path: Path) -> None:
    """Conv -> Dense pairs by position as Dense -> Conv does (and class by class from a Keras 3
    .weights.h5, where a target Dense takes the source's next convolution): back exactly."""
    source = FIXTURES / fixture
    fcn, back = tmp_path / f"fcn{fcn_suffix}", tmp_path / "back.weights.h5"
    weightport.convert(source, fcn)
    built = weightport.convert(fcn, back, target=source)
    assert "conv-to-dense" in {s.rule for s in built.steps} and built.verification.ok
    original, returned = _read(source), _read(back)
    assert list(original) == list(returned)
    for name, tensors in original.items():
        for want, got in zip(tensors, returned[name], strict=True):
            assert want.dtype == got.dtype and want.tobytes() == got.tobytes(), name


def test_weights_only_hint_names_the_global_pooling_case(tmp_path: Path) -> None:
    result = run_cli("plan", str(FIXTURES / "gap__k3.weights.h5"))
    assert result.returncode == 2 and "global-pooling head --flatten 1,1,C" in result.stderr
    assert run_cli("plan", str(FIXTURES / "gap__k3.weights.h5"), "--flatten", "1,1,4").returncode == 0


@pytest.mark.parametrize("options, problem", [
    ({"drops": "dense_1"}, "drops takes a list of layer names, not 'dense_1'"),
    ({"skips": [3]}, "skips takes a list of layer names"),
    ({"units": [("dense_1", "1:4")]}, "units takes a dict keyed by source layer names"),
    ({"align": "yes"}, "align is 'yes', not True or False"),
])
def test_api_options_are_checked_where_the_cli_checks_them(options: dict, problem: str, tmp_path: Path) -> None:
    """A lone string would be taken letter by letter: refused, as WeightportError, before any file is read."""
    with pytest.raises(weightport.WeightportError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        weightport.plan(tmp_path / "never-read.h5", **options)


def test_target_only_options_without_a_target_are_one_line_errors() -> None:
    seq = str(FIXTURES / "seq__k3.keras")
    for args, problem in ((["--units", "dense_1=0:2"], "--units fits a layer's units to a --target's layers"),
                          (["--map", "dense=dense"], "--map pairs source layers with a --target's layers"),
                          (["--score-map"], "--score-map takes out a global pooling, and this head has none")):
        result = run_cli("plan", seq, *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and problem in result.stderr, result.stderr
    gap = str(FIXTURES / "gap__k3.keras")
    result = run_cli("plan", gap, "--target", gap, "--score-map")
    assert result.returncode == 2 and "--score-map rewrites the derived twin" in result.stderr


def _features(K, model_file: Path, layer: str, x: np.ndarray) -> np.ndarray:
    """The source model's output at `layer` (what a whole model with its tail cut must give)."""
    model = K.models.load_model(str(model_file), compile=False)
    return K.Model(model.inputs, model.get_layer(layer).output)(x).numpy()


@pytest.mark.parametrize("fixture, keras_module, out_name, extra", [
    ("gap__k3.keras", "keras", "cut.keras", []),
    ("gap__tfk.h5", "tf_keras", "cut.h5", ["--full-model"]),
])
@pytest.mark.parametrize("flag", ["--drop", "--skip"])
def test_a_whole_model_without_its_head_ends_where_the_head_was(fixture: str, keras_module: str, out_name: str, extra: list,
                                                                flag: str, tmp_path: Path) -> None:
    """--drop / --skip of the head into a whole model: the model is written without the head, its
    global pooling is its output again (as in the source, a vector), Keras loads it, and it
    computes the source's features."""
    K = import_or_skip(keras_module)
    out = tmp_path / out_name
    result = run_cli("convert", str(FIXTURES / fixture), flag, "dense", "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    x = np.random.default_rng(0).standard_normal((2, 10, 10, 3)).astype("float32")
    cut = K.models.load_model(str(out), compile=False)
    assert "dense" not in [layer.name for layer in cut.layers]
    got = cut(x).numpy()
    want = _features(K, FIXTURES / fixture, "global_average_pooling2d", x)
    assert got.shape == want.shape == (2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fixture, drop, problem", [
    ("gap__k3.keras", "batch_normalization", "cannot leave 'batch_normalization' out of a whole model: 'dense' (Dense) is computed from it"),
    ("nested__k3.keras", "bb_conv1", "cannot leave 'bb_conv1' out of a whole model: it sits inside the nested model 'backbone'"),
])
def test_a_whole_model_loses_only_its_tail(fixture: str, drop: str, problem: str, tmp_path: Path) -> None:
    """A layer inside the model (or a nested model) cannot be cut out of a whole model: one line,
    exit 2, nothing written; the weights-only output is the way, and the message says so."""
    out = tmp_path / "cut.keras"
    result = run_cli("convert", str(FIXTURES / fixture), "--drop", drop, "-o", str(out))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert problem in result.stderr and "write the weights only" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
