"""Reader for `.safetensors` files (PyTorch state dicts and others), without torch.

The format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor
name to its dtype, shape and `data_offsets` (begin, end: relative to the byte buffer after the
header), an optional `__metadata__` of str -> str, then the buffer, every tensor in it C-order,
little-endian, contiguous. So every tensor is a run of bytes at a known place, which the byte
mover streams like a contiguous HDF5 dataset.

A file from anywhere is hostile input. Everything the header declares is checked against the
file's real size before it is believed, and against the rules the `safetensors` library itself
enforces: the tensors tile the buffer exactly, from its first byte to its last, no overlap, no
hole (the library refuses those files too). Only then is any tensor's byte read.

The file does not record in which order the modules run (the writer sorts tensors by dtype and
name): the view takes the natural order of module paths (`statedict.natural_order`) and says so.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Tuple, Union

import numpy as np

from . import budgets, digests
from .errors import WeightportError
from .statedict import IGNORED, Entry, natural_order, read_view, split_name
from .storage import RawFileStorage, Widened
from .view import ModelView

__all__ = ["SUFFIX", "DTYPES", "MAX_HEADER_BYTES", "MAX_HEADER_VALUES", "LAYOUT", "ORDER", "Header", "looks_like_safetensors", "read_header", "read_safetensors"]

PathLike = Union[str, Path]
SUFFIX = ".safetensors"
# The safetensors library reads headers of up to 100 MB; a header is ~120 bytes a tensor, so this
# is ~140,000 tensors, past `budgets.MAX_TENSORS`: weightport parses no more than it could use.
MAX_HEADER_BYTES = budgets.MAX_CONFIG_BYTES
# A tensor's declaration is ~7 JSON values (its object, dtype, a shape of 1 to 5 dims, two offsets):
# 16 for each of `budgets.MAX_TENSORS` leaves room for metadata, and parsing them takes a fraction of
# a second; a million (the config budget) of 140,000 tiny tensors took 1.5 s just to parse and refuse.
MAX_HEADER_VALUES = 16 * budgets.MAX_TENSORS
# safetensors dtype -> numpy, little-endian as the format stores them.
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
    "BOOL": "?",
    "BF16": "<u2",  # the stored bits; given as float32 (`Widened`)
}
_NUMPY = {name: np.dtype(code) for name, code in DTYPES.items()}
# Types the format defines that weightport does not read, and why.
_REFUSED = {
    "F8_E4M3": "an 8-bit float", "F8_E5M2": "an 8-bit float", "F8_E8M0": "an 8-bit float", "F4": "a 4-bit float",
    "F6_E2M3": "a 6-bit float", "F6_E3M2": "a 6-bit float", "C64": "complex",
}
_HINT_DAMAGED = "the file is damaged or was not written by a safetensors writer; save or download it again"
_HINT_FLOAT = "save the weights as float32 or float16 (`model.float()` before `save_file`)"
_LENGTH = struct.Struct("<Q")
_OTHER_FORMATS = (b"\x89HDF\r\n\x1a\n", b"PK\x03\x04")  # what an HDF5 file and a zip (.keras, torch.save) begin with
LAYOUT = "safetensors"
ORDER = "natural-path-order"
_ORDER_NOTE = ("safetensors does not record module order; module paths in natural order (features.2 before features.10), "
               "named modules alphabetically; repair with --align / --map / --drop / --skip")


@dataclass
class Header:
    """What a safetensors header declares, checked: the tensors in natural order, each an `Entry`
    whose `source` is its absolute byte offset in the file (its `__metadata__` checked, not kept:
    nothing weightport does depends on it)."""

    entries: List[Entry]
    bfloat16: FrozenSet[str]  # the names of the BF16 tensors (their `dtype` is the uint16 of their bits)


def looks_like_safetensors(path: PathLike, fd: int) -> bool:
    """A safetensors file by content (an 8-byte header length the file can hold, then a JSON
    object), whatever its name; or by name, unless it begins as another format does (an HDF5
    file or a zip renamed): a file called `.safetensors` is read as one so that what is wrong
    with it is said in its terms (a bad header length), not as "not an HDF5 file"."""
    head = os.pread(fd, _LENGTH.size + 1, 0)
    if len(head) == _LENGTH.size + 1 and head.endswith(b"{") and _LENGTH.unpack(head[:-1])[0] <= os.fstat(fd).st_size - _LENGTH.size:
        return True
    return str(path).endswith(SUFFIX) and not head.startswith(_OTHER_FORMATS)


def read_safetensors(path: PathLike, fd: int) -> ModelView:
    """The view of the safetensors file open as `fd`: its modules as layers in natural path
    order, each tensor a `RawFileStorage` at its place in the file (streamed by the byte mover)."""
    header = read_header(path, fd)
    identity = digests.identity(str(path), fd)
    entries = [_stored(str(path), identity, e, header.bfloat16) for e in header.entries]
    widened = sum(e.name in header.bfloat16 for e in header.entries)
    notes = [f"{widened} BF16 tensor{'s' if widened > 1 else ''} given as float32 (exact: a bfloat16 is the high half of a float32)"] if widened else []
    view = read_view(path, LAYOUT, entries, ORDER, _ORDER_NOTE, notes)
    view.data_file, view.data_identity = str(path), identity
    return view


def _stored(file: str, identity: tuple, entry: Entry, bfloat16: FrozenSet[str]) -> Entry:
    """The entry with its storage as `source` (and float32 as the dtype of a BF16 tensor)."""
    raw = RawFileStorage(file, identity, entry.source, entry.shape, entry.dtype)
    if entry.name not in bfloat16:
        return Entry(entry.name, entry.shape, entry.dtype, raw)
    widened = Widened(raw)
    return Entry(entry.name, entry.shape, widened.dtype, widened)


def read_header(path: PathLike, fd: int) -> Header:
    """The checked header of the safetensors file open as `fd`; refuses any file the
    `safetensors` library would refuse, and more than weightport will parse."""
    size = os.fstat(fd).st_size
    if size < _LENGTH.size:
        raise WeightportError(path, f"{size} bytes long: too short to hold a safetensors header length (8 bytes)", _HINT_DAMAGED)
    (length,) = _LENGTH.unpack(os.pread(fd, _LENGTH.size, 0))
    if length > size - _LENGTH.size:
        raise WeightportError(path, f"safetensors header length {length:,} is larger than the rest of the file ({size - _LENGTH.size:,} bytes)",
                              _HINT_DAMAGED)
    if length > MAX_HEADER_BYTES:
        raise WeightportError(path, f"safetensors header of {length:,} bytes, more than weightport reads ({MAX_HEADER_BYTES:,}: "
                                    f"{budgets.MAX_TENSORS:,} tensors take a fraction of it)", _HINT_DAMAGED)
    header = _parse(path, _read_exactly(path, fd, length))
    start = _LENGTH.size + length
    _check_metadata(path, header.pop("__metadata__", None))
    budgets.check_state_dict(path, tensors=len(header), modules=_module_count(header), longest=max(map(len, header), default=0))
    entries = {name: _entry(path, name, spec) for name, spec in header.items()}
    _check_tiling(path, entries, size - start)
    bfloat16 = frozenset(name for name, spec in header.items() if spec["dtype"] == "BF16")
    return Header([_placed(entries[name], start) for name in natural_order(list(entries))], bfloat16)


def _module_count(header: Dict[str, Any]) -> int:
    """The modules the view would have (`statedict.modules`), counted before any tensor is
    checked: 20,000 one-tensor modules are refused at once, not after reading them all."""
    return len({path for path, attribute in map(split_name, header) if attribute != IGNORED})


def _read_exactly(path: PathLike, fd: int, length: int) -> bytes:
    data = os.pread(fd, length, _LENGTH.size)
    if len(data) != length:  # shorter than fstat said: cut while being read
        raise WeightportError(path, f"changed or truncated while being read ({len(data)} of {length} header bytes)", _HINT_DAMAGED)
    return data


class _Twice(ValueError):
    """A key found twice in one JSON object."""


def _unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object whose keys are all different: a tensor declared twice would be read as
    whichever came last (the safetensors library does so), so the file is refused instead."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set = set()
        raise _Twice(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return found


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(path: PathLike, data: bytes) -> Dict[str, Any]:
    """The header's JSON object, its size bounded before it is parsed (`check_config_text`)."""
    budgets.check_config_text(data, path, "safetensors header", _HINT_DAMAGED, MAX_HEADER_VALUES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WeightportError(path, f"safetensors header is not UTF-8 text (byte {exc.start})", _HINT_DAMAGED) from None
    if not text.startswith("{"):
        raise WeightportError(path, "safetensors header does not start with '{' (not a JSON object)", _HINT_DAMAGED)
    try:
        header = json.loads(text, object_pairs_hook=_unique, parse_constant=_constant)
    except _Twice as twice:
        raise WeightportError(path, f"safetensors header declares {twice.args[0]!r} twice", _HINT_DAMAGED) from None
    except RecursionError:
        raise WeightportError(path, "safetensors header nests its JSON too deep to be a header", _HINT_DAMAGED) from None
    except ValueError as exc:
        raise WeightportError(path, f"safetensors header is not valid JSON ({exc})", _HINT_DAMAGED) from None
    if not isinstance(header, dict):
        raise WeightportError(path, f"safetensors header is a JSON {type(header).__name__}, not an object", _HINT_DAMAGED)
    return header


def _check_metadata(path: PathLike, metadata: Any) -> None:
    """`__metadata__`: absent, null or str -> str, as the safetensors library requires."""
    if metadata is not None and (not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values())):
        raise WeightportError(path, "safetensors __metadata__ is not a map of strings to strings", _HINT_DAMAGED)


