"""Hostile small files (issue 11, "Blow-ups" and "Wrong exit status"): each is refused by a budget
tied to what the file really holds, in a real process, with the bounds asserted: exit 2, one line
`weightport: error: FILE: ...; ...`, no traceback, under 2 s of CPU and 200 MiB of memory, and
nothing left beside OUT.

Time is the child's CPU time (user + system, from `wait4`), not the wall clock: the machines
running the tests are shared, and a refusal that costs 0.5 s of CPU may wait seconds for a core.
A wall-clock limit of `HANG_S` still catches a hang. Memory is the child's own peak (VmHWM, see
`conftest.measured_cli_command`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

import h5py
import numpy as np
import pytest

from conftest import FIXTURES, measured_cli_command, peak_mib
from weightport import budgets
from weightport.archive import MAX_RATIO

CPU_S = 2.0
RSS_MIB = 200
HANG_S = 120


@dataclass
class Outcome:
    status: int
    stderr: str
    cpu_s: float
    rss_mib: float


def run_bounded(*argv: str, env: Optional[dict] = None) -> Outcome:
    """`python -m weightport ARGV` in a fresh process, with its CPU time (from `wait4`: that child
    alone) and peak memory; killed after `HANG_S` seconds."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        command = measured_cli_command(*argv, peak_file=peak)
        child = subprocess.Popen(command["args"], env=dict(command["env"], **(env or {})), stdout=subprocess.DEVNULL, stderr=err)
        timer = threading.Timer(HANG_S, lambda: os.kill(child.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        return Outcome(child.returncode, text, usage.ru_utime + usage.ru_stime, peak_mib(peak))


def assert_refused(outcome: Outcome, file: Path, *words: str, out: Optional[Path] = None) -> str:
    """Exit 2, one line naming `file` and saying what to do, within the bounds; nothing beside OUT."""
    lines = outcome.stderr.rstrip("\n").split("\n")
    assert outcome.status == 2, outcome.stderr
    assert len(lines) == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert lines[0].startswith(f"weightport: error: {file}") and "; " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert outcome.cpu_s < CPU_S, f"{outcome.cpu_s:.2f} s of CPU"
    assert outcome.rss_mib < RSS_MIB, f"{outcome.rss_mib:.0f} MiB"
    if out is not None:
        assert not out.exists() and list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    return lines[0]


def _copy(tmp_path: Path, name: str, as_name: Optional[str] = None) -> Path:
    path = tmp_path / (as_name or name)
    shutil.copyfile(FIXTURES / name, path)
    return path


def _edit(path: Path, edit: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(f: h5py.File, name: str, **create) -> None:
    del f[name]
    f.create_dataset(name, **create)


def _out(tmp_path: Path, name: str = "fcn.h5") -> Path:
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    return folder / name


def _convert(source: Path, out: Path, *extra: str) -> Outcome:
    flatten = [] if source.suffix == ".keras" or "--config" in extra else ["--flatten", "7,7,4"]
    return run_bounded("convert", str(source), "-o", str(out), *flatten, *extra)


def _rezip(source: str, dst: Path, config_text: Union[str, Iterable[str]]) -> Path:
    """`source` with its config.json replaced (deflated), written piece by piece when given
    pieces: a big config never sits whole in the test process, whose size a child forked from it
    would start with."""
    with zipfile.ZipFile(FIXTURES / source) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in members:
            if name != "config.json":
                archive.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                for piece in [config_text] if isinstance(config_text, str) else config_text:
                    member.write(piece.encode())
    return dst


def _filled(config: dict, pieces: Iterable[str]) -> Iterator[str]:
    """The config's JSON text with `pieces` making up a list in its first layer (`sparse`)."""
    head, tail = json.dumps(config).split('"sparse": false', 1)
    yield head + '"sparse": ['
    yield from pieces
    yield "]" + tail


def _config(source: str = "seq__k3.keras") -> dict:
    with zipfile.ZipFile(FIXTURES / source) as archive:
        return json.loads(archive.read("config.json"))


# ---------------------------------------------------------------------------------------------
# Configs: bytes and JSON values, before parsing; bounded reads.

def test_a_keras_file_whose_config_inflates_to_62_mb_of_empty_dicts_is_refused_before_parsing(tmp_path: Path) -> None:
    """The issue's 425 KB `.keras`: config.json is 62 MB of `[{},{},...]` (with enough random
    text in it to stay under the zip-bomb ratio), refused by its size before it is inflated."""
    rng = np.random.default_rng(11)
    pieces = (("," if k else "") + '"%s"' % rng.bytes(12).hex() + ",{}" * 700 for k in range(29_500))
    path = _rezip("seq__k3.keras", tmp_path / "big_config.keras", _filled(_config(), pieces))
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
    assert path.stat().st_size < 1_000_000 and info.file_size > 60_000_000
    assert info.file_size < MAX_RATIO * info.compress_size  # not a zip bomb by the archive's own ratio
    out = _out(tmp_path, "fcn.keras")
    assert_refused(_convert(path, out), path, "config.json declares", out=out)


def test_a_config_of_millions_of_values_under_the_byte_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    config = tmp_path / "many.json"
    with open(config, "w") as fh:
        fh.writelines(_filled(_config(), ("{}" if k == 0 else ",{}" * 1000 for k in range(5_000))))
    assert config.stat().st_size < budgets.MAX_CONFIG_BYTES
    source, out = _copy(tmp_path, "seq__k3.weights.h5"), _out(tmp_path)
    assert_refused(_convert(source, out, "--config", str(config)), config, "JSON values", out=out)


@pytest.mark.parametrize("how", ["dev-zero", "huge-file"])
def test_a_config_read_is_bounded(how: str, tmp_path: Path) -> None:
    """`--config /dev/zero` (refused unread as a device, or read no further than the limit) or a
    40 MB file: no more than the limit is read."""
    if how == "dev-zero":
        config = Path("/dev/zero")
    else:
        config = tmp_path / "huge.json"
        with open(config, "wb") as fh:
            fh.write(b" " * (40 << 20))
    source, out = _copy(tmp_path, "seq__k3.weights.h5"), _out(tmp_path)
    assert_refused(_convert(source, out, "--config", str(config)), config, *(["larger than"] if how == "huge-file" else []), out=out)


@pytest.mark.parametrize("key, value", [("batch_shape", None), ("batch_shape", [])])
def test_a_config_whose_input_has_no_shape_is_refused_for_a_keras_output(key: str, value, tmp_path: Path) -> None:
    """`batch_shape: null` (or `[]`) written into a `.keras` output would not load: exit 2, not 1."""
    config = _config()
    config["config"]["layers"][0]["config"][key] = value
    path = _rezip("seq__k3.keras", tmp_path / "no_shape.keras", json.dumps(config))
    out = _out(tmp_path, "fcn.keras")
    assert_refused(_convert(path, out), path, out=out)


def test_a_build_config_input_shape_of_nothing_is_refused(tmp_path: Path) -> None:
    """`input_shape: []` in the build config: exit 2, not an IndexError."""
    config = _config("gap__k3.keras")
    config["build_config"] = {"input_shape": []}
    path = _rezip("gap__k3.keras", tmp_path / "no_input.keras", json.dumps(config))
    out = _out(tmp_path, "fcn.keras")
    assert_refused(_convert(path, out), path, "input_shape []", out=out)


# ---------------------------------------------------------------------------------------------
# Names and indices.

def test_vars_0_and_20000000_are_refused_without_counting_to_20_million(tmp_path: Path) -> None:
    path = _edit(_copy(tmp_path, "seq__k3.weights.h5"), lambda f: f.create_dataset("layers/dense/vars/20000000", data=np.ones(3, "f4")))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "holds tensors 0, 1, 20000000 but not 2", out=out)


@pytest.mark.parametrize("key", ["00", "01", "\u00b2", "\u0663", "+1", " 1"])
def test_vars_keys_that_are_not_canonical_indices_are_refused(key: str, tmp_path: Path) -> None:
    """`0`, `00` and `1` would give a Conv2D three variables; `²` crashed int()."""
    path = _edit(_copy(tmp_path, "seq__k3.weights.h5"), lambda f: f.create_dataset(f"layers/conv2d/vars/{key}", data=np.ones(4, "f4")))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "not named 0, 1, ...", out=out)


def _chain(f: h5py.File, depth: int) -> None:
    """A layer whose only tensor sits `depth` groups down (`layers/deep/cell/cell/.../vars/0`)."""
    group = f["layers"].create_group("deep")
    for _ in range(depth):
        group = group.create_group("cell")
    group.create_dataset("vars/0", data=np.ones(3, "f4"))


def test_groups_nested_3000_deep_are_refused_at_the_nesting_limit(tmp_path: Path) -> None:
    """A 3 MB chain of 3,000 groups took 6 s to walk before the walk counted its depth."""
    path = _edit(_copy(tmp_path, "seq__k3.weights.h5"), lambda f: _chain(f, 3000))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, f"groups nest more than {budgets.MAX_NESTING} deep", out=out)


