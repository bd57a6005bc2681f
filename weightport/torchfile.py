"""Reader for PyTorch checkpoints written by `torch.save` (`.pth`, `.pt`, `.bin`): a state dict.

A checkpoint is a pickle, and a pickle can run any code it names. Nothing here unpickles in
full: the container is checked first without PyTorch (a zip's directory, every member stored
in place inside the file, or a legacy file's magic), so a damaged or hostile file is refused
before the seconds PyTorch takes to import. Then the pickle is read twice by PyTorch's
weights-only unpickler, which builds tensors, dicts and lists and refuses everything else:
once with every storage on the `meta` device (no bytes read or allocated), to learn what the
file holds and to check each storage against the bytes the file really has; then for the
values, memory-mapped (`torch.load(mmap=True)`) for the zip format, read into memory for the
legacy one once its declared storages are known to fit in the file. A contiguous tensor of a
zip file lies in place in the file (torch stores its members uncompressed), so the byte mover
streams it from its offset like a contiguous HDF5 dataset.

The state dict keeps its modules' registration order (the order `forward` is usually written
in), which the view uses as is.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from . import budgets, digests
from .errors import WeightportError
from .statedict import Entry, read_view
from .storage import RawFileStorage, Storage
from .view import ModelView

__all__ = ["ZIP", "LEGACY", "LAYOUT", "ORDER", "MAX_PICKLE_OPCODES", "sniff", "read_torch", "TorchStorage", "load_checkpoint"]

PathLike = Union[str, Path]
ZIP, LEGACY = "zip", "legacy"
LAYOUT = "torch-pickle"  # `ModelView.layout` of a torch.save checkpoint, zip or legacy
ORDER = "state-dict"  # the state dict's own order: the modules' registration order
INSTALL = "pip install weightport[torch]"
# What torch.save writes first in its legacy (non-zip) format: the pickle (protocol 2) of its magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9\x20j\xa8P\x19."
_MAGIC_NUMBER, _PROTOCOL_VERSION = 0x1950A86A20F9469CFC6C, 1001
# A zip's members: the state dict's pickle, a few small records, one per storage. A state dict of
# the largest models weightport takes (MAX_LAYERS layers, a handful of tensors each) has fewer.
MAX_MEMBERS = 16 * budgets.MAX_LAYERS
MAX_PICKLE_BYTES = budgets.MAX_CONFIG_BYTES  # a state dict's pickle holds names and shapes: ~100 bytes a tensor
# ... and ~34 opcodes a tensor (ResNet50's), each ~1 µs to scan: a 16 MB pickle of one-byte opcodes took
# 14 s, and 150,000 tensors sharing one storage (a 4 MB file) 13 s and 700 MB to unpickle.
MAX_PICKLE_OPCODES = 64 * budgets.MAX_TENSORS
_HINT_DAMAGED = "the file is damaged or was not written by torch.save; save or download it again"
_HINT_STATE_DICT = "save the weights with torch.save(model.state_dict(), PATH)"
# What the pickle of a state dict may name (module, name pattern): PyTorch's tensor and storage
# rebuilders, its dtypes and storage classes, OrderedDict, bytes as protocol 2 pickles them. Anything
# else is refused before PyTorch is even imported (torch's weights-only unpickler checks again).
_ALLOWED = {
    "collections": re.compile(r"OrderedDict"),
    "torch._utils": re.compile(r"_rebuild_[a-z0-9_]+"),
    "torch": re.compile(r"[A-Za-z0-9]*Storage|Size|device|Tensor|u?int(8|16|32|64)|float(16|32|64)|bfloat16|bool|half|float|double|long|int|short"),
    "torch.nn.parameter": re.compile(r"Parameter"),
    "_codecs": re.compile(r"encode"),
}
# Wrappers a training script commonly puts around the state dict.
WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "weights", "params")
# torch dtype name -> numpy's; bfloat16, which numpy has no type for, is given as float32 exactly
# (a bfloat16 is a float32's high half), read through the storage, as a .safetensors BF16 is.
_DTYPES = {"float16": "float16", "float32": "float32", "float64": "float64", "bfloat16": "float32", "int8": "int8", "int16": "int16",
           "int32": "int32", "int64": "int64", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool"}


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


def _values(tensor: Any) -> np.ndarray:
    """A tensor's values as a C-order array; a bfloat16's as float32, exactly."""
    return np.ascontiguousarray((tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy())


@dataclass(frozen=True)
class _Record:
    """A zip member's bytes: where they start in the file, and how many."""

    start: int
    size: int


