"""weightport's own restricted unpickler for the `data.pkl` of a `torch.save` zip: no torch needed.

A checkpoint's pickle can name and call anything importable. This one never imports what a pickle
names: `find_class` hands back weightport's stand-ins for the few globals a state dict is pickled
with (OrderedDict, PyTorch's tensor rebuilders, its storage classes and dtypes, `torch.Size`,
bytes) and refuses every other name; `persistent_load` turns a storage reference into a
`StorageRef` (zip entry, dtype, element count) and reads no byte. A tensor comes out as a
`TensorRef`: where its values lie, never the values.

Python's C unpickler is safe with such a `find_class` but not against every resource it can be
asked to spend: a memo index of 2**32 makes it allocate (and zero) 32 GB, and a tuple nested a
million deep, used as a dict key, overflows the C stack when hashed (a segfault, not an
exception). So every pickle is first read as opcodes only (`scan`), which builds nothing: it
refuses names outside the allow-list, more opcodes or storage references than a state dict of
`budgets.MAX_TENSORS` tensors holds, memo indices past the opcode count, and dict keys or set
members that are not plain strings or numbers (nothing but those is ever hashed, so no nesting
is). It follows the unpickler's stack to know what a key is; where its model and the
unpickler's could differ (a mark reached by a plain pop), it refuses.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import budgets
from .errors import WeightportError

__all__ = ["StorageRef", "TensorRef", "DType", "Loaded", "MAX_PICKLE_BYTES", "MAX_PICKLE_OPCODES", "load", "scan"]

PathLike = Union[str, Path]
MAX_PICKLE_BYTES = budgets.MAX_CONFIG_BYTES  # a state dict's pickle holds names and shapes: ~100 bytes a tensor
# ... and 34-44 opcodes a tensor (torchvision's: ResNet152 31,570 in all, DenseNet201 42,028,
# EfficientNet-B7 45,300, the most), each ~1 µs to scan: a 16 MB pickle of one-byte opcodes took 14 s,
# and 150,000 tensors sharing one storage (a 4 MB file) 13 s and 700 MB to unpickle. 11x the most
# keeps a refusal at the cap near a second of CPU (1,280,000 took 2.2-2.4 s), and admits ~12,000 tensors.
MAX_PICKLE_OPCODES = 500_000
# ... and a few calls a tensor (its rebuild, its hooks' OrderedDict, a Parameter's), with no more tensors
# than storage references: one tensor rebuilt 318,000 times within the opcode cap took 4 s of CPU.
MAX_PICKLE_CALLS = 5 * budgets.MAX_TENSORS
_HINT_DAMAGED = "the file is damaged or was not written by torch.save; save or download it again"
_HINT_STATE_DICT = "save the weights with torch.save(model.state_dict(), PATH)"


class Refused(Exception):
    """A stand-in called with what no torch.save of a state dict writes: the reason, for the one-line error."""


@dataclass(frozen=True, eq=False)
class DType:
    """A PyTorch dtype as the pickle names it (`torch.float32` -> 'float32'), nothing more."""

    __slots__ = ("name",)
    name: str


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage the pickle refers to: its zip entry `data/<key>`, the dtype of its elements and
    how many it declares (for an untyped storage: bytes, dtype 'uint8'). Its bytes are not read here."""

    __slots__ = ("key", "dtype", "numel", "untyped")
    key: str
    dtype: str
    numel: int
    untyped: bool


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor as `torch._utils._rebuild_tensor*` would build it: a view of `storage` of `dtype`
    starting at element `offset`, with `shape` and `stride` (in elements)."""

    __slots__ = ("storage", "offset", "shape", "stride", "dtype")
    storage: StorageRef
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    dtype: str


class _Global:
    """An allow-listed global as the pickle sees it: calling it runs weightport's stand-in. It has
    slots and no `__setstate__`, so a BUILD opcode can change nothing of it (a function would let
    BUILD set its `__defaults__`, for every later file of the process)."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., Any]) -> None:
        object.__setattr__(self, "_call", call)

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise Refused(f"a BUILD of an attribute '{str(name)[:40]}' onto a global")


def _int(value: Any, what: str, low: int = 0) -> int:
    """`value` as an int in [low, 2**62): shapes, strides and offsets are such, and bounding them
    keeps products of 32 of them cheap."""
    if type(value) is not int or not low <= value < 1 << 62:
        raise Refused(f"a tensor whose {what} is {type(value).__name__ if type(value) is not int else value}")
    return value


