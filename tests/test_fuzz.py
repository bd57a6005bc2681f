"""Damaged input never crashes weightport: exit 0 or 2, one clear line, nothing left behind.

Every committed fixture (legacy `.h5`, `.weights.h5`, `.keras`) is damaged in many ways, with a
fixed seed so the suite is the same on every run: truncated, bytes flipped in the header, the
metadata and the tensor data, attributes removed or retyped, configs made invalid or of the wrong
shape, datasets removed, reshaped, retyped, declared huge, linked away or stored outside the
file, archive members missing, damaged, lying about their size, compressed into a bomb or named
`../`. Each damaged file is then used as the source (`inspect`, `inspect --json`, `plan`,
`convert`) and as the target (`convert GOOD -o OUT --target DAMAGED`) of the CLI, called in
process for speed (a subset also runs in real subprocesses, to prove no traceback reaches the
user). After each command:

- the exit status is 0 or 2, never 1 (an internal error) and never an exception;
- on 2, stderr is one line `weightport: error: FILE: ...` (a pairing table may follow when the
  line says `pair them with --map`), with no traceback;
- a refused `convert` leaves no output and no temporary file in the output's folder;
- the damaged input's bytes are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, measured_cli_command, peak_mib, run_cli
from own_cpu import OwnCPU
from weightport import cli

SEED = 20240611
WEIGHTS_MEMBER = "model.weights.h5"
# The window that fed the first Dense, per model, for the files that carry no config.
FLATTEN = {"seq": "7,7,4", "chfirst": "5,5,4", "conv1d": "9,4", "fp16": "6,6,3", "func_names": "5,5,4",
           "nested": "4,4,4", "gap": "1,1,4", "longnames": "1,1"}
FIXTURE_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".h5", ".keras"))
# Hundreds of conversions: each whole model would start a Keras; and one argument parser for all.
pytestmark = pytest.mark.usefixtures("no_keras_load", "one_parser")
_PARSER = cli.build_parser()
OUTPUTS = (("o.weights.h5",), ("o.h5",), ("o.keras",), ("o.h5", "--full-model"))


@pytest.fixture
def one_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cli.main` builds its argparse parser on every call, once per process for a user, but a
    quarter of an in-process case's CPU here (the real-process samples still build their own)."""
    monkeypatch.setattr(cli, "build_parser", lambda: _PARSER)


def _family(name: str) -> str:
    return name.split("__")[0]


def _has_config(name: str) -> bool:
    return not name.endswith(("_weights.h5", ".weights.h5"))


def _flatten_args(name: str) -> List[str]:
    return [] if _has_config(name) or _family(name) not in FLATTEN else ["--flatten", FLATTEN[_family(name)]]


def _partner(name: str) -> str:
    """An undamaged file of the same model that converts into `name`'s architecture."""
    family = [f for f in FIXTURE_FILES if _family(f) == _family(name) and f != "longnames__k3.h5"]
    return family[(FIXTURE_FILES.index(name) + 1) % len(family)]


def _short(name: str) -> str:
    """`seq__k3.weights.h5` -> `seq-k3W` (H legacy .h5, L legacy _weights.h5, W .weights.h5, K .keras)."""
    family, rest = name.split("__")
    for suffix, code in ((".keras", "K"), (".weights.h5", "W"), ("_weights.h5", "L"), (".h5", "H")):
        if rest.endswith(suffix):
            return f"{family.replace('_', '')}-{rest[:-len(suffix)]}{code}"
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# Byte-level damage (any file).

def _flip(data: bytearray, lo: int, hi: int, count: int, rng: np.random.Generator) -> None:
    for pos in rng.integers(lo, max(lo + 1, hi), size=count):
        data[int(pos)] ^= int(rng.integers(1, 256))


def d_trunc(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(rng.integers(1, len(data)))])