@dataclass
class _Zip:
    """What a checked torch.save zip holds: its storages' records by key, its pickle, its byte order."""

    records: Dict[str, _Record]
    pickle: bytes
    little_endian: bool


class TorchStorage(Storage):
    """One tensor of the state dict: its values read from the loaded (for a zip, memory-mapped)
    tensor, and `offset` where its bytes lie in the file when they lie there in place
    (contiguous, little-endian), for the byte mover."""

    __slots__ = ("_tensor", "widened")

    def __init__(self, file: str, identity: tuple, tensor: Any, offset: Optional[int]) -> None:
        super().__init__(file, identity, offset, tuple(int(n) for n in tensor.shape), np.dtype(_DTYPES[str(tensor.dtype).removeprefix("torch.")]))
        self._tensor = tensor.detach()  # a saved nn.Parameter: its values only
        self.widened = str(tensor.dtype) == "torch.bfloat16"  # given as float32

    def read(self) -> np.ndarray:
        """The whole tensor: one in place is read from the file (`_in_place`), else from the loaded one."""
        if self.offset is not None:
            return self._in_place().read()
        return _values(self._tensor)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (slices along the last axis), in the order given: only those are read."""
        if self.offset is not None:
            return self._in_place().read_rows(rows)
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.shape) < 2:
            return self.read().reshape(1, -1)[rows]
        return _values(self._tensor[tuple(np.unravel_index(rows, self.shape[:-1]))])

    def _in_place(self) -> RawFileStorage:
        """The tensor's bytes in the file, read with `os.pread` once the file is still the one read
        and long enough: a file cut while a memory map of it is read kills the process (SIGBUS)."""
        return RawFileStorage(self.file, self.identity, self.offset, self.shape, self.dtype)

    def release(self) -> None:
        """Let the loaded tensor go (its memory map closes with the last reference to it)."""
        self._tensor = None


def read_torch(path: PathLike, fd: int, kind: str) -> ModelView:
    """The view of the checkpoint open as `fd` (`sniff` said `kind`): its modules as layers in
    the state dict's own order; closing the view lets the loaded tensors (the memory map) go."""
    tensors, note = load_checkpoint(path, fd, kind)
    widened = sum(storage.widened for _, storage in tensors)
    notes = [f"{widened} bfloat16 tensor{'s' if widened > 1 else ''} given as float32 (exact: a bfloat16 is the high half of a float32)"] if widened else []
    view = read_view(path, LAYOUT, [Entry(name, storage.shape, storage.dtype, storage) for name, storage in tensors], ORDER, note, notes)
    view.data_file, view.data_identity = str(path), digests.identity(str(path), fd)
    for _, storage in tensors:
        view.resources.callback(storage.release)
    return view


def load_checkpoint(path: PathLike, fd: int, kind: str) -> Tuple[List[Tuple[str, TorchStorage]], str]:
    """The state dict of the checkpoint open as `fd` (`sniff` said `kind`), checked and loaded
    without ever running code the pickle names, as (key, storage) in its order, and a note on
    where it was found and what its order is; every refusal is one WeightportError."""
    name = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else str(path)
    size = os.fstat(fd).st_size
    archive = _check_zip(path, name, size) if kind == ZIP else None
    with contextlib.ExitStack() as stack:
        _scan(path, io.BytesIO(archive.pickle) if archive is not None else stack.enter_context(open(name, "rb")), 1 if archive is not None else 4)
    torch = _import_torch(path, kind)
    what = "torch.save zip" if kind == ZIP else "legacy torch.save"
    with _torch_errors(path, what):
        shapes = _structure(torch, path, name, size, archive)
        key, state = _state_dict(torch, path, shapes)
        loaded = torch.load(name, map_location="cpu", weights_only=True, mmap=kind == ZIP)
    values = _unwrap(loaded, key)
    if not _is_tensor_dict(torch, values) or list(values) != list(state) or any(
            (values[k].shape, values[k].stride(), values[k].dtype) != (state[k].shape, state[k].stride(), state[k].dtype) for k in state):
        raise WeightportError(path, "the checkpoint read differently the second time (changed while being read?)", "read it again once it is no longer being written")
    identity = digests.identity(str(path), fd)
    little = archive is not None and archive.little_endian
    tensors = [(k, TorchStorage(str(path), identity, values[k], _offset(state[k], values[k]) if little else None)) for k in state]
    _check_offsets(tensors, values)
    where = f"the state dict under key '{key}' of the checkpoint's dict" if key is not None else "the checkpoint's state dict"
    return tensors, f"{where} in its own order: the modules' registration order"