def _ints(values: Any, what: str) -> Tuple[int, ...]:
    if type(values) is not tuple or len(values) > budgets.MAX_DIMS:
        raise Refused(f"a tensor whose {what} is not a tuple of at most {budgets.MAX_DIMS} numbers")
    return tuple(_int(v, what) for v in values)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: Optional[str] = None) -> TensorRef:
    """`torch._utils._rebuild_tensor`: a view of a storage; its bounds are checked against the zip by the reader."""
    if type(storage) is not StorageRef:
        raise Refused("a tensor rebuilt from something other than a storage of the file")
    shape, strides = _ints(size, "shape"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise Refused(f"a tensor of {len(shape)} dimensions with {len(strides)} strides")
    return TensorRef(storage, _int(offset, "storage offset"), shape, strides, dtype or storage.dtype)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None) -> TensorRef:
    """`_rebuild_tensor_v2`; `metadata` sets a tensor's conjugate or negative bit, which would change
    its values: refused rather than ignored."""
    if metadata:
        raise Refused("a tensor with a conjugate or negative bit set (its stored values are not its values)")
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, metadata: Any = None) -> TensorRef:
    """`_rebuild_tensor_v3`, which dtypes without a legacy storage class (uint16 ...) are saved with:
    an untyped storage of bytes, and the dtype apart."""
    if type(dtype) is not DType or type(storage) is not StorageRef or not storage.untyped:
        raise Refused("a tensor rebuilt (v3) without an untyped storage and a dtype")
    if metadata:
        raise Refused("a tensor with a conjugate or negative bit set (its stored values are not its values)")
    return _tensor(storage, offset, size, stride, dtype.name)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> TensorRef:
    """`_rebuild_parameter` (and `_with_state`): an nn.Parameter is its tensor's values."""
    if type(data) is not TensorRef:
        raise Refused("a parameter rebuilt from something other than a tensor")
    return data


_TENSOR = DType("Tensor")  # `torch.Tensor`, which only `_rebuild_from_type_v2` names


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRef:
    """`torch._tensor._rebuild_from_type_v2`: how a tensor carrying Python attributes is pickled
    (a tensor rebuilder, its class, its arguments, the attributes). The attributes change no value
    and are dropped; only a plain `torch.Tensor` is taken (a subclass could mean anything)."""
    if new_type is not _TENSOR:
        raise Refused("a tensor of a class other than torch.Tensor")
    if type(func) is not _Global or func._call not in (_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3) or type(args) is not tuple:
        raise Refused("a tensor rebuilt (from type) by something other than a tensor rebuilder")
    return func(*args)


class OrderedDict(collections.OrderedDict):  # type: ignore[type-arg]
    """What the pickle's OrderedDicts become: torch.save's state dict carries its modules' versions
    as an attribute (`_metadata`, set by a BUILD), which weightport has no use for. Without
    `__setstate__` the unpickler would copy a BUILD's state into the dict's attributes, every time:
    one big state memoized and built onto thousands of dicts was gigabytes from a small file."""

    def __setstate__(self, state: Any) -> None:
        """Drop the attributes, at no cost whatever their size."""