def d_hflip(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    data = bytearray(src.read_bytes())
    _flip(data, 0, min(2048, len(data)), int(rng.integers(1, 5)), rng)
    dst.write_bytes(bytes(data))


def d_bflip(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    data = bytearray(src.read_bytes())
    _flip(data, 2048, len(data), int(rng.integers(1, 5)), rng)
    dst.write_bytes(bytes(data))


def d_zero(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    data = bytearray(src.read_bytes())
    size = int(rng.integers(64, 513))
    start = int(rng.integers(0, len(data) - size))
    data[start:start + size] = bytes(size)
    dst.write_bytes(bytes(data))


def _data_ranges(path: Path) -> List[Tuple[int, int]]:
    """(offset, size) in the file of every dataset's raw bytes."""
    base, target = 0, str(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(WEIGHTS_MEMBER)
            target = io.BytesIO(archive.read(info))
        header = path.read_bytes()[info.header_offset:info.header_offset + 30]
        base = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    ranges: List[Tuple[int, int]] = []
    with h5py.File(target, "r") as f:
        def visit(_name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None and obj.id.get_storage_size():
                ranges.append((base + obj.id.get_offset(), obj.id.get_storage_size()))
        f.visititems(visit)
    return sorted(ranges)


def d_dflip(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """Flip bytes inside one tensor's values: the file stays valid, the numbers change."""
    data, ranges = bytearray(src.read_bytes()), _data_ranges(src)
    offset, size = _pick(ranges, rng)
    _flip(data, offset, offset + size, int(rng.integers(1, 9)), rng)
    dst.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# Structural damage with h5py (HDF5 files, and the weights member of a .keras archive).

def _members(path: Path) -> List[Tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(dst: Path, members: Sequence[Tuple[str, bytes]], compress: Optional[Dict[str, int]] = None) -> None:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            method = (compress or {}).get(name, zipfile.ZIP_STORED)
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, compress_type=method)


def _edit_h5(src: Path, dst: Path, edit: Callable[[h5py.File], None], libver: Optional[str] = None) -> None:
    """Copy `src` to `dst` and run `edit` on the HDF5 file (the weights member of an archive);
    `libver="latest"` lets it write attributes past 64 KB (dense attribute storage)."""
    if src.suffix != ".keras":
        shutil.copyfile(src, dst)
        with h5py.File(dst, "r+", libver=libver) as f:
            edit(f)
        return
    members = _members(src)
    work = dst.with_name(dst.name + ".member.h5")
    work.write_bytes(dict(members)[WEIGHTS_MEMBER])
    with h5py.File(work, "r+", libver=libver) as f:
        edit(f)
    _zip(dst, [(n, work.read_bytes() if n == WEIGHTS_MEMBER else d) for n, d in members])
    work.unlink()


def _all(f: h5py.File, kind: type) -> List[str]:
    found: List[str] = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, kind) else None)
    return sorted(found)


def _attrs(f: h5py.File) -> List[Tuple[str, str]]:
    found = [("/", key) for key in f.attrs]
    for name in _all(f, h5py.Group):
        found += [(name, key) for key in f[name].attrs]
    return sorted(found)


def _pick(items: Sequence, rng: np.random.Generator):
    return items[int(rng.integers(0, len(items)))]


def _alien(rng: np.random.Generator):
    """A value of the wrong type for any Keras attribute."""
    choices = [
        lambda: np.int64(7), lambda: 3.5, lambda: np.array([1, 2, 3]), lambda: np.array([0.5, 1.5]),
        lambda: np.array([], dtype="f8"), lambda: np.array([[b"a", b"b"], [b"c", b"d"]]), lambda: np.bytes_(b"\xff\xfe\x00bad"),
        lambda: np.array([b"\xff\xfe", b"ok"]), lambda: True, lambda: np.array([1 + 2j]),
        lambda: np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), lambda: "x" * 60000, lambda: "",
        lambda: np.array(["nope", "/", "..", ""], dtype=h5py.string_dtype()),
    ]
    return _pick(choices, rng)()


def s_attr_del(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    keyed = [(o, k) for o, k in _attrs(f) if k.rstrip("0123456789") in ("layer_names", "weight_names", "keras_version", "backend", "model_config", "name")]
    if not keyed:  # tf_keras .weights.h5 files carry no attributes: add a wrong one instead
        return s_attr_type(f, rng, aux)
    obj, key = _pick(keyed, rng)
    del f[obj].attrs[key]


def s_attr_type(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """An attribute retyped (or, in a file with none, a `name` of the wrong type added to a group)."""
    obj, key = _pick(_attrs(f), rng) if _attrs(f) else (_pick(_all(f, h5py.Group), rng), "name")
    f[obj].attrs[key] = _alien(rng)


def s_names(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A list of names that lies: a missing entry, a duplicate, an empty, `..`, `/`, reversed."""
    keyed = [(o, k) for o, k in _attrs(f) if k.rstrip("0123456789") in ("layer_names", "weight_names")]
    if not keyed:
        return s_attr_type(f, rng, aux)
    obj, key = _pick(keyed, rng)
    names = [bytes(n) if not isinstance(n, str) else n.encode() for n in np.asarray(f[obj].attrs[key]).reshape(-1)]
    how = int(rng.integers(0, 7))
    if how == 0:
        names.append(b"no_such_layer")
    elif how == 1 and names:
        names.append(names[0])
    elif how == 2:
        names.insert(0, b"")
    elif how == 3:
        names.append(b"..")
    elif how == 4:
        names = [b"/"] + names
    elif how == 5:
        names = names[::-1][:-1] if len(names) > 1 else [b"."]
    else:
        names = [n + b"/extra/deeper:0" for n in names]
    f[obj].attrs[key] = np.array(names, dtype="S") if names else np.array([], dtype="S1")


def _datasets(f: h5py.File) -> List[str]:
    return [name for name in _all(f, h5py.Dataset) if "optimizer" not in name]


def _replace(f: h5py.File, name: str, make: Callable[[h5py.Group, str], None]) -> None:
    parent, _, leaf = name.rpartition("/")
    group = f[parent] if parent else f
    del group[leaf]
    make(group, leaf)


def s_ds_del(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    del f[_pick(_datasets(f), rng)]


def s_ds_shape(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    shape = tuple(int(n) for n in rng.integers(0, 12, size=int(rng.integers(0, 6))))
    _replace(f, _pick(_datasets(f), rng), lambda g, n: g.create_dataset(n, data=np.ones(shape, "f4")))


def s_ds_type(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    name = _pick(_datasets(f), rng)
    shape = f[name].shape
    values = [
        np.array([b"kernel", b"bias"]), np.array(["a", "b"], dtype=h5py.string_dtype()), np.float32(1.5),
        np.ones(shape, "i4"), np.ones(shape, bool), np.ones(shape, "f8"), np.ones(shape, "f2"), np.ones(shape, ">f4"),
        np.ones(shape, "c8"), np.zeros(shape, dtype=[("a", "f4"), ("b", "i2")]), np.zeros(shape, "V4"),
        np.array(7, "i8"), np.array(b"scalar string"),
    ]
    value = _pick(values, rng)
    _replace(f, name, lambda g, n: g.create_dataset(n, data=value))


def s_ds_huge(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A dataset declaring far more values than the file holds (no data written)."""
    how = int(rng.integers(0, 4))
    if how == 0:  # contiguous, 4 TB declared in a 30 KB file
        make = lambda g, n: g.create_dataset(n, shape=(10**6, 10**6), dtype="f4")
    elif how == 1:  # chunked and compressed: legal, but absurd for its size
        make = lambda g, n: g.create_dataset(n, shape=(10**5, 10**5, 16), dtype="f4", chunks=(64, 64, 1), compression="gzip")
    elif how == 2:  # a few MB declared, contiguous: reading it runs past the end of the file
        make = lambda g, n: g.create_dataset(n, shape=(100_000, 8), dtype="f4")
    else:  # a count whose product overflows int64
        make = lambda g, n: g.create_dataset(n, shape=(2**40, 2**40), dtype="f8", chunks=(1, 16), compression="gzip")
    _replace(f, _pick(_datasets(f), rng), make)


def s_ds_group(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A dataset where a group should be, or a group where a dataset should be."""
    if rng.integers(0, 2):
        _replace(f, _pick(_datasets(f), rng), lambda g, n: g.create_group(n))
    else:
        groups = [n for n in _all(f, h5py.Group) if "/" not in n or n.endswith("/vars") or n.count("/") == 1]
        _replace(f, _pick(groups, rng), lambda g, n: g.create_dataset(n, data=np.ones(3, "f4")))


def _secret(aux: Path) -> Path:
    """A private file elsewhere on the machine, which no weights file may pull bytes from."""
    path = aux / "secret.txt"
    path.write_bytes(b"private key material\n" * 400)
    return path


def s_link(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A tensor that is a link: dangling, to another tensor, to another file, or a cycle."""
    name = _pick(_datasets(f), rng)
    other = _pick(_datasets(f), rng)
    elsewhere = aux / "other.h5"
    with h5py.File(elsewhere, "w") as g:
        g["x"] = np.ones((3, 3, 3, 4), "f4")
    how = int(rng.integers(0, 6))
    links = [h5py.SoftLink("/no/such/dataset"), h5py.SoftLink("/" + other), h5py.ExternalLink(str(elsewhere), "/x"),
             h5py.ExternalLink(str(aux / "missing.h5"), "/x"), h5py.ExternalLink(str(_secret(aux)), "/x")]
    if how < 5:
        _replace(f, name, lambda g, n: g.__setitem__(n, links[how]))
    else:  # a cycle: the tensor's group holds a link to the root
        parent = name.rpartition("/")[0]
        (f[parent] if parent else f)["loop"] = h5py.SoftLink("/")


def s_extern(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A tensor whose bytes live in another file on disk (HDF5 external storage)."""
    name = _pick(_datasets(f), rng)
    shape, secret = f[name].shape, _secret(aux)
    size = int(np.prod(shape, dtype=np.int64)) * 4
    _replace(f, name, lambda g, n: g.create_dataset(n, shape=shape, dtype="f4", external=[(str(secret), 0, max(size, 4))]))


def _rechunk(f: h5py.File, rng: np.random.Generator) -> Tuple[int, int]:
    """A tensor rewritten chunked and gzip-compressed (legal HDF5, which Keras never writes);
    returns (offset, size) of its first chunk's bytes in the file."""
    name = _pick([n for n in _datasets(f) if f[n].size > 0], rng)
    values = f[name][()]
    _replace(f, name, lambda g, n: g.create_dataset(n, data=values, chunks=values.shape, compression="gzip"))
    info = f[name].id.get_chunk_info(0)
    return info.byte_offset, info.size


def s_chunked(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    _rechunk(f, rng)


def d_chunkflip(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """A compressed chunk with bytes flipped: found damaged only when its values are read."""
    where: List[Tuple[int, int]] = []
    _edit_h5(src, dst, lambda f: where.append(_rechunk(f, rng)))
    data = bytearray(dst.read_bytes())
    offset, size = where[0]
    _flip(data, offset, offset + size, int(rng.integers(1, 5)), rng)
    dst.write_bytes(bytes(data))


def s_deep(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """Groups nested far deeper than any model (a reader must not recurse without bound)."""
    base = "layers" if "layers" in f else _pick([n for n in _all(f, h5py.Group) if "/" not in n] or ["deep"], rng)
    group = f.require_group(base)
    for _ in range(1200):
        group = group.create_group("g")
    group["vars/0"] = np.ones(2, "f4")


# ---------------------------------------------------------------------------------------------
# Config damage (legacy `model_config`, `.keras` `config.json`).

_IMPORTANT = {"class_name", "config", "layers", "inbound_nodes", "name", "batch_shape", "batch_input_shape", "filters",
              "units", "kernel_size", "strides", "padding", "data_format", "pool_size", "dims", "target_shape", "keepdims",
              "input_layers", "output_layers", "args", "keras_history", "build_config", "input_shape", "use_bias", "axis"}


def _nodes(obj, path: Tuple = ()) -> List[Tuple]:
    out = [path]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out += _nodes(value, path + (key,))
    return out


def _deep(depth: int) -> str:
    """JSON text nested `depth` lists deep (built as text: json.dumps would recurse)."""
    return "[" * depth + "1" + "]" * depth


ALIENS = [None, 0, -1, 1, 2**63, 10**30, 1.5, -0.0, "x", "", [], {}, [None], [-3, 0], {"class_name": "Sequential"},
          True, float("nan"), float("inf"), "channels_sideways", [[["a", 0, 0, {}]]], ["self", 0, 0], "__keras_tensor__"]


SIZES = [0, -1, -7, 1.5, 10**40, float("inf"), float("nan"), None, True, "16", [], [0, 0], [None, None], [1, 2, 3, 4, 5], {"a": 1}]
SIZE_KEYS = {"filters", "units", "kernel_size", "strides", "pool_size", "padding", "dilation_rate", "batch_shape",
             "batch_input_shape", "input_shape", "dims", "target_shape", "size", "cropping", "axis", "n", "data_format",
             "keepdims", "depth_multiplier", "output_padding", "groups", "use_bias", "scale", "center"}


def _mutate_layer_setting(obj, rng: np.random.Generator) -> None:
    """One shape-relevant setting of one layer (or one element of it) set to a wrong value."""
    entries = [p for p in _nodes(obj) if len(p) >= 2 and p[-1] == "config" and isinstance(p[-2], int) and isinstance(_lookup(obj, p), dict)]
    settings = [p + (k,) for p in entries for k in _lookup(obj, p) if k in SIZE_KEYS] if entries else []
    if not settings:
        return
    path = _pick(settings, rng)
    value = _lookup(obj, path)
    if isinstance(value, list) and value and rng.random() < 0.5:
        path = path + (int(rng.integers(0, len(value))),)
    parent = _lookup(obj, path[:-1])
    parent[path[-1]] = json.loads(json.dumps(_pick(SIZES, rng)))


def _lookup(obj, path: Tuple):
    for key in path:
        obj = obj[key]
    return obj


def _mutate_config(obj, rng: np.random.Generator) -> str:
    """Replace 1-3 nodes of a parsed config (mostly structural keys or a layer's size settings)
    with values of the wrong kind; return the JSON text (a node may become a list nested
    hundreds deep)."""
    deep = None
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            _mutate_layer_setting(obj, rng)
            continue
        nodes = [p for p in _nodes(obj) if p]
        important = [p for p in nodes if p[-1] in _IMPORTANT]
        path = _pick(important if important and rng.random() < 0.7 else nodes, rng)
        if deep is None and rng.random() < 0.05:
            deep, alien = int(rng.integers(200, 990)), "__deep__"
        else:
            alien = _pick(ALIENS, rng)
        _lookup(obj, path[:-1])[path[-1]] = json.loads(json.dumps(alien))
    text = json.dumps(obj)
    return text.replace('"__deep__"', _deep(deep)) if deep else text


def _bad_config_text(text: str, rng: np.random.Generator) -> str:
    how = int(rng.integers(0, 8))
    if how == 0:
        return text[: int(rng.integers(1, len(text)))]  # invalid JSON
    wrong = ["[]", "42", '"Sequential"', "null", '{"class_name": "Sequential"}', '{"class_name": "Functional", "config": {"layers": "x"}}',
             '{"class_name": "Sequential", "config": {"layers": [1, 2, 3]}}', _deep(5000)]
    if how == 1:
        return _pick(wrong, rng)
    return _mutate_config(json.loads(text), rng)


def s_config(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    if "model_config" not in f.attrs:
        return s_attr_type(f, rng, aux)
    old = f.attrs["model_config"]
    text = old.decode() if isinstance(old, bytes) else str(old)
    new = _bad_config_text(text, rng)
    try:
        f.attrs["model_config"] = new
    except (OSError, RuntimeError, ValueError):  # past the attribute size limit: store a short one
        f.attrs["model_config"] = new[:30000]


STRUCTURAL = {"adel": s_attr_del, "atype": s_attr_type, "names": s_names, "ddel": s_ds_del, "dshape": s_ds_shape,
              "dtype": s_ds_type, "dhuge": s_ds_huge, "dgroup": s_ds_group, "link": s_link, "extern": s_extern,
              "deep": s_deep, "config": s_config, "chunked": s_chunked}


def structural(kind: str) -> Callable[[Path, Path, np.random.Generator, Path], None]:
    def damage(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
        _edit_h5(src, dst, lambda f: STRUCTURAL[kind](f, rng, aux))
    return damage


# ---------------------------------------------------------------------------------------------
# Archive damage (.keras).

def _central(data: bytes) -> List[int]:
    """Offsets of the central directory entries."""
    end = data.rfind(b"PK\x05\x06")
    count, _, start = struct.unpack("<HII", data[end + 10:end + 20])
    offsets, pos = [], start
    for _ in range(count):
        offsets.append(pos)
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28:pos + 34])
        pos += 46 + name_len + extra_len + comment_len
    return offsets


def _entry(data: bytes, member: str) -> Tuple[int, int]:
    """(central directory offset, local header offset) of `member`."""
    for pos in _central(data):
        name_len = struct.unpack("<H", data[pos + 28:pos + 30])[0]
        if data[pos + 46:pos + 46 + name_len].decode() == member:
            return pos, struct.unpack("<I", data[pos + 42:pos + 46])[0]
    raise KeyError(member)


def z_missing(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    members = _members(src)
    drop = _pick([n for n, _ in members], rng)
    _zip(dst, [(n, d) for n, d in members if n != drop])


def z_member(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """One member damaged: config/metadata not JSON or of the wrong shape, weights truncated."""
    members = dict(_members(src))
    which = _pick(["config.json", "metadata.json", WEIGHTS_MEMBER], rng)
    if which == WEIGHTS_MEMBER:
        data = members[which]
        members[which] = data[: int(rng.integers(1, len(data)))]
    elif which == "metadata.json":
        members[which] = _pick([b"{", b"[]", b'{"keras_version": 3}', b"\xff\xfe\xfd", json.dumps({"keras_version": ["3"]}).encode()], rng)
    else:
        members[which] = _bad_config_text(members[which].decode(), rng).encode()
    _zip(dst, list(members.items()))


def z_config(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    members = dict(_members(src))
    members["config.json"] = _bad_config_text(members["config.json"].decode(), rng).encode()
    _zip(dst, list(members.items()))


def z_size(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """A member whose header declares a huge size (or a wrong offset, or a huge extra field)."""
    data = bytearray(src.read_bytes())
    central, local = _entry(bytes(data), _pick(["config.json", "metadata.json", WEIGHTS_MEMBER], rng))
    how = int(rng.integers(0, 3))
    if how == 0:
        huge = int(rng.integers(2**26, 2**32 - 1))
        struct.pack_into("<II", data, central + 20, huge, huge)
        struct.pack_into("<II", data, local + 18, huge, huge)
    elif how == 1:
        struct.pack_into("<I", data, central + 42, int(rng.integers(0, len(data))))
    else:
        struct.pack_into("<H", data, local + 28, 0xFFFF)
    dst.write_bytes(bytes(data))


def z_slip(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """Members named outside the archive's folder: `../`, absolute, instead of or beside the real ones."""
    members = _members(src)
    how = int(rng.integers(0, 3))
    if how == 0:
        members = [("../" + n if n == WEIGHTS_MEMBER else n, d) for n, d in members]
    elif how == 1:
        members = members + [("../../evil.txt", b"owned"), ("/tmp/evil.txt", b"owned")]
    else:
        members = [("../config.json", b"{}")] + members
    _zip(dst, members)


def z_bomb(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    _bomb(src, dst, _pick(["config.json", WEIGHTS_MEMBER], rng))


def _bomb(src: Path, dst: Path, which: str) -> None:
    """`src` with member `which` replaced by 100 MB of zeros, deflated to about 100 KB."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in _members(src):
            if name != which:
                archive.writestr(name, data)
        info = zipfile.ZipInfo(which, (1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as member:
            for _ in range(100):
                member.write(block)


def z_compressed(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """The weights member deflated (Keras never does it; it is still a valid archive)."""
    members = _members(src)
    _zip(dst, members, {WEIGHTS_MEMBER: zipfile.ZIP_DEFLATED, "config.json": zipfile.ZIP_DEFLATED})


def z_flags(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """A member marked encrypted, or stored with an unknown method, or with a wrong CRC."""
    members = _members(src)
    _zip(dst, members, {WEIGHTS_MEMBER: zipfile.ZIP_DEFLATED} if rng.integers(0, 2) else {})
    data = bytearray(dst.read_bytes())
    central, local = _entry(bytes(data), _pick(["config.json", "metadata.json", WEIGHTS_MEMBER], rng))
    how = int(rng.integers(0, 3))
    if how == 0:
        for at in (central + 8, local + 6):
            struct.pack_into("<H", data, at, struct.unpack("<H", data[at:at + 2])[0] | 1)
    elif how == 1:
        struct.pack_into("<H", data, central + 10, 99)
        struct.pack_into("<H", data, local + 8, 99)
    else:
        struct.pack_into("<I", data, central + 16, 0xDEADBEEF)
        struct.pack_into("<I", data, local + 14, 0xDEADBEEF)
    dst.write_bytes(bytes(data))


def z_dup(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """The same member name twice (the second is empty or junk)."""
    members = _members(src)
    which = _pick(["config.json", WEIGHTS_MEMBER], rng)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name, which is the point
        _zip(dst, members + [(which, _pick([b"", b"junk", b"{}"], rng))])


ARCHIVE = {"zmiss": z_missing, "zmember": z_member, "zconfig": z_config, "zsize": z_size, "zslip": z_slip,
           "zcomp": z_compressed, "zflags": z_flags, "zdup": z_dup}


# ---------------------------------------------------------------------------------------------
# Adversarial files (issue 11): not damage but a file made to cost: vars indices that are not
# 0..n-1, name lists that lie or repeat, declared shapes the stored bytes cannot be, links that
# loop or alias, attributes of the wrong size and encoding, files mostly holes; configs with cycles,
# thousands of layers, absurd sizes, odd names and structures. Each must be refused (or converted)
# within the bounds below, in process and, for a sample, in a real process.

def _vars_groups(f: h5py.File) -> List[str]:
    return [n for n in _all(f, h5py.Group) if n.endswith("vars") and any(isinstance(v, h5py.Dataset) for v in f[n].values())]


VARS_KEYS = ["00", "01", "000", "20000000", str(2**63), "9" * 40, "\u00b2", "\u0663", "\uff11", "-1", "+1", " 1", "1 ", "1.0", "0x1", "1e3", "\u0661\u0660"]


def a_vars(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A Keras 3 `vars` group whose keys are not exactly 0..n-1 (a legacy file: its names lie)."""
    groups = _vars_groups(f)
    if not groups:
        return a_names(f, rng, aux)
    group = f[_pick(groups, rng)]
    keys = sorted(group)
    how = int(rng.integers(0, 4))
    if how == 0:  # an extra key, canonical or not
        group.create_dataset(_pick(VARS_KEYS, rng), data=np.ones(int(rng.integers(1, 5)), "f4"))
    elif how == 1:  # a key renamed: a gap, or a spelling of the same number
        group.move(_pick(keys, rng), _pick(VARS_KEYS, rng))
    elif how == 2:  # many keys: a run far past any layer's variable count
        for k in range(len(keys), len(keys) + int(rng.integers(50, 400))):
            group.create_dataset(str(k), data=np.ones(1, "f4"))
    else:  # one key linked twice (an alias: two variables, one dataset)
        group[str(len(keys))] = group[_pick(keys, rng)]


def _name_list_attrs(f: h5py.File) -> List[Tuple[str, str]]:
    return [(o, k) for o, k in _attrs(f) if k.rstrip("0123456789") in ("layer_names", "weight_names")]


def _set_names(obj, key: str, names: List[bytes], vlen: bool = False) -> None:
    base = key.rstrip("0123456789")
    for old in [k for k in obj.attrs if k.rstrip("0123456789") == base]:
        del obj.attrs[old]
    dtype = h5py.string_dtype("utf-8") if vlen else "S"
    step = max(1, 30_000 // max([len(n) for n in names] + [1]))  # each part under HDF5's 64 KB for an old object header
    if len(names) <= step:
        obj.attrs.create(base, np.array(names, dtype=dtype) if names else np.array([], dtype="S1"))
        return
    for k, start in enumerate(range(0, len(names), step)):
        obj.attrs.create(f"{base}{k}", np.array(names[start:start + step], dtype=dtype))


ODD_NAMES = [b"conv\xff\xfe2d", b"\xed\xa0\x80", b"\x1b[31mred\x1b[0m", b"two\nlines", b"tab\there", b"\xe2\x80\xae" + b"evil",
             b"a" * 60_000, b"/", b"..", b".", b"", b" ", b"dense/../dense"]


def a_names(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A name list (`layer_names`, `weight_names`) that repeats, runs long, or holds odd bytes."""
    keyed = _name_list_attrs(f)
    if not keyed:  # a Keras 3 file: odd group names instead
        groups = [n for n in _all(f, h5py.Group) if n.count("/") == 1 and n.startswith("layers/")]
        if groups:
            f.move(_pick(groups, rng), "layers/" + _pick(ODD_NAMES[2:6], rng).decode())
        return
    obj, key = _pick(keyed, rng)
    names = [bytes(n) if not isinstance(n, str) else n.encode() for n in np.asarray(f[obj].attrs[key]).reshape(-1)]
    how = int(rng.integers(0, 6))
    if how == 0 and names:  # one name repeated thousands of times
        names = names + [_pick(names, rng)] * int(rng.integers(2, 40_000))
    elif how == 1:  # thousands of distinct names with nothing behind them
        names = names + [b"n%d" % i for i in range(int(rng.integers(10, 30_000)))]
    elif how == 2 and names:  # a name replaced by odd bytes
        names[int(rng.integers(0, len(names)))] = _pick(ODD_NAMES, rng)
    elif how == 3:  # split like a long list, with a part missing
        _set_names(f[obj], key, names * 2 + [b"x%d" % i for i in range(9000)])
        part = key.rstrip("0123456789") + "1"
        if part in f[obj].attrs:
            del f[obj].attrs[part]
        return
    elif how == 4:  # stored as variable-length UTF-8 with invalid bytes in it
        _set_names(f[obj], key, names + [b"bad\xff"], vlen=True)
        return
    else:  # stored as a 2-D list
        f[obj].attrs[key] = np.array([names[:40] or [b"x"]] * int(rng.integers(2, 20)), dtype="S")
        return
    _set_names(f[obj], key, names)


def _zeros_compressed(shape: Tuple[int, ...], chunks) -> Callable[[h5py.Group, str], None]:
    return lambda g, n: g.create_dataset(n, data=np.zeros(shape, "f4"), chunks=chunks, compression="gzip", compression_opts=9)


def a_shape(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """A tensor declared as something its stored bytes cannot be."""
    name = _pick(_datasets(f), rng)
    shape = f[name].shape or (1,)
    wide = (shape[0], 2_000_000) if len(shape) == 1 else tuple(shape[:-1]) + (2_000_000,)
    makers = [
        lambda g, n: g.create_dataset(n, data=np.ones(tuple(shape[:-1]) + (0,), "f4")),  # an empty axis
        lambda g, n: g.create_dataset(n, shape=(8, 0), dtype="f4"),
        lambda g, n: g.create_dataset(n, shape=wide, dtype="f4", chunks=True),  # chunks never written
        lambda g, n: g.create_dataset(n, shape=wide, dtype="f4", chunks=True, compression="gzip"),
        _zeros_compressed((16, 400_000), (16, 400_000)),  # one 24 MiB chunk of zeros in ~25 KB
        _zeros_compressed((16, 400_000), (16, 16_384)),  # zeros compressed a thousandfold
        lambda g, n: g.create_dataset(n, data=np.ones(shape, "f4"), chunks=shape, compression="lzf"),  # a real compressed tensor
        lambda g, n: g.create_dataset(n, data=np.ones((1,) * 7, "f4")),  # seven axes
        lambda g, n: g.create_dataset(n, data=np.float32(1.0)),  # a scalar
        lambda g, n: g.create_dataset(n, shape=(2**31, 2**31, 2**31), dtype="f4", chunks=(1, 1, 1024), compression="gzip"),
    ]
    how = int(rng.integers(0, len(makers)))
    if how == 2:  # some chunks written, most not
        _replace(f, name, makers[how])
        f[name][(0,) * (len(wide) - 1) + (slice(0, 8),)] = 1
        return
    _replace(f, name, makers[how])


def a_links(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """Links that alias or loop inside the file: a chain of soft links, a soft-link loop, one
    layer's group linked under a second name, a tensor linked into another layer, a link to the root."""
    name = _pick(_datasets(f), rng)
    parent = name.rpartition("/")[0]
    group = f[parent] if parent else f
    how = int(rng.integers(0, 5))
    if how == 0:  # a chain of 20 soft links ending at the tensor
        values = f[name][()]
        f.create_dataset("chain/end", data=values)
        for k in range(20):
            f[f"chain/l{k}"] = h5py.SoftLink(f"/chain/l{k + 1}" if k < 19 else "/chain/end")
        _replace(f, name, lambda g, n: g.__setitem__(n, h5py.SoftLink("/chain/l0")))
    elif how == 1:  # a soft-link loop in place of the tensor
        _replace(f, name, lambda g, n: g.__setitem__(n, h5py.SoftLink(f"/{name}")))
    elif how == 2:  # another tensor's dataset linked here too
        other = _pick(_datasets(f), rng)
        if other != name:
            _replace(f, name, lambda g, n: g.__setitem__(n, f[other]))
    elif how == 3:  # the root linked inside a layer
        group["root"] = f["/"]
    else:  # the tensor's group linked under a second name beside it
        top = name.split("/")[0]
        if top in f and isinstance(f[top], h5py.Group) and top + "_alias" not in f:
            f[top + "_alias"] = f[top]


def a_attrs(f: h5py.File, rng: np.random.Generator, aux: Path) -> None:
    """Scalar attributes of odd sizes and encodings: a megabyte model_config, invalid UTF-8, NULs,
    an array where a string goes, a null dataspace."""
    obj = _pick(["/"] + [n for n in _all(f, h5py.Group) if n.count("/") <= 1], rng)
    key = _pick(["keras_version", "backend", "model_config", "name", "layer_names", "weight_names"], rng)
    values = [
        lambda: np.bytes_(b"3.\xff\xfe"), lambda: np.bytes_(b"3.1\x00\x00junk"), lambda: "\ud800".encode("utf-8", "surrogatepass"),
        lambda: np.array([b"3", b"1"]), lambda: h5py.Empty("f4"), lambda: np.zeros((300, 300), "S1"),
        lambda: '{"class_name": "Sequential", "config": {"layers": [' + ",".join(['{"class_name": "Dense", "config": {}}'] * 20_000) + "]}}",
    ]
    value = _pick(values, rng)()
    if key in f[obj].attrs:
        del f[obj].attrs[key]
    try:
        f[obj].attrs[key] = value
    except OSError:  # past 64 KB on an object header of the old format: the largest that fits
        f[obj].attrs[key] = value[:60_000] if isinstance(value, str) else np.zeros((200, 200), "S1")


def _hollow(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
    """The file made far longer than its bytes on disk with holes (a sparse file)."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.truncate(int(rng.integers(96, 160)) << 20)


# Configs (a `.keras` archive's config.json or a legacy file's model_config).

def _layer_list(config: dict) -> List[dict]:
    body = config.get("config")
    return body if isinstance(body, list) else body.get("layers", []) if isinstance(body, dict) else []


def _entry_name(entry: dict) -> Optional[str]:
    return entry.get("name") or (entry.get("config") or {}).get("name")


def _rename_producer(entry: dict, new: str) -> None:
    """Make `entry` fed by `new`: its inbound nodes' first producer name replaced."""
    text = json.dumps(entry.get("inbound_nodes") or [])
    names = [n for n in _strings(json.loads(text)) if n != "__keras_tensor__"]
    if names:
        entry["inbound_nodes"] = json.loads(text.replace(json.dumps(names[0]), json.dumps(new), 1))


def _strings(obj) -> List[str]:
    if isinstance(obj, str):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return [s for item in items for s in _strings(item)]


def c_cycle(config: dict, rng: np.random.Generator) -> None:
    """A graph that feeds itself: a layer fed by itself or by a layer after it (a Sequential is
    made Functional with its layers in a loop)."""
    layers = _layer_list(config)
    fed = [k for k, e in enumerate(layers) if e.get("inbound_nodes")]
    if not fed:  # a Sequential: add a producer list that points forward
        if len(layers) > 1:
            k = int(rng.integers(0, len(layers) - 1))
            layers[k]["inbound_nodes"] = [[[_entry_name(layers[k + 1]) or "x", 0, 0, {}]]]
            config["class_name"] = "Functional"
            if isinstance(config.get("config"), dict):
                config["config"].setdefault("input_layers", [[_entry_name(layers[0]) or "x", 0, 0]])
                config["config"].setdefault("output_layers", [[_entry_name(layers[-1]) or "x", 0, 0]])
        return
    k = _pick(fed, rng)
    later = [i for i in range(k, len(layers))]
    _rename_producer(layers[k], _entry_name(layers[_pick(later, rng)]) or "x")


def c_many(config: dict, rng: np.random.Generator) -> None:
    """Thousands of weightless layers spliced in (within the JSON budget, under and over the layer budget)."""
    layers = _layer_list(config)
    if not layers:
        return
    at = int(rng.integers(1, max(2, len(layers))))
    count = int(rng.integers(1000, 30_000))  # under and over the layer budget
    previous = _entry_name(layers[at - 1]) or "x"
    spliced = []
    for i in range(count):
        entry = {"class_name": "Dropout", "config": {"name": f"drop_{i}", "rate": 0.0}}
        if any("inbound_nodes" in e for e in layers):
            entry["name"] = f"drop_{i}"
            entry["inbound_nodes"] = [[[previous, 0, 0, {}]]]
            previous = f"drop_{i}"
        spliced.append(entry)
    layers[at:at] = spliced
    if at < len(layers) - count and "inbound_nodes" in layers[at + count]:
        _rename_producer(layers[at + count], previous)


HUGE_SIZES = [10**9, 2**31, 2**63 - 1, 2**64, 10**18, -(2**63)]


def c_sizes(config: dict, rng: np.random.Generator) -> None:
    """Sizes no model has: an input of 10^9 x 10^9 pixels, units or filters of 2^63, a name of
    100,000 characters, a name with control characters or a lone surrogate."""
    layers = _layer_list(config)
    if not layers:
        return
    entry = _pick(layers, rng)
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        return
    how = int(rng.integers(0, 4))
    if how == 0:
        for key in ("batch_shape", "batch_input_shape"):
            if isinstance(cfg.get(key), list) and len(cfg[key]) > 1:
                cfg[key] = [None] + [_pick(HUGE_SIZES, rng) for _ in cfg[key][1:]]
    elif how == 1:
        for key in ("units", "filters", "kernel_size", "pool_size", "strides", "target_shape", "dims"):
            if key in cfg:
                cfg[key] = _pick(HUGE_SIZES, rng) if not isinstance(cfg[key], list) else [_pick(HUGE_SIZES, rng)] * len(cfg[key])
    elif how == 2:
        cfg["name"] = "n" * 100_000
    else:
        cfg["name"] = _pick(["\ud800", "a\udcffb", "\x1b[2J", "line\nbreak", "\u202eevil", "nul\x00"], rng)


def c_struct(config: dict, rng: np.random.Generator) -> None:
    """Structures that lie: duplicate names, a nested model named like its own layer, outputs or
    producers that do not exist, the layers of a model given as its own config."""
    layers = _layer_list(config)
    how = int(rng.integers(0, 5))
    if how == 0 and len(layers) > 1:
        a, b = layers[0], _pick(layers[1:], rng)
        if isinstance(b.get("config"), dict):
            b["config"]["name"] = _entry_name(a)
            if "name" in b:
                b["name"] = _entry_name(a)
    elif how == 1 and layers:
        nested = {"class_name": config.get("class_name"), "config": json.loads(json.dumps(config.get("config")))}
        if isinstance(nested["config"], dict):
            nested["config"]["name"] = _entry_name(layers[-1])
        layers.append(nested)
    elif how == 2 and isinstance(config.get("config"), dict):
        config["config"]["output_layers"] = [["no_such_layer", 0, 0]]
        config["config"]["input_layers"] = [["no_such_input", 0, 0], ["no_such_input", 0, 0]]
    elif how == 3 and layers:
        _rename_producer(_pick(layers, rng), "no_such_layer")
    elif layers:  # a layer whose settings are a model's body
        entry = _pick(layers, rng)
        entry["config"] = {"layers": [json.loads(json.dumps(e)) for e in layers[:2]], "name": _entry_name(entry)}


CONFIG_ATTACKS = {"ccycle": c_cycle, "cmany": c_many, "csizes": c_sizes, "cstruct": c_struct}


def _attack_config(text: str, kind: str, rng: np.random.Generator) -> str:
    config = json.loads(text)
    CONFIG_ATTACKS[kind](config, rng)
    return json.dumps(config)


def adversarial_config(kind: str) -> Callable[[Path, Path, np.random.Generator, Path], None]:
    def attack(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
        if src.suffix == ".keras":
            members = dict(_members(src))
            members["config.json"] = _attack_config(members["config.json"].decode(), kind, rng).encode()
            _zip(dst, list(members.items()), compress={"config.json": zipfile.ZIP_DEFLATED})
            return
        shutil.copyfile(src, dst)
        with h5py.File(dst, "r+", libver="latest") as f:  # dense attribute storage: no 64 KB limit
            old = f.attrs["model_config"]
            f.attrs["model_config"] = _attack_config(old.decode() if isinstance(old, bytes) else str(old), kind, rng)
    return attack


ADVERSARIAL_H5 = {"avars": a_vars, "anames": a_names, "ashape": a_shape, "alinks": a_links, "aattrs": a_attrs}


def adversarial(kind: str) -> Callable[[Path, Path, np.random.Generator, Path], None]:
    if kind in CONFIG_ATTACKS:
        return adversarial_config(kind)
    if kind == "aholes":
        return _hollow
    def attack(src: Path, dst: Path, rng: np.random.Generator, aux: Path) -> None:
        _edit_h5(src, dst, lambda f: ADVERSARIAL_H5[kind](f, rng, aux), libver="latest")
    return attack


def _adversarial_cases() -> List["Case"]:
    """About 1,100 cases: every fixture attacked in its HDF5 structure, every fixture with a config
    in its config; the seed of each is its id."""
    cases = []
    for name in FIXTURE_FILES:
        counts = {"avars": 4, "anames": 3, "ashape": 5, "alinks": 3, "aattrs": 2, "aholes": 1}
        if _has_config(name) and (name.endswith(".keras") or _has_model_config(name)):
            counts.update({"ccycle": 2, "cmany": 1, "csizes": 2, "cstruct": 2})
        cases += [Case(f"{_short(name)}-{kind}{i}", name, f"{kind}{i}") for kind, count in counts.items() for i in range(count)]
    return cases


# ---------------------------------------------------------------------------------------------
# Files that are not weights files at all.

def _plain_hdf5(dst: Path) -> None:
    with h5py.File(dst, "w") as f:
        f["data"] = np.arange(10.0)
        f.attrs["note"] = "not keras"


def _empty_keras3(dst: Path) -> None:
    with h5py.File(dst, "w") as f:
        f.create_group("layers")
        f.create_group("vars")


def _datasets_not_groups(dst: Path) -> None:
    with h5py.File(dst, "w") as f:
        f["layers"] = np.ones(3)
        f["vars"] = np.ones(3)
        f["model_weights"] = np.ones(3)


def _no_layers(dst: Path) -> None:
    with h5py.File(dst, "w") as f:
        f.attrs["layer_names"] = np.array([], dtype="S1")


def _vars_not_numbered(dst: Path) -> None:
    with h5py.File(dst, "w") as f:
        f["layers/dense/vars/kernel"] = np.ones((4, 3), "f4")


def _keras_zip(dst: Path, weights: bytes, config: bytes = b"{}") -> None:
    _zip(dst, [("metadata.json", b'{"keras_version": "3.0.0"}'), ("config.json", config), (WEIGHTS_MEMBER, weights)])


SYNTHETIC: Dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("conv1 weights go here\n"),
    "random": lambda p: p.write_bytes(np.random.default_rng(SEED).bytes(30_000)),
    "hdf5sig": lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(SEED + 1).bytes(30_000)),
    "plain": _plain_hdf5,
    "k3empty": _empty_keras3,
    "k3datasets": _datasets_not_groups,
    "nolayers": _no_layers,
    "varsnames": _vars_not_numbered,
    "zipjunk": lambda p: _zip(p, [("readme.txt", b"hello")]),
    "zipzero": lambda p: _keras_zip(p, b""),
    "ziptext": lambda p: _keras_zip(p, b"not hdf5 at all", b'{"class_name": "Sequential", "config": []}'),
    "zipempty": lambda p: p.write_bytes(b"PK\x05\x06" + bytes(18)),
    "dir": lambda p: p.mkdir(),
    "missing": lambda p: None,
    "symloop": lambda p: p.symlink_to(p),
}


# ---------------------------------------------------------------------------------------------
# The cases.

@dataclass(frozen=True)
class Case:
    id: str
    fixture: Optional[str]  # None: a synthetic file
    damage: str

    @property
    def suffix(self) -> str:
        if self.fixture is None:
            return ".keras" if self.damage.startswith("zip") else ".h5"
        return next(s for s in (".weights.h5", ".keras", ".h5") if self.fixture.endswith(s))

    @property
    def rng(self) -> np.random.Generator:
        return np.random.default_rng([SEED, zlib.crc32(self.id.encode())])

    def build(self, folder: Path, aux: Path) -> Path:
        """Write the damaged file into `folder` and return its path."""
        dst = folder / f"damaged{self.suffix}"
        if self.fixture is None:
            SYNTHETIC[self.damage](dst)
            return dst
        kind = self.damage.rstrip("0123456789")
        if kind in ADVERSARIAL_KINDS:
            adversarial(kind)(FIXTURES / self.fixture, dst, self.rng, aux)
            return dst
        damage = {"trunc": d_trunc, "hflip": d_hflip, "bflip": d_bflip, "zero": d_zero, "dflip": d_dflip, "zbomb": z_bomb, "chunkflip": d_chunkflip,
                  **ARCHIVE}.get(kind) or structural(kind)
        damage(FIXTURES / self.fixture, dst, self.rng, aux)
        return dst


def _has_model_config(name: str) -> bool:
    with h5py.File(FIXTURES / name, "r") as f:
        return "model_config" in f.attrs


def _cases() -> List[Case]:
    byte_level = {"trunc": 2, "hflip": 2, "bflip": 1, "zero": 1, "dflip": 1}
    h5_level = {"adel": 1, "atype": 1, "names": 1, "ddel": 1, "dshape": 1, "dtype": 1, "dhuge": 1, "dgroup": 1, "link": 1, "extern": 1,
                "chunked": 1}
    cases = []
    for name in FIXTURE_FILES:
        counts = dict(byte_level)
        counts.update(h5_level)
        if name.endswith(".keras"):
            counts.update({"zmiss": 2, "zmember": 3, "zconfig": 8, "zsize": 3, "zslip": 2, "zcomp": 1, "zflags": 3, "zdup": 1})
        else:
            counts["chunkflip"] = 1
            if _has_model_config(name):
                counts["config"] = 8
        if name in ("seq__k3.weights.h5", "nested__tfk.h5"):
            counts["deep"] = 1
        if name in ("seq__k3.keras", "fp16__k3.keras"):
            counts["zbomb"] = 2
        for kind, count in counts.items():
            cases += [Case(f"{_short(name)}-{kind}{i}", name, f"{kind}{i}") for i in range(count)]
    cases += [Case(f"synth-{kind}", None, kind) for kind in SYNTHETIC]
    return cases


CASES = _cases()
ADVERSARIAL_KINDS = {*ADVERSARIAL_H5, *CONFIG_ATTACKS, "aholes"}
ADVERSARIAL_CASES = _adversarial_cases()


def _commands(case: Case, damaged: Path, work: Path) -> List[Tuple[str, List[str], Optional[Path]]]:
    """(label, argv, output or None): the damaged file as source, then as target of a good source."""
    name = case.fixture or "seq__k3.keras"
    flat = _flatten_args(name) if case.fixture else []
    pick = np.random.default_rng([SEED, zlib.crc32(case.id.encode()), 1])
    out_args = OUTPUTS[int(pick.integers(0, len(OUTPUTS)))]
    out, target_out = work / "out-convert" / out_args[0], work / "out-target" / "o.h5"
    partner = FIXTURES / (_partner(name) if case.fixture else "seq__k3.keras")
    commands = [
        ("inspect", ["inspect", str(damaged)], None),
        ("json", ["inspect", str(damaged), "--json"], None),
        ("plan", ["plan", str(damaged), *flat], None),
        ("convert", ["convert", str(damaged), "-o", str(out), *out_args[1:], *flat], out),
        ("target", ["convert", str(partner), "-o", str(target_out), "--target", str(damaged), *_flatten_args(partner.name)], target_out),
    ]
    if case.damage.rstrip("0123456789") in ADVERSARIAL_KINDS:  # two commands each, so a thousand cases stay quick
        return [commands[int(pick.integers(0, 3))], commands[3 + int(pick.integers(0, 2))]]
    return commands


def _digest(path: Path) -> str:
    if path.is_symlink() or not path.exists():
        return "absent"
    if path.is_dir():
        return "directory"
    with open(path, "rb") as fh:  # a file of holes is hashed a block at a time
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _problems(argv: List[str], status: object, err: str, out: Optional[Path], files: Sequence[Path] = ()) -> List[str]:
    """What is wrong with one command's outcome (empty: it behaved). `files`: the paths the
    error line may name."""
    command = "weightport " + " ".join(argv)
    problems = []
    if status not in (0, 2):
        problems.append(f"{command}: exit {status}: {err.strip()[:300]}")
    if "Traceback" in err:
        problems.append(f"{command}: traceback on stderr")
    if status == 2:
        lines = err.rstrip("\n").split("\n")
        if not lines[0].startswith("weightport: error: "):
            problems.append(f"{command}: first line is not 'weightport: error: ...': {lines[0][:200]!r}")
        elif len(lines) > 1 and "pair them with --map" not in lines[0]:
            problems.append(f"{command}: {len(lines)} lines on stderr: {err[:300]!r}")
        elif files and not any(lines[0].startswith((f"weightport: error: {f}: ", f"weightport: error: {f} (")) for f in files):
            problems.append(f"{command}: the error names none of {[str(f) for f in files]}: {lines[0][:200]!r}")
        elif "; " not in lines[0]:
            problems.append(f"{command}: the error says what is wrong but not what to do: {lines[0][:200]!r}")
    if out is not None and out.parent.is_dir():
        left = sorted(p.name for p in out.parent.iterdir())
        expected = [out.name] if status == 0 else []
        if left != expected:
            problems.append(f"{command}: exit {status} left {left} in the output folder")
    return problems


CPU_S = 2.0  # per command, in process: its own CPU (`OwnCPU`); the worst command takes ~0.6 s beside a second worker on a busy machine, a blow-up tens of seconds
GROWTH_MIB = 200  # how far one command may raise the test process's peak memory
HANG_S = 60


class _Hang(BaseException):
    """Raised by the alarm in a command that runs past `HANG_S` (never caught by weightport)."""


@contextlib.contextmanager
def _bounded(argv: List[str], problems: List[str], memory: bool = True) -> Iterator[None]:
    """Run one in-process command under the fuzz's bounds: its own CPU time, growth of the peak memory
    (with `memory`), and a wall-clock alarm that stops a hang; what is exceeded is added to
    `problems`. The damaged files' memory is not bounded yet: a byte flipped in the length of a
    variable-length string makes HDF5 allocate that length (880 MiB for `funcnames-tfkH-bflip0`)
    before it finds the heap object does not match."""
    def hang(*_: object) -> None:
        raise _Hang()
    command = "weightport " + " ".join(argv)
    previous = signal.signal(signal.SIGALRM, hang)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    signal.alarm(HANG_S)
    try:
        with OwnCPU() as cpu:
            yield
    except _Hang:
        problems.append(f"{command}: still running after {HANG_S} s (a hang)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    if cpu.seconds > CPU_S:
        problems.append(f"{command}: {cpu.seconds:.1f} s of CPU")
    if memory and grown > GROWTH_MIB:
        problems.append(f"{command}: peak memory grew by {grown:.0f} MiB")


def run_case(case: Case, work: Path, capfd=None) -> List[str]:
    """Build the damaged file, run every command on it in process, return the problems found."""
    for sub in ("in", "aux"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    damaged = case.build(work / "in", work / "aux")
    inputs = [damaged] + sorted(p for p in (work / "in").iterdir() if p != damaged)
    before = {p: _digest(p) for p in inputs}
    problems: List[str] = []
    for _label, argv, out in _commands(case, damaged, work):
        if out is not None:
            out.parent.mkdir(exist_ok=True)
        if capfd is not None:
            capfd.readouterr()
        status: object = "hung"
        with _bounded(argv, problems, memory=case.damage.rstrip("0123456789") in ADVERSARIAL_KINDS):
            try:
                status = cli.main(argv)
            except _Hang:
                raise
            except BaseException as exc:  # noqa: BLE001 - the point is that nothing escapes main
                status = f"raised {type(exc).__name__}: {exc}"
        err = capfd.readouterr().err if capfd is not None else ""
        named = [Path(a) for a in argv[1:] if a.startswith(str(work)) or a.startswith(str(FIXTURES))]
        problems += _problems(argv, status, err, out, named)
    problems += [f"input {p.name} changed" for p in inputs if _digest(p) != before[p]]
    return problems


# ---------------------------------------------------------------------------------------------
# The tests.

def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 500 and len(ADVERSARIAL_CASES) >= 1000
    everything = CASES + ADVERSARIAL_CASES
    assert len({case.id for case in everything}) == len(everything)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_damaged_input(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    problems = run_case(case, tmp_path, capfd)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", ADVERSARIAL_CASES, ids=[case.id for case in ADVERSARIAL_CASES])
def test_adversarial_input(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    problems = run_case(case, tmp_path, capfd)
    assert not problems, "\n".join(problems)


def _wait_bounded(child: subprocess.Popen) -> Tuple[object, float]:
    """The child's exit status and CPU time (its own, from wait4), or "hung" once killed after `HANG_S`."""
    start = time.monotonic()
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() - start > HANG_S:
            child.kill()
            child.wait()
            return "hung", 0.0
        time.sleep(0.01)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in ADVERSARIAL_CASES[::37]])
def test_adversarial_input_in_a_real_process(case: Case, tmp_path: Path) -> None:
    """A sample in real processes, each held to the bounds a user sees: under 2 s of CPU and 200 MiB
    for the whole process, exit 0 or 2, one line, no traceback, nothing beside OUT."""
    for sub in ("in", "aux"):
        (tmp_path / sub).mkdir()
    damaged = case.build(tmp_path / "in", tmp_path / "aux")
    problems: List[str] = []
    for _label, argv, out in _commands(case, damaged, tmp_path):
        if out is not None:
            out.parent.mkdir()
        peak = tmp_path / "aux" / "peak"
        command = measured_cli_command(*argv, peak_file=peak)
        with tempfile.TemporaryFile() as err:
            child = subprocess.Popen(command["args"], env=command["env"], stdout=subprocess.DEVNULL, stderr=err)
            status, cpu = _wait_bounded(child)
            err.seek(0)
            text = err.read().decode("utf-8", "replace")
        label = "weightport " + " ".join(argv)
        named = [Path(a) for a in argv[1:] if a.startswith(str(tmp_path)) or a.startswith(str(FIXTURES))]
        problems += _problems(argv, status, text, out, named)
        if status == "hung":
            continue
        if cpu > CPU_S or peak_mib(peak) > GROWTH_MIB:
            problems.append(f"{label}: {cpu:.1f} s of CPU, peak memory {peak_mib(peak):.0f} MiB")
    assert not problems, "\n".join(problems)


SUBPROCESS_CASES = CASES[::33]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in SUBPROCESS_CASES])
def test_damaged_input_in_a_real_process(case: Case, tmp_path: Path) -> None:
    """The same checks with `python -m weightport`, as a user runs it: no traceback escapes."""
    for sub in ("in", "aux"):
        (tmp_path / sub).mkdir()
    damaged = case.build(tmp_path / "in", tmp_path / "aux")
    before = _digest(damaged)
    problems: List[str] = []
    for label, argv, out in _commands(case, damaged, tmp_path):
        if label in ("json", "plan"):
            continue
        if out is not None:
            out.parent.mkdir()
        result = run_cli(*argv)
        named = [Path(a) for a in argv[1:] if a.startswith(str(tmp_path)) or a.startswith(str(FIXTURES))]
        problems += _problems(argv, result.returncode, result.stderr, out, named)
    assert _digest(damaged) == before
    assert not problems, "\n".join(problems)


FLIPPABLE = ["seq__k3.weights.h5", "seq__tfk_weights.h5", "seq__k3.keras", "seq__k3.h5", "nested__tfk.h5"]


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_cut_and_flips_are_handled(data: st.DataObject, capfd: pytest.CaptureFixture) -> None:
    """Property: whatever prefix of a weights file survives, with whatever bytes flipped in it,
    `inspect` and `convert` exit 0 or 2 with one clear line, and leave no partial output."""
    name = data.draw(st.sampled_from(FLIPPABLE), label="fixture")
    raw = bytearray((FIXTURES / name).read_bytes())
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=6), label="flips")
    for pos, mask in flips:
        raw[pos] ^= mask
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(bytes(raw[:cut]))
        out = Path(folder) / "out" / "fcn.weights.h5"
        out.parent.mkdir()
        for argv, made in ((["inspect", str(path)], None), (["convert", str(path), "-o", str(out), *_flatten_args(name)], out)):
            capfd.readouterr()
            status = cli.main(argv)
            problems = _problems(argv, status, capfd.readouterr().err, made, [path, out])
            assert not problems, "\n".join(problems)
        assert path.read_bytes() == bytes(raw[:cut])


# ---------------------------------------------------------------------------------------------
# Specific refusals and non-refusals the fuzzer is built on.

def _fixture_copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    shutil.copyfile(FIXTURES / name, path)
    return path


def test_nan_in_the_weights_is_copied(tmp_path: Path) -> None:
    """NaN and infinities are values, not damage: converted, verified and written as they are."""
    import weightport

    source = _fixture_copy(tmp_path, "seq__k3.h5")
    with h5py.File(source, "r+") as f:
        kernel = f["model_weights/dense/seq/dense/kernel"]
        values = kernel[()]
        values[3, 2], values[100, 7] = np.nan, -np.inf
        kernel[...] = values
        bias = f["model_weights/conv2d/seq/conv2d/bias"]
        bias[1] = np.inf
    out = tmp_path / "out" / "fcn.weights.h5"
    out.parent.mkdir()
    result = run_cli("convert", str(source), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with weightport.read(out) as view:
        layers = {layer.name: layer for layer in view.layers}
        kernel = layers["dense"].weights[0].read().reshape(196, 8)
        bias = layers["conv2d"].weights[1].read()
    assert np.isnan(kernel[3, 2]) and kernel[100, 7] == -np.inf
    assert np.isfinite(np.delete(kernel.reshape(-1), [3 * 8 + 2, 100 * 8 + 7])).all()
    assert bias[1] == np.inf and np.isfinite(np.delete(bias, 1)).all()


def _replace_tensor(path: Path, name: str, make: Callable[[h5py.Group, str], None]) -> None:
    with h5py.File(path, "r+") as f:
        _replace(f, name, make)


@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
def test_a_declared_size_the_file_cannot_hold_is_refused_before_reading(layout: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = _fixture_copy(tmp_path, "seq__k3.weights.h5")
    extra = {"chunks": (64, 64), "compression": "gzip"} if layout == "chunked" else {}
    _replace_tensor(path, "layers/dense/vars/0", lambda g, n: g.create_dataset(n, shape=(10**6, 10**6), dtype="f4", **extra))
    assert cli.main(["inspect", str(path)]) == 2
    line = capfd.readouterr().err.strip()
    if layout == "chunked":  # declared in chunks, none of them written
        assert line.startswith(f"weightport: error: {path}: tensor /layers/dense/vars/0 has 0 of its 244,140,625 chunks stored")
    else:
        assert line.startswith(f"weightport: error: {path}: tensor /layers/dense/vars/0 declares 1000000x1000000 float32 values")
        assert "more than the" in line
    assert "\n" not in line


def test_a_tensor_stored_outside_the_file_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """External raw storage would read any file on the machine into the output."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private key material\n" * 100)
    path = _fixture_copy(tmp_path, "seq__tfk_weights.h5")
    _replace_tensor(path, "dense_1/dense_1/bias:0", lambda g, n: g.create_dataset(n, shape=(5,), dtype="f4", external=[(str(secret), 0, 20)]))
    out = tmp_path / "out.h5"
    assert cli.main(["convert", str(path), "-o", str(out), "--flatten", "7,7,4"]) == 2
    assert "keeps its values in other files" in capfd.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("member", ["config.json", WEIGHTS_MEMBER])
def test_a_zip_bomb_member_is_refused_before_it_is_inflated(member: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / "bomb.keras"
    _bomb(FIXTURES / "seq__k3.keras", path, member)
    assert cli.main(["inspect", str(path)]) == 2
    line = capfd.readouterr().err.strip()
    assert line.startswith(f"weightport: error: {path}: ") and ("zip bomb" in line or "more than a model config can need" in line)


def test_a_compressed_weights_member_still_converts(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Keras never deflates model.weights.h5, but a re-zipped archive may: it is inflated and read."""
    path = tmp_path / "deflated.keras"
    z_compressed(FIXTURES / "seq__k3.keras", path, np.random.default_rng(SEED), tmp_path)
    out = tmp_path / "out" / "fcn.weights.h5"
    out.parent.mkdir()
    assert cli.main(["convert", str(path), "-o", str(out)]) == 0, capfd.readouterr().err
    assert out.exists()


def test_an_encrypted_member_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / "locked.keras"
    shutil.copyfile(FIXTURES / "seq__k3.keras", path)
    data = bytearray(path.read_bytes())
    central, local = _entry(bytes(data), "config.json")
    for at in (central + 8, local + 6):
        struct.pack_into("<H", data, at, struct.unpack("<H", data[at:at + 2])[0] | 1)
    path.write_bytes(bytes(data))
    assert cli.main(["inspect", str(path)]) == 2
    assert "config.json is encrypted" in capfd.readouterr().err


def test_a_group_cycle_is_walked_once(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Groups that link back to an ancestor are entered once, not followed for ever."""
    path = _fixture_copy(tmp_path, "seq__k3.weights.h5")
    with h5py.File(path, "r+") as f:
        f["layers/dense/loop"] = f["layers"]  # a hard link back to an ancestor
        f["layers/conv2d/vars/up"] = h5py.SoftLink("/layers")
    assert cli.main(["inspect", str(path)]) == 0  # each group is entered once
    capfd.readouterr()


def test_keras3_nested_model_in_a_legacy_h5_splits_without_its_config(tmp_path: Path) -> None:
    """Found by the fuzzer: Keras 3 names a nested model's weights `backbone/bb_conv1/kernel`, so
    without a config the reader must look past the container's name to find the inner layers."""
    import weightport

    path = _fixture_copy(tmp_path, "nested__k3.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs["model_config"]
    with weightport.read(path) as view:
        assert [(layer.name, layer.container) for layer in view.layers] == [
            ("bb_conv1", "backbone"), ("bb_conv2", "backbone"), ("between", None), ("dense", "head"), ("dense_1", "head")]


def test_a_missing_keras3_tensor_is_named(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Keras numbers a layer's variables without gaps: a hole means a tensor was lost (and
    reading on would take the bias for the kernel)."""
    path = _fixture_copy(tmp_path, "seq__k3.weights.h5")
    with h5py.File(path, "r+") as f:
        del f["layers/conv2d/vars/0"]
    assert cli.main(["inspect", str(path)]) == 2
    assert "'/layers/conv2d/vars' holds tensors 1 but not 0" in capfd.readouterr().err