def _set_names(f: h5py.File, names: List[bytes]) -> None:
    for key in [k for k in f.attrs if k.startswith("layer_names")]:
        del f.attrs[key]
    for k, start in enumerate(range(0, len(names), 5000)):
        f.attrs[f"layer_names{k}"] = np.array(names[start:start + 5000], dtype="S")


@pytest.mark.parametrize("how", ["distinct", "repeated"])
def test_400k_layer_names_are_refused_quickly(how: str, tmp_path: Path) -> None:
    names = [b"conv2d", b"max_pooling2d", b"flatten", b"dense", b"dense_1"]
    extra = [b"x%d" % i for i in range(400_000)] if how == "distinct" else [b"flatten"] * 400_000
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), lambda f: _set_names(f, names + extra))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "layer_names", "400,005 names", out=out)


def test_a_layer_name_listed_twice_is_refused(tmp_path: Path) -> None:
    names = [b"conv2d", b"max_pooling2d", b"flatten", b"flatten", b"dense", b"dense_1"]
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), lambda f: _set_names(f, names))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "lists 'flatten' more than once", out=out)


@pytest.mark.parametrize("storage", ["fixed", "variable"])
def test_invalid_utf8_in_layer_names_is_refused(storage: str, tmp_path: Path) -> None:
    """Fixed-length bytes fail to decode; h5py hands variable-length ones over as lone surrogates,
    which used to fail only when printed (exit 1)."""
    names = [b"conv\xff\xfe2d", b"max_pooling2d", b"flatten", b"dense", b"dense_1"]
    dtype = "S" if storage == "fixed" else h5py.string_dtype("utf-8")

    def edit(f: h5py.File) -> None:
        del f.attrs["layer_names"]
        f.attrs.create("layer_names", np.array(names, dtype=dtype))
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), edit)
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "layer_names", out=out)