def _entry(path: PathLike, name: str, spec: Any) -> Entry:
    """One tensor's declaration, checked in itself: a known dtype, a shape of whole numbers
    >= 0, offsets begin <= end spanning exactly the bytes the shape and dtype take. Its `source`
    is (begin, end) in the buffer until `_placed`."""
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
        raise WeightportError(path, f"tensor {name!r} is not declared as {{dtype, shape, data_offsets}}", _HINT_DAMAGED)
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or not all(_whole(n) and n >= 0 for n in shape):
        raise WeightportError(path, f"tensor {name!r} has shape {_short(shape)}: not a list of whole numbers >= 0", _HINT_DAMAGED)
    if len(shape) > budgets.MAX_DIMS:
        raise WeightportError(path, f"tensor {name!r} has {len(shape):,} axes, more than any weight has ({budgets.MAX_DIMS})", _HINT_DAMAGED)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(n) and n >= 0 for n in offsets) or offsets[0] > offsets[1]:
        raise WeightportError(path, f"tensor {name!r} has data_offsets {_short(offsets)}: not [begin, end] with 0 <= begin <= end", _HINT_DAMAGED)
    numpy_dtype = _dtype(path, name, dtype)
    declared = math.prod(shape) * numpy_dtype.itemsize  # Python ints: a huge shape cannot overflow
    if declared != offsets[1] - offsets[0]:
        raise WeightportError(path, f"tensor {name!r} of shape {_short(shape)} {dtype} takes {declared:,} bytes, but its data_offsets span "
                                    f"{offsets[1] - offsets[0]:,}", _HINT_DAMAGED)
    return Entry(name, tuple(shape), numpy_dtype, (offsets[0], offsets[1]))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """A declared value for a message: a shape of a million dims is not printed whole."""
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-12:]}"


