"""`verify` passes right conversions and fails, naming the pair, on the classic mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

import weightport
from conftest import FIXTURES, SHARED_FILES, needs_shared_files, run_cli, sidecar_config

SEQ = FIXTURES / "seq__k3.keras"


def _converted(tmp_path: Path, source: Path = SEQ, name: str = "out.h5", **options) -> Path:
    out = tmp_path / name
    weightport.convert(source, out, **options)
    return out


@pytest.mark.parametrize("name", ["seq__k3.keras", "nested__tfk.h5", "gap__k3.keras", "conv1d__tfk.h5", "fp16__k3.h5", "func_names__k3.keras"])
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_right_conversions_pass(name: str, suffix: str, tmp_path: Path) -> None:
    out = _converted(tmp_path, FIXTURES / name, "out" + suffix)
    result = run_cli("verify", str(FIXTURES / name), str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and all(p["ok"] for p in doc["pairs"]) and len(doc["pairs"]) >= 2


def test_convert_verifies_what_it_wrote(tmp_path: Path) -> None:
    result = run_cli("convert", str(SEQ), "-o", str(tmp_path / "o.weights.h5"))
    assert result.returncode == 0 and "verified: 3 layer pairs" in result.stdout
    result = run_cli("convert", str(SEQ), "-o", str(tmp_path / "p.weights.h5"), "--no-verify")
    assert result.returncode == 0 and "verified" not in result.stdout


def _fails_on(tmp_path: Path, source: Path, out: Path, pair: str, *options: str) -> None:
    result = run_cli("verify", str(source), str(out), *options)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and pair in result.stdout.splitlines()[-1]


def test_flatten_order_swapped_fails(tmp_path: Path) -> None:
    out = _converted(tmp_path, source_order="chw")
    _fails_on(tmp_path, SEQ, out, "dense -> dense")


def test_kernel_transposed_fails(tmp_path: Path) -> None:
    out = _converted(tmp_path)
    with h5py.File(out, "r+") as f:
        kernel = f["conv2d/conv2d/kernel:0"]
        kernel[...] = kernel[()].transpose(1, 0, 2, 3)
    _fails_on(tmp_path, SEQ, out, "conv2d -> conv2d")


def test_pair_shifted_by_one_fails(tmp_path: Path) -> None:
    """Two same-shaped layers whose values were swapped: every shape fits, the numbers don't."""
    source = FIXTURES / "longnames__tfk_weights.h5"
    out = _converted(tmp_path, source, flatten=[1, 1])
    with h5py.File(out, "r+") as f:
        first, second = (f[name] for name in list(f.attrs["layer_names"])[1:3])
        a, b = (g[g.attrs["weight_names"][0]][()] for g in (first, second))
        first[first.attrs["weight_names"][0]][...] = b
        second[second.attrs["weight_names"][0]][...] = a
    _fails_on(tmp_path, source, out, "dense_01 -> dense_01", "--flatten", "1,1")


@needs_shared_files()
def test_missing_flip_fails(tmp_path: Path) -> None:
    source = SHARED_FILES / "dl4j-old__mnist_cnn_th_keras_1_weights.h5"
    config = str(sidecar_config(source))
    out = _converted(tmp_path, source, config=config)  # converted without --flip-kernels
    _fails_on(tmp_path, source, out, "convolution2d_1 -> convolution2d_1", "--config", config, "--flip-kernels")
    right = _converted(tmp_path, source, "flipped.h5", config=config, flip_kernels=True)
    assert run_cli("verify", str(source), str(right), "--config", config, "--flip-kernels").returncode == 0


def test_verify_bad_input_exits_2(tmp_path: Path) -> None:
    result = run_cli("verify", str(SEQ), str(tmp_path / "missing.h5"))
    assert result.returncode == 2 and result.stderr.startswith("weightport: error: ")


def test_big_tensors_are_checked_by_sampled_rows(monkeypatch, tmp_path: Path) -> None:
    """Past FULL_CHECK_VALUES a tensor is checked on random rows (window positions); the
    classic mistakes still show."""
    import importlib

    monkeypatch.setattr(importlib.import_module("weightport.verification"), "FULL_CHECK_VALUES", 16)
    right = _converted(tmp_path, name="right.h5")
    result = weightport.verify(SEQ, right)
    assert result.ok and any("rows sampled" in check for pair in result.pairs for check in pair.checks)
    swapped = _converted(tmp_path, name="swapped.h5", source_order="chw")
    failed = [p.source_layer for p in weightport.verify(SEQ, swapped).pairs if not p.ok]
    assert failed == ["dense"]