def _import_torch(path: PathLike, kind: str) -> Any:
    try:
        import torch
    except ImportError:
        what = "a PyTorch checkpoint (torch.save zip)" if kind == ZIP else "a PyTorch checkpoint (legacy torch.save)"
        raise WeightportError(path, f"{what}; reading it needs PyTorch, which is not installed", INSTALL) from None
    return torch


# --- the container, without PyTorch ---------------------------------------------------------

def _check_zip(path: PathLike, name: str, size: int) -> _Zip:
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
    order = _bytes(name, members["byteorder"], 8) if "byteorder" in members else b"little"
    return _Zip(records, _bytes(name, pickle, pickle.size), order == b"little")


def _span(path: PathLike, fh: Any, info: zipfile.ZipInfo, size: int) -> Tuple[int, int]:
    """(where the member's local header starts, where its data ends), once it is stored in place."""
    if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
        raise WeightportError(path, f"zip member {info.filename} is {'encrypted' if info.flag_bits & 0x1 else 'compressed'}; torch.save stores members as they are",
                              _HINT_DAMAGED)
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise WeightportError(path, f"damaged zip entry for {info.filename} (truncated file?)", _HINT_DAMAGED)
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if start + info.file_size > size or info.file_size != info.compress_size:
        raise WeightportError(path, f"zip member {info.filename} extends past the end of the file (truncated file)", _HINT_DAMAGED)
    return info.header_offset, start + info.file_size


def _bytes(name: str, record: _Record, limit: int) -> bytes:
    with open(name, "rb") as fh:
        fh.seek(record.start)
        return fh.read(min(record.size, limit))


def _scan(path: PathLike, stream: Any, count: int) -> None:
    """Read the first `count` pickles of `stream` as opcodes only (nothing is built or called)
    and refuse one that names anything a state dict does not need: `os.system`, a class of the
    training script. Fast, and without PyTorch; PyTorch's own weights-only unpickler checks again."""
    limited = io.BytesIO(stream.read(MAX_PICKLE_BYTES + 4096))
    counts = [0, 0]  # opcodes, storage references (one a tensor)
    try:
        for _ in range(count):
            for named in _globals(_counted(path, pickletools.genops(limited), counts)):
                if not _allowed(named):
                    raise WeightportError(path, f"PyTorch checkpoint whose pickle names {'.'.join(named)} (code, or an object other than "
                                                "tensors): weightport loads weights only and runs no code", _HINT_STATE_DICT)
    except (ValueError, EOFError) as exc:  # cut short, an unknown opcode, a string longer than the pickle
        raise WeightportError(path, f"damaged PyTorch checkpoint: its pickle cannot be read ({exc})", _HINT_DAMAGED) from None


def _counted(path: PathLike, ops: Iterator[Any], counts: List[int]) -> Iterator[Any]:
    """The opcodes of `ops`, refused past what a state dict of `budgets.MAX_TENSORS` tensors
    holds (`counts`: opcodes and storage references so far, over all pickles of the file)."""
    for op in ops:
        counts[0] += 1
        counts[1] += op[0].name in ("BINPERSID", "PERSID")
        if counts[0] > MAX_PICKLE_OPCODES or counts[1] > budgets.MAX_TENSORS:
            what = f"more than {MAX_PICKLE_OPCODES:,} opcodes" if counts[0] > MAX_PICKLE_OPCODES else f"more than {budgets.MAX_TENSORS:,} tensors"
            raise WeightportError(path, f"PyTorch checkpoint whose pickle holds {what}, more than weightport converts",
                                  "convert a model of fewer layers, or a part of the state dict saved on its own")
        yield op