def _ordered_dict(*args: Any) -> OrderedDict:
    """`collections.OrderedDict()`: torch.save pickles it empty, its items set after; given none
    here, nothing the pickle passes is hashed or iterated."""
    if args:
        raise Refused("an OrderedDict built from arguments")
    return OrderedDict()


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode`: how protocol 2 pickles bytes (a latin-1 string encoded)."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise Refused("_codecs.encode of anything but a latin-1 string")
    return text.encode("latin1")


def _size(dims: Any = ()) -> Tuple[int, ...]:
    """`torch.Size`: a tuple of numbers."""
    return _ints(tuple(dims) if type(dims) in (list, tuple) else dims, "size")


def _device(name: Any, index: Any = None) -> str:
    """`torch.device('cpu')` (or `('cuda', 0)`) in a training checkpoint's extras: its name, as
    text. Its arguments are counted: a call taking any number of them, made again and again
    with one memoized tuple of 100,000 items, copied them each time (seconds of CPU)."""
    if type(name) is not str:
        raise Refused("a torch.device not named by a string")
    return name


# Storage classes torch.save names, and the dtype of their elements.
_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
             "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
             "BoolStorage": "bool", "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128"}
_DTYPE_NAMES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "half", "float", "double", "long", "int", "short")
_UNTYPED = DType("uint8")  # what `torch.storage.UntypedStorage` stands for in a storage reference


def _allowed() -> Dict[Tuple[str, str], Any]:
    """(module, name) -> what `find_class` returns for it: everything torch.save writes for a state
    dict, or a training checkpoint around one. Nothing in it imports, opens or runs anything."""
    rebuild = {"_rebuild_tensor": _tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor_v3": _rebuild_tensor_v3,
               "_rebuild_parameter": _rebuild_parameter, "_rebuild_parameter_with_state": _rebuild_parameter}
    table: Dict[Tuple[str, str], Any] = {("torch._utils", name): _Global(call) for name, call in rebuild.items()}
    table.update({("torch", name): DType(dtype) for name, dtype in _STORAGES.items()})
    table.update({("torch", name): DType(name) for name in _DTYPE_NAMES})
    table[("torch._tensor", "_rebuild_from_type_v2")] = _Global(_rebuild_from_type_v2)
    table.update({("torch.storage", "UntypedStorage"): _UNTYPED, ("torch", "UntypedStorage"): _UNTYPED, ("torch", "Tensor"): _TENSOR,
                  ("torch", "Size"): _Global(_size), ("torch", "device"): _Global(_device),
                  ("collections", "OrderedDict"): _Global(_ordered_dict), ("_codecs", "encode"): _ENCODE})
    return table


_ENCODE = _Global(_encode)  # stands for each unpickler's own `encode_within_budget`
ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
    """The C unpickler with weightport's globals and storage references, after `scan` has passed;
    `storages` collects every reference by key (the legacy format's storages are found by them)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.storages: Dict[str, StorageRef] = {}
        self.unencoded = len(data)  # what `_codecs.encode` may still make: in all, no more bytes than the pickle has
        self.encode = _Global(self.encode_within_budget)

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"names {module}.{name}")
        return self.encode if found is _ENCODE else found

    def encode_within_budget(self, text: Any, encoding: Any = "latin1") -> bytes:
        """`_codecs.encode`, within this pickle's budget: a string fetched from the memo and encoded
        again and again made a new copy each time (8 GB from a 4 MB file)."""
        self.unencoded -= len(text) if type(text) is str else 0
        if self.unencoded < 0:
            raise Refused("_codecs.encode making more bytes than the pickle has (one string encoded again and again)")
        return _encode(text, encoding)

    def persistent_load(self, pid: Any) -> StorageRef:
        """('storage', storage class, key, location, element count[, view]) -> a `StorageRef`; nothing
        is read. The legacy format adds a sixth item, a storage view (PyTorch before 1.0) when not None."""
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage" or type(pid[1]) is not DType or type(pid[2]) is not str:
            raise Refused("a storage reference torch.save does not write")
        if len(pid) == 6 and pid[5] is not None:
            raise Refused("a storage view (written by PyTorch before 1.0)")
        ref = StorageRef(pid[2], pid[1].name, _int(pid[4], "storage's element count"), pid[1] is _UNTYPED)
        if self.storages.setdefault(ref.key, ref).dtype != ref.dtype:
            raise Refused(f"storage '{ref.key[:40]}' referred to with two dtypes")
        return ref


@dataclass
class Loaded:
    """One unpickled pickle: its object (tensors as `TensorRef`s), where it ended in the bytes
    read, and every storage it refers to by key."""

    value: Any
    end: int
    storages: Dict[str, StorageRef]


def load(path: PathLike, data: bytes, start: int = 0) -> Loaded:
    """The pickle at `start` of `data` (a torch.save zip's data.pkl; one of a legacy file's pickles),
    scanned first, then unpickled with weightport's stand-ins; every refusal is one WeightportError."""
    end = start + scan(path, data[start:])
    unpickler = _Unpickler(data[start:end])
    try:
        return Loaded(unpickler.load(), end, unpickler.storages)
    except Refused as exc:
        raise WeightportError(path, f"PyTorch checkpoint whose pickle holds {exc}: weightport loads weights only and runs no code",
                              _HINT_STATE_DICT) from None
    except Exception as exc:  # anything the C unpickler raises on a pickle it cannot follow: one line, never a traceback
        raise WeightportError(path, f"damaged PyTorch checkpoint: its pickle cannot be read ({type(exc).__name__}: {str(exc)[:120]})",
                              _HINT_DAMAGED) from None


# --- the opcodes, before anything is built --------------------------------------------------

_SCALAR = object()  # a pushed number, bytes or None: safe to hash; a string is kept as itself (STACK_GLOBAL's operands)
_SCALAR_KINDS = {pickletools.pyint, pickletools.pylong, pickletools.pyinteger_or_bool, pickletools.pybool, pickletools.pyfloat,
                 pickletools.pybytes_or_str, pickletools.pystring, pickletools.pybytes, pickletools.pyunicode, pickletools.pynone}
# Python hashes an int modulo 2**61 - 1, anew each time it is a key (a string keeps its hash): numbers
# from that modulus up hash alike at will (20,000 keys k * (2**61 - 1), each compared with all before
# it) or cost their size each time (one 1 MB number set as a key 300,000 times: minutes in one C call).
# Below it, distinct numbers hash apart, cheaply; from it up, a number is never a key, as a container is not.
_HASHED_APART = (1 << 61) - 1
# Opcodes no torch.save of a state dict writes and which reach past the pickle: the copyreg extension registry.
_REFUSED_OPS = {"EXT1", "EXT2", "EXT4"}
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
# Where an opcode's operands are hashed: SETITEM's key (below the value), SETITEMS's and DICT's every
# other item from the mark, ADDITEMS's and FROZENSET's every item.
_KEYED = {"SETITEMS": slice(0, None, 2), "DICT": slice(0, None, 2), "ADDITEMS": slice(None), "FROZENSET": slice(None)}


def scan(path: PathLike, data: bytes) -> int:
    """Read the pickle at the start of `data` as opcodes only (nothing is built or called), following
    its stack, and refuse what `_Unpickler` must never see (see the module's docstring); its length.
    Fast (~1 µs an opcode), and no torch."""
    try:
        return _Stack(path).run(pickletools.genops(io.BytesIO(data[:MAX_PICKLE_BYTES + 4096])))
    except (ValueError, EOFError) as exc:  # cut short, an unknown opcode, a string longer than the pickle
        raise WeightportError(path, f"damaged PyTorch checkpoint: its pickle cannot be read ({exc})", _HINT_DAMAGED) from None


@dataclass(frozen=True)
class _Effect:
    """What an opcode does to the stack, from its declared effect: whether it takes the items down
    to the last mark, how many items it takes (below that mark, if so), whether it pushes one and
    whether that is a scalar, which of the items taken it hashes."""

    sliced: bool
    taken: int
    pushes: bool
    scalar: bool
    keyed: Optional[slice]


def _effects() -> Dict[str, _Effect]:
    table = {}
    for op in pickletools.opcodes:
        before, after = op.stack_before, op.stack_after
        sliced = pickletools.stackslice in before
        taken = before.index(pickletools.markobject) if sliced else len(before)
        keyed = _KEYED.get(op.name, slice(-2, -1) if op.name == "SETITEM" else None)
        table[op.name] = _Effect(sliced, taken, bool(after), bool(after) and after[0] in _SCALAR_KINDS, keyed)
    return table


_EFFECTS = _effects()
# Opcodes `_Stack.special` follows itself: what their declared effect does not say (a mark, a name, a
# duplicate, a storage reference to count), and the refused ones; `_Stack.run` follows the memo's.
_CALLS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD"}
_SPECIAL = _REFUSED_OPS | _CALLS | {"GLOBAL", "STACK_GLOBAL", "MARK", "POP", "DUP", "BINPERSID", "PERSID"}


class _Stack:
    """The unpickler's stack, marks and memo as `scan` models them, the way the C unpickler keeps
    them: marks apart, as positions in the stack, below which no opcode but one taking items up to
    the mark reaches. Per item: a string (its value), `_SCALAR`, or None (anything else: a
    container, a call's result)."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.items: List[Any] = []
        self.marks: List[int] = []
        self.memo: Dict[int, Any] = {}
        self.references = self.calls = 0

    def refuse(self, what: str, hint: str = _HINT_DAMAGED) -> WeightportError:
        return WeightportError(self.path, f"PyTorch checkpoint whose pickle {what}", hint)

    def too_many(self, what: str) -> WeightportError:
        return WeightportError(self.path, f"PyTorch checkpoint whose pickle holds more than {what}, more than weightport converts",
                               "convert a model of fewer layers, or a part of the state dict saved on its own")

    def run(self, ops: Iterator[Any]) -> int:
        """Follow every opcode; where the pickle ends (after its STOP). The common opcodes are followed
        here, in one loop with no call: `MAX_PICKLE_OPCODES` of them take about half a second."""
        items, marks, memo, effects, special = self.items, self.marks, self.memo, _EFFECTS, _SPECIAL
        count = end = 0
        for opcode, arg, position in ops:
            count += 1
            if count > MAX_PICKLE_OPCODES:
                raise self.too_many(f"{MAX_PICKLE_OPCODES:,} opcodes")
            name = opcode.name
            end = position + 1
            if name in _GET_OPS:
                items.append(memo.get(arg))
            elif name in _MEMO_OPS:
                self.put(len(memo) if name == "MEMOIZE" else arg)
            elif name in special:
                self.special(name, arg)
            else:
                effect = effects[name]
                if effect.sliced:
                    self.take_slice(effect)
                elif effect.taken:
                    if len(items) - effect.taken < (marks[-1] if marks else 0):
                        raise self.refuse("takes more items than its stack holds (not a pickle Python writes)")
                    if effect.keyed is not None:
                        self.check_keys([items[-2]])
                    del items[len(items) - effect.taken:]
                if effect.pushes:
                    if not effect.scalar or type(arg) is int and not -_HASHED_APART < arg < _HASHED_APART:
                        items.append(None)
                    else:
                        items.append(arg if type(arg) is str else _SCALAR)
        return end

    def special(self, name: str, arg: Any) -> None:
        """The opcodes whose effect on the stack their declaration does not tell."""
        if name in _REFUSED_OPS:
            raise self.refuse(f"uses the {name} opcode (the copyreg extension registry), which torch.save never writes")
        if name in ("GLOBAL", "INST", "STACK_GLOBAL"):
            self.check_global(str(arg).split(" ", 1) if name != "STACK_GLOBAL" else self.items[-2:])
        if name == "MARK":
            self.marks.append(len(self.items))
        elif name == "POP" and self.marks and self.marks[-1] == len(self.items):
            self.marks.pop()  # the C unpickler pops a mark when nothing lies above it
        elif name == "DUP":
            self.items += self.pop(1) * 2
        else:  # POP, GLOBAL, INST, STACK_GLOBAL, BINPERSID, PERSID and the calls: by their declared effect
            self.references += name in ("BINPERSID", "PERSID")
            self.calls += name in _CALLS
            if self.references > budgets.MAX_TENSORS:
                raise self.too_many(f"{budgets.MAX_TENSORS:,} tensors")
            if self.calls > MAX_PICKLE_CALLS:
                raise self.too_many(f"{MAX_PICKLE_CALLS:,} calls")
            effect = _EFFECTS[name]
            if effect.sliced:
                self.take_slice(effect)
            else:
                self.pop(effect.taken)
            self.items += [None] * effect.pushes

    def check_global(self, named: List[Any]) -> None:
        if len(named) != 2 or tuple(named) not in ALLOWED:
            shown = ".".join(n if isinstance(n, str) else "?" for n in named)
            raise self.refuse(f"names {shown} (code, or an object other than tensors): weightport loads weights only and runs no code", _HINT_STATE_DICT)

    def put(self, index: int) -> None:
        """Memoize the top item (which must lie above the last mark) in slot `index`."""
        if index > MAX_PICKLE_OPCODES:
            raise self.refuse(f"stores into memo slot {index:,}, past any its {MAX_PICKLE_OPCODES:,} opcodes could fill")
        if len(self.items) <= (self.marks[-1] if self.marks else 0):
            raise self.refuse("takes more items than its stack holds (not a pickle Python writes)")
        self.memo[index] = self.items[-1]

    def pop(self, count: int) -> List[Any]:
        """The top `count` items, all above the last mark (the unpickler reaches no lower)."""
        if len(self.items) - count < (self.marks[-1] if self.marks else 0):
            raise self.refuse("takes more items than its stack holds (not a pickle Python writes)")
        taken = self.items[len(self.items) - count:]
        del self.items[len(self.items) - count:]
        return taken

    def take_slice(self, effect: _Effect) -> None:
        """An opcode taking the items down to the last mark, the mark, and `effect.taken` items below it."""
        if not self.marks:
            raise self.refuse("takes items up to a mark it never set (not a pickle Python writes)")
        mark = self.marks.pop()
        sliced = self.items[mark:]
        del self.items[mark:]
        self.pop(effect.taken)
        if effect.keyed is not None:
            self.check_keys(sliced[effect.keyed])

    def check_keys(self, keys: List[Any]) -> None:
        if None in keys:
            raise self.refuse("uses something other than a string or number as a dict key or set member (or a number of 2**61 or more, which hash alike)",
                              _HINT_STATE_DICT)
