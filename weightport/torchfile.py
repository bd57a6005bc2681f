"""Reader for PyTorch checkpoints written by `torch.save` (`.pth`, `.pt`, `.bin`): a state dict, without torch.

A checkpoint is a zip: `<folder>/data.pkl` (a pickle of the state dict), `<folder>/data/<key>`
(each storage's raw bytes, stored uncompressed), `byteorder`, `version`. A pickle can run any
code it names, so nothing here unpickles in full and nothing imports torch (seconds and half a
gigabyte, even to refuse a bad file): the zip's directory is checked against the file's real size
(every member stored in place inside the file, none overlapping), then `torchpickle` reads the
pickle with weightport's own stand-ins, which yield where each tensor lies, never its values.
Each tensor is then checked against the bytes its zip entry really has and becomes a lazy
storage: a contiguous one lies in place, so the byte mover streams it from its offset like a
contiguous HDF5 dataset; a strided one (a transpose, a view) is read exactly through its strides.

The legacy format (PyTorch before 1.6) is five pickles, each read the same way, then the storages
one after another, each behind its element count: their places are found by walking those counts
(one 8-byte read per storage, each checked against the file's size), then read like a zip's.

The state dict keeps its modules' registration order (the order `forward` is usually written
in), which the view uses as is.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import budgets, digests, torchpickle
from .errors import WeightportError
from .statedict import Entry, read_view
from .storage import RawFileStorage, Storage, StridedFileStorage, Widened
from .torchpickle import MAX_PICKLE_BYTES, TensorRef
from .view import ModelView

__all__ = ["ZIP", "LEGACY", "LAYOUT", "ORDER", "sniff", "read_torch", "load_checkpoint"]

PathLike = Union[str, Path]
ZIP, LEGACY = "zip", "legacy"
LAYOUT = "torch-pickle"  # `ModelView.layout` of a torch.save checkpoint
ORDER = "state-dict"  # the state dict's own order: the modules' registration order
# What torch.save writes first in its legacy (non-zip) format: the pickle (protocol 2) of its magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9\x20j\xa8P\x19."
_MAGIC_NUMBER, _PROTOCOL_VERSION = 0x1950A86A20F9469CFC6C, 1001  # the legacy format's first two pickles
# A zip's members: the state dict's pickle, a few small records, one per storage. A state dict of
# the largest models weightport takes (MAX_LAYERS layers, a handful of tensors each) has fewer.
MAX_MEMBERS = 16 * budgets.MAX_LAYERS
_HINT_DAMAGED = "the file is damaged or was not written by torch.save; save or download it again"
_HINT_STATE_DICT = "save the weights with torch.save(model.state_dict(), PATH)"
# Wrappers a training script commonly puts around the state dict.
WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "weights", "params")
# torch dtype name -> numpy's (byte order added from the zip's `byteorder`); bfloat16, which numpy
# has no type for, is read as its uint16 bits and given as float32 exactly (`storage.Widened`).
_DTYPES = {"float16": "f2", "float32": "f4", "float64": "f8", "bfloat16": "u2", "int8": "i1", "int16": "i2", "int32": "i4",
           "int64": "i8", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?"}
_ALIASES = {"half": "float16", "float": "float32", "double": "float64", "long": "int64", "int": "int32", "short": "int16"}


def sniff(fd: int) -> Optional[str]:
    """ZIP or LEGACY when the file begins like a torch.save checkpoint (a zip whose member
    `<name>/data.pkl` is the first, as torch.save writes it, or the legacy magic), else None;
    a zip without that first member is left to the `.keras` reader."""
    head = os.pread(fd, 64, 0)
    if head.startswith(_LEGACY_MAGIC):
        return LEGACY
    if head[:4] == b"PK\x03\x04" and len(head) >= 30:
        length = int.from_bytes(head[26:28], "little")
        name = os.pread(fd, length, 30)
        return ZIP if re.fullmatch(rb"[^/]+/data\.pkl", name) else None
    return None


@dataclass(frozen=True)
class _Record:
    """A zip member's bytes: where they start in the file, and how many."""

    start: int
    size: int


@dataclass
class _Stored:
    """Where a checkpoint's storages lie, checked against the file: their records by key, and
    their byte order ('<' or '>')."""

    records: Dict[str, _Record]
    order: str