def _dtype(path: PathLike, name: str, dtype: Any) -> np.dtype:
    if isinstance(dtype, str) and dtype in _NUMPY:
        return _NUMPY[dtype]
    if isinstance(dtype, str) and dtype in _REFUSED:
        raise WeightportError(path, f"tensor {name!r} is {dtype} ({_REFUSED[dtype]}), which weightport does not convert", _HINT_FLOAT)
    raise WeightportError(path, f"tensor {name!r} has dtype {_short(dtype)}, which safetensors does not define", _HINT_DAMAGED)


def _check_tiling(path: PathLike, entries: Dict[str, Entry], buffer: int) -> None:
    """The tensors cover the buffer exactly: in offset order each begins where the one before
    ends, the first at 0, the last at the buffer's end. This is what the safetensors library
    checks; it also rules out tensors outside the file, overlapping ones (two names for one set
    of bytes) and bytes no tensor declares."""
    reached, previous = 0, None
    for entry in sorted(entries.values(), key=lambda e: e.source):
        begin, end = entry.source
        if end > buffer:
            raise WeightportError(path, f"tensor {entry.name!r} ends at byte {end:,} of the data, past the end of the file "
                                        f"({buffer:,} bytes of data)", "the file is truncated or damaged; save or download it again")
        if begin < reached:
            raise WeightportError(path, f"tensors {previous!r} and {entry.name!r} overlap (bytes {begin:,} to {min(end, reached):,} of the data)",
                                  _HINT_DAMAGED)
        if begin > reached:
            raise WeightportError(path, f"bytes {reached:,} to {begin:,} of the data belong to no tensor (before {entry.name!r})", _HINT_DAMAGED)
        reached, previous = end, entry.name
    if reached != buffer:
        raise WeightportError(path, f"the last {buffer - reached:,} bytes of the file belong to no tensor", _HINT_DAMAGED)


def _placed(entry: Entry, start: int) -> Entry:
    """The entry with `source` its absolute byte offset in the file."""
    return Entry(entry.name, entry.shape, entry.dtype, start + entry.source[0])