@pytest.mark.parametrize("edge", [0, -1])
def test_sampled_rows_always_include_the_first_and_the_last(monkeypatch, tmp_path: Path, edge: int) -> None:
    """A mover that drops the first or the last block of a tensor is caught even with a single
    random row: the edges are always compared."""
    import importlib

    import numpy as np

    verification = importlib.import_module("weightport.verification")
    monkeypatch.setattr(verification, "FULL_CHECK_VALUES", 16)
    monkeypatch.setattr(verification, "SAMPLED_ROWS", 1)
    out = _converted(tmp_path, name="edge.h5")
    with h5py.File(out, "r+") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(obj) if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None)
        kernel = max(kernels, key=lambda ds: ds.shape[:-1])  # the flatten-fed Dense, now the window-sized conv
        index = (edge,) * 3
        kernel[index] = np.asarray(kernel[index]) + 1.0
    failed = [p for p in weightport.verify(SEQ, out).pairs if not p.ok]
    assert len(failed) == 1 and any("rows sampled" in check for check in failed[0].checks)


def test_bytes_identical_is_the_quick_proof_and_any_change_goes_to_the_numbers(tmp_path: Path) -> None:
    """Tensors whose rule keeps every element in place are proved by comparing bytes; a tensor
    whose bytes differ is checked numerically instead: within the tolerance it passes as a
    numeric check, beyond it the pair fails."""
    import numpy as np

    out = _converted(tmp_path)
    assert {c for p in weightport.verify(SEQ, out).pairs for c in p.checks} == {"bytes identical"}
    with h5py.File(out, "r+") as f:
        bias = f["dense_1/dense_1/bias:0"]
        bias[0] = np.nextafter(bias[0], np.float32(np.inf))  # one ulp: other bytes, same number within rtol
    pair = {p.source_layer: p for p in weightport.verify(SEQ, out).pairs}["dense_1"]
    assert pair.ok and "values equal" in pair.checks and 0 < pair.max_abs < 1e-6
    with h5py.File(out, "r+") as f:
        f["dense_1/dense_1/bias:0"][0] += 1.0
    result = weightport.verify(SEQ, out)
    assert not result.ok and [p.source_layer for p in result.pairs if not p.ok] == ["dense_1"]


# --- precision: verify compares in the source's precision (issue 10, case 3) ---------------

def _retyped(path: Path, dtype: str, kernels_only: bool = True) -> Path:
    """`path` with its kernels (every tensor of two or more axes) rewritten in `dtype`, in place."""
    import numpy as np

    with h5py.File(path, "r+") as f:
        found = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and (obj.ndim >= 2 or not kernels_only) else None)
        for name in found:
            values = f[name][()]
            del f[name]
            with np.errstate(over="ignore"):
                f.create_dataset(name, data=values.astype(dtype))
    return path