def test_an_unknown_skip_layer_is_an_error_like_an_unknown_map_layer(tmp_path: Path) -> None:
    source, out = _copy(tmp_path, "seq__k3.keras"), _out(tmp_path, "fcn.weights.h5")
    assert_refused(run_bounded("convert", str(source), "-o", str(out), "--skip", "dense_9"), source,
                   "--skip layer 'dense_9' is not a weighted layer", "choose one of: conv2d, dense, dense_1", out=out)
    assert_refused(run_bounded("plan", str(source), "--skip", "dense_9"), source, "--skip layer 'dense_9'")


# ---------------------------------------------------------------------------------------------
# Declared sizes against stored bytes.

def test_an_empty_kernel_is_refused(tmp_path: Path) -> None:
    """An (8, 0) kernel: no Keras variable is empty (it used to crash the verification)."""
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), lambda f: _replace(f, "dense_1/dense_1/kernel:0", data=np.ones((8, 0), "f4")))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "has shape 8x0", out=out)


def _sparse(path: Path, size: int) -> Path:
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return path


def test_a_small_file_padded_with_holes_to_20_gb_is_refused_unhashed(tmp_path: Path) -> None:
    """28 KB of data and 20 GB of holes: refused from its allocated size, before anything (the
    provenance hash included) reads the holes."""
    path = _sparse(_copy(tmp_path, "seq__k3.weights.h5"), 20 << 30)
    assert path.stat().st_blocks * 512 < 1 << 20
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "20.0 GiB long", "sparse", out=out)


