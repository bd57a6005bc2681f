"""Planning without Keras: pairing, refusals, --map/--skip, the JSON contract, provenance,
and the output rules (no overwrite without --force, inputs never change)."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import h5py
import numpy as np

import weightport
from conftest import FIXTURES, run_cli

SEQ = FIXTURES / "seq__k3.keras"


def test_plan_json_contract() -> None:
    result = run_cli("plan", str(SEQ), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) >= {"source", "target", "steps", "notes", "total_steps", "total_values"}
    keys = {"source_file", "source_layer", "source_path", "target_layer", "target_name", "target_keras3", "role",
            "source_shape", "target_shape", "rule", "params", "source_dtype", "target_dtype"}
    assert all(set(step) == keys for step in doc["steps"])
    assert [s["rule"] for s in doc["steps"]] == ["copy", "copy", "dense-to-conv", "copy", "dense-to-1x1", "copy"]
    assert doc["steps"][2]["target_shape"] == [7, 7, 4, 8] and doc["steps"][2]["params"] == {"window": [7, 7], "order": "hwc"}
    assert doc["steps"][4]["target_keras3"] == "layers/conv2d_2/vars/0"


def test_plan_writes_nothing(tmp_path: Path) -> None:
    result = run_cli("plan", str(SEQ), cwd=tmp_path)
    assert result.returncode == 0 and "dense-to-conv hwc" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_unequal_layer_counts_print_both_lists(tmp_path: Path) -> None:
    result = run_cli("plan", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(FIXTURES / "gap__k3.weights.h5"))
    assert result.returncode == 2
    first, *table = result.stderr.strip().splitlines()
    assert first.startswith("weightport: error: ") and "pair them with --map" in first
    assert any(line.startswith(">>") for line in table), result.stderr
    assert "source:" in table[0] and "target:" in table[0]


def legacy_file(path: Path, layers: list) -> Path:
    """A legacy weights-only file as tf_keras writes it: [(layer name, [arrays])]."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "2.21.0", "tensorflow"
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, arrays in layers:
            names = [f"{name}/{role}:0" for role, _ in zip(("kernel", "bias"), arrays)]
            f.create_group(name).attrs["weight_names"] = [n.encode() for n in names]
            for n, array in zip(names, arrays):
                f[name][n] = array
    return path


def _seq_like(units: int = 8) -> list:
    return [("c", [np.ones((3, 3, 3, 4), "f4"), np.ones(4, "f4")]), ("d", [np.ones((196, units), "f4"), np.ones(units, "f4")]),
            ("d1", [np.ones((units, 5), "f4"), np.ones(5, "f4")])]


def test_refused_pair_names_both_shapes(tmp_path: Path) -> None:
    target = legacy_file(tmp_path / "t.h5", _seq_like(units=9))
    result = run_cli("plan", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target))
    assert result.returncode == 2
    assert "layer pair dense -> d: no exact rule takes kernel 196x8 to 196x9" in result.stderr


def test_existing_output_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    result = run_cli("convert", str(SEQ), "-o", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    assert run_cli("convert", str(SEQ), "-o", str(out), "--force").returncode == 0
    assert h5py.is_hdf5(out)


def test_output_equal_to_source_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "seq.h5"
    copy.write_bytes((FIXTURES / "seq__tfk.h5").read_bytes())
    result = run_cli("convert", str(copy), "-o", str(copy), "--force")
    assert result.returncode == 2 and "is an input" in result.stderr
    assert copy.read_bytes() == (FIXTURES / "seq__tfk.h5").read_bytes()


def test_output_equal_to_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target.weights.h5"
    target.write_bytes((FIXTURES / "seq__k3.weights.h5").read_bytes())
    result = run_cli("convert", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target), "-o", str(target), "--force")
    assert result.returncode == 2 and "is an input" in result.stderr
    assert target.read_bytes() == (FIXTURES / "seq__k3.weights.h5").read_bytes()


def test_unknown_output_suffix(tmp_path: Path) -> None:
    result = run_cli("convert", str(SEQ), "-o", str(tmp_path / "out.bin"))
    assert result.returncode == 2 and ".weights.h5" in result.stderr