def read_torch(path: PathLike, fd: int, kind: str) -> ModelView:
    """The view of the checkpoint open as `fd` (`sniff` said `kind`): its modules as layers in
    the state dict's own order, each tensor a lazy storage of the file."""
    tensors, note = load_checkpoint(path, fd, kind)
    widened = sum(isinstance(storage, Widened) for _, storage in tensors)
    notes = [f"{widened} bfloat16 tensor{'s' if widened > 1 else ''} given as float32 (exact: a bfloat16 is the high half of a float32)"] if widened else []
    view = read_view(path, LAYOUT, [Entry(name, storage.shape, storage.dtype, storage) for name, storage in tensors], ORDER, note, notes)
    view.data_file, view.data_identity = str(path), digests.identity(str(path), fd)
    return view


def load_checkpoint(path: PathLike, fd: int, kind: str) -> Tuple[List[Tuple[str, Storage]], str]:
    """The state dict of the checkpoint open as `fd` (`sniff` said `kind`), checked and located
    without ever running code the pickle names, as (key, storage) in its order, and a note on
    where it was found and what its order is; every refusal is one WeightportError."""
    size = os.fstat(fd).st_size
    if kind == ZIP:
        stored, pickle = _check_zip(path, f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else str(path), size)
        value = torchpickle.load(path, pickle).value
    else:
        stored, value = _legacy(path, fd, size)
    key, state = _state_dict(path, value)
    identity = digests.identity(str(path), fd)
    tensors = [(k, _storage(path, identity, stored, k, t)) for k, t in state.items()]
    where = f"the state dict under key '{key}' of the checkpoint's dict" if key is not None else "the checkpoint's state dict"
    return tensors, f"{where} in its own order: the modules' registration order"


# --- the container --------------------------------------------------------------------------

def _check_zip(path: PathLike, name: str, size: int) -> Tuple[_Stored, bytes]:
    """The zip's storage records and its pickle, once its directory is sane: few enough members, one folder, each stored uncompressed and whole
    inside the file, none overlapping another."""
    with open(name, "rb") as fh:
        try:
            end = zipfile._EndRecData(fh)  # the directory's size and count, read before the directory
        except OSError:
            end = None
        if not end:
            raise WeightportError(path, "damaged torch.save zip (no zip directory at its end: truncated?)", _HINT_DAMAGED)
        if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_MEMBERS:
            raise WeightportError(path, f"torch.save zip of {end[zipfile._ECD_ENTRIES_TOTAL]:,} members, more than a state dict of "
                                        f"{budgets.MAX_LAYERS:,} layers has ({MAX_MEMBERS:,})", _HINT_DAMAGED)
        try:
            with zipfile.ZipFile(fh) as archive:  # closes the directory's reader, not `fh`
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise WeightportError(path, f"damaged torch.save zip ({exc})", _HINT_DAMAGED) from None
        spans = [(info, _span(path, fh, info, size)) for info in infos]
    if not infos:
        raise WeightportError(path, "damaged torch.save zip (its directory lists no members)", _HINT_DAMAGED)
    folder = infos[0].filename.split("/", 1)[0] + "/"
    stray = next((info.filename for info in infos if not info.filename.startswith(folder)), None)
    if stray is not None:
        raise WeightportError(path, f"zip with members in more than one folder ('{folder}', '{stray}'): not a torch.save file", _HINT_STATE_DICT)
    ordered = sorted(spans, key=lambda item: item[1][0])
    for (first, (_, end1)), (second, (start2, _)) in zip(ordered, ordered[1:]):
        if start2 < end1:
            raise WeightportError(path, f"zip members {first.filename} and {second.filename} overlap", _HINT_DAMAGED)
    members = {info.filename[len(folder):]: _Record(span[1] - info.file_size, info.file_size) for info, span in spans}
    if "constants.pkl" in members or any(m.startswith("code/") for m in members):
        raise WeightportError(path, "a TorchScript archive (torch.jit.save), not a state dict", _HINT_STATE_DICT)
    pickle = members.get("data.pkl")
    if pickle is None or pickle.size > MAX_PICKLE_BYTES:
        raise WeightportError(path, f"torch.save zip whose data.pkl is {'missing' if pickle is None else 'larger than any state dict needs'}", _HINT_DAMAGED)
    records = {m[len("data/"):]: r for m, r in members.items() if m.startswith("data/")}
    return _Stored(records, _order(path, name, members.get("byteorder"))), _bytes(name, pickle, pickle.size)


def _order(path: PathLike, name: str, record: Optional[_Record]) -> str:
    """numpy's byte order of the storages: the `byteorder` record's ('little' when absent, as torch reads it)."""
    order = _bytes(name, record, 8) if record is not None else b"little"
    if order not in (b"little", b"big"):
        raise WeightportError(path, f"torch.save zip whose byteorder record says {order[:8]!r}, neither little nor big", _HINT_DAMAGED)
    return "<" if order == b"little" else ">"