def test_an_output_rewritten_as_integers_fails_verify(tmp_path: Path) -> None:
    out = _retyped(_converted(tmp_path, name="out.weights.h5"), "int16")
    result = run_cli("verify", str(SEQ), str(out), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert not doc["ok"] and {p["source_layer"] for p in doc["pairs"] if not p["ok"]} == {"conv2d", "dense", "dense_1"}


def test_an_integer_target_is_refused_by_convert(tmp_path: Path) -> None:
    target = _retyped(_converted(tmp_path, name="target.weights.h5"), "int8")
    out = tmp_path / "out.weights.h5"
    result = run_cli("convert", str(SEQ), "--target", str(target), "-o", str(out))
    assert result.returncode == 2 and not out.exists(), result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and "float32 -> int8" in result.stderr, result.stderr


def test_float16_output_passes_within_float16_rounding_and_fails_beyond(tmp_path: Path) -> None:
    import numpy as np

    out = _retyped(_converted(tmp_path, name="half.weights.h5"), "float16")
    result = weightport.verify(SEQ, out)
    assert result.ok, result.to_dict()
    assert any("float16 rounding" in check for pair in result.pairs for check in pair.checks)
    with h5py.File(out, "r+") as f:  # one kernel value off by 4 float16 steps: more than rounding
        kernel = f["layers/conv2d/vars/0"]
        value = kernel[0, 0, 0, 0]
        kernel[0, 0, 0, 0] = value + 4 * np.spacing(np.float16(value))
    assert [p.source_layer for p in weightport.verify(SEQ, out).pairs if not p.ok] == ["conv2d"]


def test_a_value_beyond_float16_range_fails(tmp_path: Path) -> None:
    """float16 rounds; it does not turn 1e6 into inf: such an output fails verify."""
    import shutil

    source = Path(shutil.copy(FIXTURES / "seq__tfk.h5", tmp_path / "big.h5"))
    with h5py.File(source, "r+") as f:
        bias = f["model_weights/dense_1/dense_1/bias:0"]
        bias[0] = 1e6
    out = _retyped(_converted(tmp_path, source, "half.h5"), "float16", kernels_only=False)
    failed = [p for p in weightport.verify(source, out).pairs if not p.ok]
    assert [p.source_layer for p in failed] == ["dense_1"] and "rounding" in failed[0].checks[0], failed


# --- one JSON document, whose "ok" is the exit status (issue 10, case 4) -------------------

def test_verify_keras_json_is_one_document_with_the_keras_result(tmp_path: Path) -> None:
    out = _converted(tmp_path, name="out.weights.h5")
    result = run_cli("verify", str(SEQ), str(out), "--keras", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)  # the whole standard output is one document
    assert doc["ok"] is True and doc["keras"]["ok"] is True and doc["keras"]["keras_version"].startswith("3")
    assert [c["how"] for c in doc["keras"]["comparisons"]] == ["end to end"] and doc["keras"]["comparisons"][0]["max_abs"] < 1e-4


def _main(capsys, *argv: str) -> tuple:
    from weightport.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("as_json", [True, False])
def test_verify_keras_refusal_prints_no_verdict_and_a_difference_is_exit_1(monkeypatch, capsys, tmp_path: Path, as_json: bool) -> None:
    """Keras refusing to build a model is exit 2 with its one line and no "ok" document; Keras
    models that differ make "ok" false and the exit status 1, whatever the numpy check said."""
    import weightport.keras_check as keras_check
    from weightport.errors import WeightportError

    out = _converted(tmp_path, name="out.weights.h5")
    flags = ["--json"] if as_json else []

    def refuse(*args, **kwargs):
        raise WeightportError(out, "Keras cannot build this model here (ValueError: ...)", "check with the numpy verification only")

    monkeypatch.setattr(keras_check, "check_end_to_end", refuse)
    status, stdout, stderr = _main(capsys, "verify", str(SEQ), str(out), "--keras", *flags)
    assert (status, stdout) == (2, "") and stderr.count("\n") == 1 and "Keras cannot build" in stderr
    differ = keras_check.EndToEnd("3.0", [keras_check.Comparison("source and twin models", "end to end", 0.5, 0.1, False)])
    monkeypatch.setattr(keras_check, "check_end_to_end", lambda *args, **kwargs: differ)
    status, stdout, _ = _main(capsys, "verify", str(SEQ), str(out), "--keras", *flags)
    assert status == 1
    if as_json:
        doc = json.loads(stdout)
        assert doc["ok"] is False and doc["keras"]["ok"] is False and all(p["ok"] for p in doc["pairs"])
    else:
        assert stdout.rstrip().splitlines()[-1].startswith("keras 3.0: source and twin models DIFFER end to end")


def test_convert_json_is_one_document_plan_verification_output(tmp_path: Path) -> None:
    out = tmp_path / "out.weights.h5"
    result = run_cli("convert", str(SEQ), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["output"] == {"path": str(out), "layout": "keras3", "written": True}
    assert doc["verification"]["ok"] is True and len(doc["verification"]["pairs"]) == 3
    assert doc["plan"]["total_steps"] == 6 and doc["plan"]["steps"][0]["source_layer"] == "conv2d"
    unchecked = run_cli("convert", str(SEQ), "-o", str(tmp_path / "o2.h5"), "--json", "--no-verify")
    assert unchecked.returncode == 0 and json.loads(unchecked.stdout)["verification"] is None


def test_convert_json_of_a_failed_verification(tmp_path: Path) -> None:
    """A float16 target and a source value beyond float16's range: not written, exit 1, "ok" false."""
    import shutil

    source = Path(shutil.copy(FIXTURES / "seq__tfk.h5", tmp_path / "big.h5"))
    with h5py.File(source, "r+") as f:
        f["model_weights/dense_1/dense_1/bias:0"][0] = 1e6
    target = _retyped(_converted(tmp_path, source, "target.h5"), "float16", kernels_only=False)
    out = tmp_path / "out.h5"
    result = run_cli("convert", str(source), "--target", str(target), "-o", str(out), "--json")
    assert result.returncode == 1 and not out.exists(), result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["output"]["written"] is False and doc["verification"]["ok"] is False
    assert [p["source_layer"] for p in doc["verification"]["pairs"] if not p["ok"]] == ["dense_1"]