def test_a_37_gb_declared_tensor_is_refused(tmp_path: Path) -> None:
    """37 GB declared in gzip chunks, one of them written, in a file made 38 GB long with holes."""
    def edit(f: h5py.File) -> None:
        _replace(f, "dense/dense/kernel:0", shape=(196, 48_000_000), dtype="f4", chunks=(196, 8000), compression="gzip")
        f["dense/dense/kernel:0"][:, :8] = 1
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), edit)
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "of its 6,000 chunks stored", out=out)
    _sparse(path, 38_000_000_000)
    assert_refused(_convert(path, out), path, "sparse", out=out)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_chunked_tensor_never_written_is_refused(sparse: bool, tmp_path: Path) -> None:
    """HDF5 would hand back the fill value: 1.2 GB of output from 61 KB."""
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"),
                 lambda f: _replace(f, "dense_1/dense_1/kernel:0", shape=(8, 37_500_000), dtype="f4", chunks=(8, 65536)))
    if sparse:
        _sparse(path, 1_300_000_000)
    out = _out(tmp_path)
    line = assert_refused(_convert(path, out), path, out=out)
    assert ("sparse" if sparse else "0 of its 573 chunks stored") in line


def test_one_huge_compressed_chunk_is_refused(tmp_path: Path) -> None:
    """A 191 KB source whose kernel is one gzip chunk of 152 MiB: `--compression lzf` inflated it
    once per 1 MiB piece (28 s)."""
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), lambda f: _replace(
        f, "dense_1/dense_1/kernel:0", data=np.zeros((8, 5_000_000), "f4"), chunks=(8, 5_000_000), compression="gzip", compression_opts=9))
    assert path.stat().st_size < 250_000
    out = _out(tmp_path)
    assert_refused(_convert(path, out, "--compression", "lzf"), path, "compressed chunks of 152.6 MiB", out=out)


def test_a_tensor_compressed_a_thousandfold_is_refused(tmp_path: Path) -> None:
    """Small chunks, all written, but 100 MB of zeros in ~100 KB: the output would be a thousand
    times the source."""
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), lambda f: _replace(
        f, "dense_1/dense_1/kernel:0", data=np.zeros((8, 3_125_000), "f4"), chunks=(8, 32768), compression="gzip", compression_opts=9))
    out = _out(tmp_path)
    assert_refused(_convert(path, out), path, "compressed more than 100x", out=out)


def test_a_compressed_source_within_the_budgets_still_converts(tmp_path: Path) -> None:
    """The budgets leave real compressed files alone: every tensor chunked and gzipped (zero
    biases included, which compress far more than 100x) still converts."""
    def compress(f: h5py.File) -> None:
        names: List[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            values = f[name][()]
            _replace(f, name, data=values, chunks=True, compression="gzip", shuffle=True)
    path = _edit(_copy(tmp_path, "seq__tfk_weights.h5"), compress)
    outcome = _convert(path, _out(tmp_path))
    assert outcome.status == 0, outcome.stderr


# ---------------------------------------------------------------------------------------------
# Diagnosis.

def test_a_source_held_open_by_a_writer_is_named_as_such(tmp_path: Path) -> None:
    """HDF5's file lock held by another process is not damage: say who holds it."""
    path, out = _copy(tmp_path, "seq__k3.weights.h5"), _out(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    with h5py.File(path, "a"):
        outcome = run_bounded("convert", str(path), "-o", str(out), "--flatten", "7,7,4", env=dict(env, HDF5_USE_FILE_LOCKING="TRUE"))
    line = assert_refused(outcome, path, "open for writing in another program", out=out)
    assert "damaged" not in line and "truncated" not in line