def _span(path: PathLike, fh: Any, info: zipfile.ZipInfo, size: int) -> Tuple[int, int]:
    """(where the member's local header starts, where its data ends), once it is stored in place."""
    if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
        raise WeightportError(path, f"zip member {info.filename} is {'encrypted' if info.flag_bits & 0x1 else 'compressed'}; torch.save stores members as they are",
                              _HINT_DAMAGED)
    fh.seek(max(info.header_offset, 0))  # below zero when the end record lies about where the directory is
    header = fh.read(30)
    if info.header_offset < 0 or len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise WeightportError(path, f"damaged zip entry for {info.filename} (truncated file?)", _HINT_DAMAGED)
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if start + info.file_size > size or info.file_size != info.compress_size:
        raise WeightportError(path, f"zip member {info.filename} extends past the end of the file (truncated file)", _HINT_DAMAGED)
    return info.header_offset, start + info.file_size


def _bytes(name: str, record: _Record, limit: int) -> bytes:
    with open(name, "rb") as fh:
        fh.seek(record.start)
        return fh.read(min(record.size, limit))


def _legacy(path: PathLike, fd: int, size: int) -> Tuple[_Stored, Any]:
    """(where the storages lie, the object) of the legacy format (PyTorch before 1.6): five pickles
    (magic number, protocol version, the writer's system, the object, the keys of its storages in
    the order their bytes follow), each read like a zip's data.pkl, then the storages."""
    data = os.pread(fd, MAX_PICKLE_BYTES + 4096, 0)  # the scan refuses a pickle longer than this
    magic = torchpickle.load(path, data)
    version = torchpickle.load(path, data, magic.end)
    system = torchpickle.load(path, data, version.end)
    if magic.value != _MAGIC_NUMBER or version.value != _PROTOCOL_VERSION:
        shown = version.value if type(version.value) is int and abs(version.value) < 1 << 64 else _key(version.value)  # no 5,000-digit str()
        raise WeightportError(path, f"legacy torch.save file of protocol {shown}, which weightport does not know", _HINT_DAMAGED)
    if not isinstance(system.value, dict) or system.value.get("little_endian") is not True:
        raise WeightportError(path, "legacy torch.save file written by a big-endian machine, which weightport does not read",
                              "load it and save it again with PyTorch 1.6 or later, which records its byte order")
    state = torchpickle.load(path, data, system.end)
    keys = torchpickle.load(path, data, state.end)
    if type(keys.value) is not list or any(type(k) is not str for k in keys.value):
        raise WeightportError(path, "legacy torch.save file whose list of storages is not a list of keys", _HINT_DAMAGED)
    return _Stored(_walk(path, fd, size, keys.end, keys.value, state.storages), "<"), state.value


def _walk(path: PathLike, fd: int, size: int, start: int, keys: List[str], storages: Dict[str, torchpickle.StorageRef]) -> Dict[str, _Record]:
    """The legacy storages' records: from `start`, for each key in turn, its element count (8 bytes,
    little-endian) then its bytes, each inside the file and of a storage the pickle refers to."""
    records: Dict[str, _Record] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None or key in records:
            raise WeightportError(path, f"legacy torch.save file listing storage '{key[:40]}' {'twice' if ref else 'which its pickle never refers to'}", _HINT_DAMAGED)
        count = int.from_bytes(os.pread(fd, 8, start), "little")
        nbytes = count * (1 if ref.untyped else _dtype(path, key, ref.dtype, "<").itemsize)
        if start + 8 + nbytes > size:
            raise WeightportError(path, f"legacy storage '{key[:40]}' of {nbytes:,} bytes extends past the end of the file's {size:,} (truncated file)", _HINT_DAMAGED)
        records[key] = _Record(start + 8, nbytes)
        start += 8 + nbytes
    return records


# --- the state dict -------------------------------------------------------------------------

def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(k, str) and type(v) is TensorRef for k, v in value.items())


def _state_dict(path: PathLike, obj: Any) -> Tuple[Optional[str], Dict[str, TensorRef]]:
    """(the wrapper key it sits under, or None; the state dict), or the refusal saying what the
    checkpoint holds instead. Only the top two levels are looked at: nothing walks a nesting."""
    if _is_tensor_dict(obj):
        key, state = None, obj
    else:
        inner = _tensor_dict_keys(obj) if isinstance(obj, dict) else []
        if len(inner) != 1 or inner[0] not in WRAPPERS:
            raise WeightportError(path, f"a PyTorch checkpoint holding {_describe(obj)}, not a state dict of tensors", _HINT_STATE_DICT)
        key, state = inner[0], obj[inner[0]]
    budgets.check_state_dict(path, tensors=len(state), longest=max(map(len, state)))
    return key, state