def _globals(ops: Iterator[Any]) -> Iterator[List[str]]:
    """[module, name] of every global one pickle (its opcodes `ops`) names: GLOBAL's argument, or the two
    strings STACK_GLOBAL (protocol 4) takes from the stack, which may come from the memo."""
    strings: List[Optional[str]] = []  # what each push left on top, where it is a string
    memo: Dict[int, Optional[str]] = {}
    for opcode, arg, _ in ops:
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            yield str(arg).split(" ", 1)
        elif name == "STACK_GLOBAL":
            yield [s if s is not None else "?" for s in strings[-2:]] if len(strings) >= 2 else ["?"]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = strings[-1] if strings else None
            continue
        if name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(int(arg)))
        else:
            strings.append(str(arg) if "UNICODE" in name or "STRING" in name else None)


def _allowed(named: List[str]) -> bool:
    pattern = _ALLOWED.get(named[0]) if len(named) == 2 else None
    return pattern is not None and pattern.fullmatch(named[1]) is not None


# --- the pickle, on the meta device ---------------------------------------------------------

@contextlib.contextmanager
def _torch_errors(path: PathLike, what: str) -> Iterator[None]:
    """What PyTorch raises on a pickle it will not load, or a file it cannot read, as one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except WeightportError:
        raise
    except Exception as exc:  # torch.load raises anything from UnpicklingError to RuntimeError on a bad file
        text = str(exc)
        named = re.search(r"GLOBAL (\S+?)\.? (?:was not an allowed global|whose module)", text)
        operand = re.search(r"Unsupported operand \d+", text)
        if operand:
            raise WeightportError(path, f"{what} checkpoint pickled in a form PyTorch's weights-only loader does not read ({operand.group(0)})",
                                  "save it again with torch.save's default pickle protocol") from None
        if type(exc).__name__ == "UnpicklingError" or named:
            reason = f"it names {named.group(1)}" if named else text.strip().splitlines()[-1][:200] if text.strip() else type(exc).__name__
            raise WeightportError(path, f"{what} checkpoint whose pickle holds more than tensors ({reason}): weightport loads weights only and runs no code",
                                  _HINT_STATE_DICT) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        raise WeightportError(path, f"damaged {what} checkpoint ({first})", _HINT_DAMAGED) from None


def _structure(torch: Any, path: PathLike, name: str, size: int, archive: Optional[_Zip]) -> Any:
    """The checkpoint's object with every tensor on the meta device, unpickled by PyTorch's
    weights-only unpickler: each storage is checked against the bytes the file has for it (its
    zip record; the file's length for the legacy format) before anything is allocated, and
    carries where its bytes start (`_checkpoint_offset`, as torch's own meta loads set it)."""
    from torch import _weights_only_unpickler as weights_only

    declared: Dict[str, int] = {}
    kind = ZIP if archive is not None else LEGACY

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise WeightportError(path, f"{kind} checkpoint with a storage reference weightport does not know", _HINT_DAMAGED)
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        nbytes = int(numel) * torch._utils._element_size(dtype)
        start = _check_storage(path, key, nbytes, declared, archive, size)
        if len(pid) == 6 and pid[5] is not None:
            raise WeightportError(path, "legacy checkpoint with storage views (written by PyTorch before 1.0)", "load and save it again with a recent PyTorch")
        storage = torch.UntypedStorage(nbytes, device="meta")
        storage._checkpoint_offset = start
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    with contextlib.ExitStack() as stack:
        source = io.BytesIO(archive.pickle) if archive is not None else stack.enter_context(open(name, "rb"))
        if archive is None:
            magic, protocol = weights_only.load(source, encoding="utf-8"), weights_only.load(source, encoding="utf-8")
            if magic != _MAGIC_NUMBER or protocol != _PROTOCOL_VERSION:
                raise WeightportError(path, f"legacy torch.save file of protocol {protocol!r}, which weightport does not know", _HINT_DAMAGED)
            weights_only.load(source, encoding="utf-8")  # the writer's system information
        unpickler = weights_only.Unpickler(source, encoding="utf-8")
        unpickler.persistent_load = persistent_load
        return unpickler.load()


def _check_storage(path: PathLike, key: str, nbytes: int, declared: Dict[str, int], archive: Optional[_Zip], size: int) -> Optional[int]:
    """Where a storage's bytes start in the file (None: the legacy format, read by torch), once
    the file has them: its zip record holds as many bytes; legacy storages together fit in the file."""
    if archive is not None:
        record = archive.records.get(key)
        if record is None:
            raise WeightportError(path, f"the pickle refers to storage '{key[:40]}', which the zip does not hold", _HINT_DAMAGED)
        if nbytes > record.size:
            raise WeightportError(path, f"storage '{key[:40]}' declares {nbytes:,} bytes but its zip member holds {record.size:,}", _HINT_DAMAGED)
        return record.start
    declared[key] = max(nbytes, declared.get(key, 0))
    if sum(declared.values()) > size:
        raise WeightportError(path, f"legacy checkpoint declares storages of more than its {size:,} bytes", _HINT_DAMAGED)
    return None


# --- the state dict -------------------------------------------------------------------------

def _is_tensor_dict(torch: Any, value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _state_dict(torch: Any, path: PathLike, obj: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    """(the wrapper key it sits under, or None; the state dict of meta tensors), each tensor
    checked; or the refusal saying what the checkpoint holds instead."""
    if _is_tensor_dict(torch, obj):
        key, state = None, obj
    else:
        inner = [k for k, v in obj.items() if _is_tensor_dict(torch, v)] if isinstance(obj, dict) else []
        if len(inner) != 1 or inner[0] not in WRAPPERS:
            raise WeightportError(path, f"a PyTorch checkpoint holding {_describe(torch, obj)}, not a state dict of tensors", _HINT_STATE_DICT)
        key, state = inner[0], obj[inner[0]]
    budgets.check_state_dict(path, tensors=len(state), longest=max(map(len, state)))  # before each of 150,000 keys sharing one tensor is checked
    for name, tensor in state.items():
        _check_tensor(torch, path, name, tensor)
    return key, state


def _unwrap(obj: Any, key: Optional[str]) -> Any:
    return obj if key is None else obj.get(key) if isinstance(obj, dict) else None


def _describe(torch: Any, obj: Any) -> str:
    """What a checkpoint holds, for the refusal: 'a dict with keys epoch, optimizer, state_dict'."""
    if isinstance(obj, torch.Tensor):
        return "a single tensor"
    if isinstance(obj, dict):
        if not obj:
            return "an empty dict"
        odd = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if len(odd) < len(obj):
            return f"a dict whose entries {', '.join(map(str, odd[:6]))}{' ...' if len(odd) > 6 else ''} are not tensors"
        keys = list(obj)
        return f"a dict with keys {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _check_tensor(torch: Any, path: PathLike, name: str, tensor: Any) -> None:
    """A dense tensor of a dtype weightport converts, holding no more values than its storage has bytes for."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise WeightportError(path, f"tensor {name} is {'quantized' if tensor.is_quantized else str(tensor.layout).removeprefix('torch.')}, not a dense tensor",
                              "dequantize or densify it in PyTorch and save the state dict again")
    if dtype not in _DTYPES:
        raise WeightportError(path, f"tensor {name} has dtype {dtype}, which weightport does not convert", "save the weights as float32 (`model.float()` before torch.save)")
    if 0 in tensor.shape:
        raise WeightportError(path, f"tensor {name} has shape {'x'.join(map(str, tensor.shape))}: no values", _HINT_DAMAGED)
    if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
        raise WeightportError(path, f"tensor {name} of shape {'x'.join(map(str, tensor.shape))} repeats its storage's values (strides {tuple(tensor.stride())})",
                              "save tensor.contiguous() in the state dict")


def _offset(meta: Any, tensor: Any) -> Optional[int]:
    """Where a contiguous tensor's bytes start in the file (its storage's record plus its own
    offset in it), if its dtype is the one its values are given in."""
    start = getattr(meta.untyped_storage(), "_checkpoint_offset", None)
    if start is None or not tensor.is_contiguous() or str(tensor.dtype) == "torch.bfloat16" or tuple(meta.stride()) != tuple(tensor.stride()):
        return None
    return start + meta.storage_offset() * meta.element_size()


def _check_offsets(tensors: List[Tuple[str, TorchStorage]], values: Dict[str, Any]) -> None:
    """The offsets found agree with where the memory map put each tensor (every mapped tensor
    lies at the same distance from its offset, the map's start); if not, none is used."""
    placed = {values[k].data_ptr() - t.offset for k, t in tensors if t.offset is not None}
    if len(placed) > 1:
        for _, tensor in tensors:
            tensor.offset = None