def test_provenance_and_values(tmp_path: Path) -> None:
    out = tmp_path / "fcn.weights.h5"
    weightport.convert(SEQ, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["weightport_version"] == weightport.__version__
        assert f.attrs["weightport_source"] == SEQ.name
        assert f.attrs["weightport_source_blake3"] == blake3.blake3(SEQ.read_bytes()).hexdigest()
        assert "weightport_source_sha256" not in f.attrs
        rules = json.loads(f.attrs["weightport_rules"])
        assert [r["rule"] for r in rules][2] == "dense-to-conv"
        kernel = f["layers/conv2d_1/vars/0"][()]
        assert f["layers/conv2d_1/vars"].attrs["name"] == "dense"
    with weightport.read(SEQ) as view:
        np.testing.assert_array_equal(kernel, view.layers[1].weights[0].read().reshape(7, 7, 4, 8))


def test_legacy_output_layout(tmp_path: Path) -> None:
    out = tmp_path / "fcn.h5"
    weightport.convert(FIXTURES / "nested__tfk.h5", out)
    with h5py.File(out, "r") as f:
        assert list(f.attrs["layer_names"]) == ["backbone", "between", "head"]
        assert list(f["head"].attrs["weight_names"]) == ["dense/kernel:0", "dense/bias:0", "dense_1/kernel:0", "dense_1/bias:0"]
        assert f["head/dense/kernel:0"].shape == (4, 4, 4, 6)
        assert f.attrs["keras_version"] == "2.21.0"
        assert f["head/dense/kernel:0"].chunks is None and f["head/dense/kernel:0"].compression is None


def test_skip_keeps_the_target_values(tmp_path: Path) -> None:
    """--skip leaves a target layer out of the pairing; it keeps the values the target has."""
    layers = _seq_like()
    layers.insert(2, ("extra", [np.full((8, 8), 7.0, "f4"), np.full(8, 7.0, "f4")]))
    target = legacy_file(tmp_path / "t.h5", layers)
    out = tmp_path / "out.h5"
    assert run_cli("convert", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target), "-o", str(out)).returncode == 2
    weightport.convert(FIXTURES / "seq__tfk_weights.h5", out, target=target, skips=["extra"])
    with weightport.read(out) as got, weightport.read(FIXTURES / "seq__tfk_weights.h5") as src:
        assert [l.name for l in got.layers] == ["c", "d", "extra", "d1"]
        np.testing.assert_array_equal(got.layers[2].weights[0].read(), np.full((8, 8), 7.0))
        np.testing.assert_array_equal(got.layers[3].weights[0].read(), src.layers[2].weights[0].read())
    result = run_cli("plan", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target), "--skip", "nope")
    assert result.returncode == 2 and "--skip target layer 'nope'" in result.stderr


def test_map_pairs_layers_positions_would_not(tmp_path: Path) -> None:
    c, d, d1 = _seq_like()
    target = legacy_file(tmp_path / "t.h5", [c, d1, d])
    assert run_cli("plan", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target)).returncode == 2
    result = run_cli("plan", str(FIXTURES / "seq__tfk_weights.h5"), "--target", str(target), "--map", "dense=d", "--map", "dense_1=d1", "--json")
    assert result.returncode == 0, result.stderr
    pairs = {(s["source_layer"], s["target_layer"]) for s in json.loads(result.stdout)["steps"]}
    assert pairs == {("conv2d", "c"), ("dense", "d"), ("dense_1", "d1")}


def test_weights_h5_pairs_class_by_class(tmp_path: Path) -> None:
    """A .weights.h5 records no order across classes: the k-th Conv2D pairs with the k-th, and
    the source's Dense layers take the target's remaining convolutions."""
    built = weightport.plan(FIXTURES / "func_names__k3.weights.h5", target=FIXTURES / "func_names__k3.weights.h5")
    assert any("class by class" in note for note in built.notes)
    assert {(s.source_layer, s.target_layer) for s in built.steps} == {(n, n) for n in ("my_conv", "my_bn", "fc6", "fc6_bn", "predictions")}


def test_weights_only_needs_a_window(tmp_path: Path) -> None:
    result = run_cli("convert", str(FIXTURES / "seq__tfk_weights.h5"), "-o", str(tmp_path / "o.h5"))
    assert result.returncode == 2 and "--flatten" in result.stderr
    result = run_cli("convert", str(FIXTURES / "seq__tfk_weights.h5"), "-o", str(tmp_path / "o.h5"), "--flatten", "6,6,4")
    assert result.returncode == 2 and "196 inputs" in result.stderr
    assert not (tmp_path / "o.h5").exists()