def _tensor_dict_keys(obj: Dict[Any, Any]) -> List[Any]:
    """The keys of `obj` whose value is a dict of tensors, each value judged once however many keys
    hold it (the memo lets 12,000 keys hold one dict of 12,000 tensors: 144 million checks)."""
    judged: Dict[int, bool] = {}
    for value in obj.values():
        if id(value) not in judged:
            judged[id(value)] = _is_tensor_dict(value)
    return [k for k, v in obj.items() if judged[id(v)]]


def _describe(obj: Any) -> str:
    """What a checkpoint holds, for the refusal: 'a dict with keys epoch, optimizer, state_dict'."""
    if type(obj) is TensorRef:
        return "a single tensor"
    if isinstance(obj, dict):
        if not obj:
            return "an empty dict"
        odd = [f"{_key(k)} ({type(v).__name__})" for k, v in obj.items() if type(v) is not TensorRef]
        if len(odd) < len(obj):
            return f"a dict whose entries {', '.join(odd[:6])}{' ...' if len(odd) > 6 else ''} are not tensors"
        keys = [_key(k) for k in obj]
        return f"a dict with keys {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _key(key: Any) -> str:
    """A dict key for a message: a string (cut short), else its type (a 5,000-digit int has no str())."""
    return key[:40] if isinstance(key, str) else f"({type(key).__name__})"


# --- each tensor: checked against its zip entry, then a lazy storage -------------------------

def _storage(path: PathLike, identity: tuple, stored: _Stored, name: str, tensor: TensorRef) -> Storage:
    """The storage that reads `tensor` from the file: in place if contiguous, else through its
    strides; bfloat16 widened to float32. Its element count, offset and strides are checked against
    the bytes its zip entry holds first: nothing read can lie outside it."""
    dtype = _dtype(path, name, tensor.dtype, stored.order)
    start, capacity = _entry(path, stored, tensor, dtype.itemsize)
    shown = "x".join(map(str, tensor.shape)) or "scalar"
    count = math.prod(tensor.shape)
    if count == 0:
        raise WeightportError(path, f"tensor {name} has shape {shown}: no values", _HINT_DAMAGED)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
    if last >= capacity:
        raise WeightportError(path, f"tensor {name} of shape {shown} reaches past its storage '{tensor.storage.key[:40]}' ({capacity:,} values)", _HINT_DAMAGED)
    if count > capacity:
        raise WeightportError(path, f"tensor {name} of shape {shown} repeats its storage's values (strides {tensor.stride})", "save tensor.contiguous() in the state dict")
    if _contiguous(tensor.shape, tensor.stride):
        raw: Storage = RawFileStorage(str(path), identity, start + tensor.offset * dtype.itemsize, tensor.shape, dtype)
    else:
        span = RawFileStorage(str(path), identity, start + tensor.offset * dtype.itemsize, (last - tensor.offset + 1,), dtype)
        raw = StridedFileStorage(span, tensor.shape, tensor.stride)
    return Widened(raw) if tensor.dtype == "bfloat16" else raw


def _dtype(path: PathLike, name: str, dtype: str, order: str) -> np.dtype:
    """The numpy dtype a tensor's bytes are stored in (bfloat16: its uint16 bits), in the zip's byte order."""
    code = _DTYPES.get(_ALIASES.get(dtype, dtype))
    if code is None:
        raise WeightportError(path, f"tensor {name} has dtype {dtype}, which weightport does not convert", "save the weights as float32 (`model.float()` before torch.save)")
    return np.dtype(order + code)


def _entry(path: PathLike, stored: _Stored, tensor: TensorRef, itemsize: int) -> Tuple[int, int]:
    """(where the tensor's storage starts in the file, how many of the tensor's elements it holds),
    once its record (zip entry, legacy storage) exists and has every byte the pickle declares for it."""
    storage = tensor.storage
    record = stored.records.get(storage.key)
    if record is None:
        raise WeightportError(path, f"the pickle refers to storage '{storage.key[:40]}', which the file does not hold", _HINT_DAMAGED)
    declared = storage.numel * (1 if storage.untyped else _dtype(path, storage.key, storage.dtype, stored.order).itemsize)
    if declared > record.size:
        raise WeightportError(path, f"storage '{storage.key[:40]}' declares {declared:,} bytes but the file holds {record.size:,} for it", _HINT_DAMAGED)
    return record.start, declared // itemsize


def _contiguous(shape: Tuple[int, ...], stride: Tuple[int, ...]) -> bool:
    """Whether strides are C order's (a dimension of one element may have any stride)."""
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True
