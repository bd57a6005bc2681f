"""Opening HDF5 weight files safely and reading Keras's string attributes.

Keras has stored `layer_names`/`weight_names` as fixed-length bytes, variable-length str,
empty float64 arrays, and split into `name0`, `name1`, ... past the 64 KB header limit.
This module turns all of those into a plain list of str, and turns every way a file can
fail to open into one clear `WeightportError`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Dict, IO, Iterator, List, Optional, Tuple, Union

import h5py
import numpy as np

from . import budgets, digests
from .errors import WeightportError
from .inputs import by_descriptor
from .storage import Storage

__all__ = ["open_h5", "member", "members", "finder", "str_list_attr", "str_attr", "has_attr", "damaged_hdf5", "tensor_storage", "creation", "read_rows", "small_cache", "Image", "HDF5Storage", "view_facts", "as_storage"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HINT_DAMAGED = "the file may be truncated or damaged; save or download it again"
_HINT_OUTSIDE = "weights must be stored in the file itself"
_MAX_SOFT_LINKS = 16  # HDF5's own limit on a chain of soft links
_NUMERIC = ("f", "i", "u")  # float, int, uint: what a Keras variable can hold
METADATA_CACHE = 512 << 10  # bytes of HDF5 metadata cache per open file, at most


def open_h5(path: Union[str, Path], source: Union[int, IO[bytes]]) -> h5py.File:
    """Open an HDF5 file read-only, or explain in one line why it is not one. `source` is the
    descriptor `path` was checked on (`inputs.open_input`), through which HDF5 opens the very file
    that was checked, or a file object already open (an archive's member)."""
    if not isinstance(source, int):
        return _h5_file(path, source)
    if not _hdf5_signature(source):
        raise WeightportError(path, "not an HDF5 file", "give a Keras weights file (.h5, .hdf5, .weights.h5), a .keras archive, a .safetensors file or a PyTorch checkpoint (.pth, .pt, .bin)")
    return _h5_file(path, by_descriptor(path, source))


def _hdf5_signature(fd: int) -> bool:
    """The HDF5 signature at the start of the file or after a user block (512, 1024, 2048 ... bytes)."""
    size, offset = os.fstat(fd).st_size, 0
    while offset + len(_HDF5_SIGNATURE) <= size:
        if os.pread(fd, len(_HDF5_SIGNATURE), offset) == _HDF5_SIGNATURE:
            return True
        offset = offset * 2 if offset else 512
    return False


def _h5_file(path: Union[str, Path], source: Union[str, IO[bytes]]) -> h5py.File:
    try:
        # no chunk cache: HDF5 keeps one per open dataset and a view keeps every dataset open, so
        # it would grow with the number of tensors. Keras writes no chunks; weightport's own
        # compressed chunks are verified in blocks of about a chunk (each read once or twice). Only
        # a chunked source read for a permuted rule (chw) decompresses a chunk once per piece it
        # touches: slow, but bounded in memory
        return small_cache(h5py.File(source, "r", rdcc_nbytes=0))
    except (OSError, ValueError) as exc:
        reason = str(exc).split("(")[-1].rstrip(")") if "(" in str(exc) else str(exc)
        if "unable to lock file" in str(exc):  # HDF5's own lock: another program has the file open for writing
            raise WeightportError(path, "is open for writing in another program (HDF5 file lock held)",
                                  "wait until that program has closed the file, then run weightport again") from None
        raise WeightportError(path, f"damaged HDF5 file, cannot be opened ({reason})", "the file may be truncated; save or download it again") from None


def member(group: h5py.Group, name: str, file: Union[str, Path]) -> Optional[Union[h5py.Group, h5py.Dataset]]:
    """The group or dataset that `name` (a path relative to `group`, or absolute) names, or None
    when nothing does; reached one link at a time, each link's type read before it is followed.

    Only links inside the file are followed: hard links, and soft links (paths in this file) up
    to `_MAX_SOFT_LINKS` of them. An external link (to another HDF5 file, a FIFO, /etc/passwd
    ...) is refused without being opened, and so is a dataset whose values live in other files
    (external raw storage, a virtual dataset), before HDF5 is asked anything that reads them."""
    current: h5py.Group = group.file if name.startswith("/") else group
    pending = _parts(name)
    hops = 0
    while pending:
        part = pending.pop()
        if not isinstance(current, h5py.Group):
            return None
        key = current._e(part)
        if not current.id.links.exists(key):
            return None
        kind = current.id.links.get_info(key).type
        where = _Where(current, part)
        if kind == h5py.h5l.TYPE_HARD:
            current = _open_hard(current, key, where, file)
        elif kind == h5py.h5l.TYPE_SOFT:
            hops += 1
            if hops > _MAX_SOFT_LINKS:
                raise WeightportError(file, f"{where}: soft links lead on through more than {_MAX_SOFT_LINKS} others (a loop)", _HINT_DAMAGED)
            target = current._d(current.id.links.get_val(key))
            current = current.file if target.startswith("/") else current
            pending.extend(_parts(target))
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            other, inside = current.id.links.get_val(key)
            raise WeightportError(file, f"{where} is a link to {current._d(inside)} in another file ({current._d(other)}), which was not opened",
                                  _HINT_OUTSIDE)
        else:
            raise WeightportError(file, f"{where} is a user-defined link (type {kind}), which was not followed", _HINT_OUTSIDE)
    return current


def members(group: h5py.Group, file: Union[str, Path], skip: Collection[str] = ()) -> Iterator[Tuple[Union[str, bytes], Union[h5py.Group, h5py.Dataset, None]]]:
    """(name, object) for each link of `group` in name order, each object reached as `member`
    reaches it; the links' names and types are read in one pass over the group (not two look-ups
    per link: hundreds of groups and tensors). A name in `skip` is given with None, not followed,
    and so is a name that is not UTF-8 (h5py's bytes), for the caller to refuse."""
    links: List[Tuple[bytes, int]] = []
    group.id.links.iterate(lambda key, info: links.append((key, info.type)), info=True)
    for key, kind in links:
        name = group._d(key)
        if not isinstance(name, str) or name in skip:
            yield name, None
        elif kind == h5py.h5l.TYPE_HARD:
            yield name, _open_hard(group, key, _Where(group, name), file)
        else:  # a soft link (or one refused): followed, or refused, as `member` does
            yield name, member(group, name, file)


def finder(group: h5py.Group, file: Union[str, Path]) -> Callable[[str], Optional[Union[h5py.Group, h5py.Dataset]]]:
    """`member(group, name, file)` for many names below one group: the group each name sits in is
    reached once and kept, so the weights of a layer (`conv1/conv/kernel:0`, `conv1/conv/bias:0`
    ...) walk the links they share once, not once each."""
    parents: Dict[str, Optional[Union[h5py.Group, h5py.Dataset]]] = {}

    def find(name: str) -> Optional[Union[h5py.Group, h5py.Dataset]]:
        parent, sep, leaf = name.rpartition("/")
        if not sep:
            return member(group, name, file)
        if parent not in parents:
            parents[parent] = member(group, parent or "/", file)
        found = parents[parent]
        return member(found, leaf, file) if isinstance(found, h5py.Group) else None

    return find


class _Where:
    """The path of link `part` of `group`, for a message: asked of HDF5 only when one is written."""

    def __init__(self, group: h5py.Group, part: str) -> None:
        self.group, self.part = group, part

    def __str__(self) -> str:
        return f"{self.group.name.rstrip('/')}/{self.part}"


def _parts(path: str) -> List[str]:
    """The components of an HDF5 path, last first (a stack to pop)."""
    return [part for part in reversed(path.split("/")) if part and part != "."]


def _open_hard(group: h5py.Group, key: bytes, where: _Where, file: Union[str, Path]) -> Optional[Union[h5py.Group, h5py.Dataset]]:
    try:
        return _open_object(group, key, where, file)
    except KeyError as exc:  # h5py's low-level open raises a damaged object header as KeyError
        raise WeightportError(file, f"damaged HDF5 file: {where} cannot be opened ({_reason(exc)})", _HINT_DAMAGED) from None


def _open_object(group: h5py.Group, key: bytes, where: _Where, file: Union[str, Path]) -> Optional[Union[h5py.Group, h5py.Dataset]]:
    """The object a hard link names, opened with one call that also tells its type (a group, a
    dataset, or a named datatype: nothing weightport reads)."""
    opened = h5py.h5o.open(group.id, key)  # a dataset's opening reads its header only; h5py's Dataset may ask a virtual one its extent
    if isinstance(opened, h5py.h5g.GroupID):
        return h5py.Group(opened)
    if not isinstance(opened, h5py.h5d.DatasetID):
        return None
    dataset = h5py.Dataset(opened, readonly=True)  # binds the id; asks HDF5 nothing
    plist = creation(dataset)
    if plist.get_layout() == h5py.h5d.VIRTUAL or plist.get_external_count() > 0:
        raise WeightportError(file, f"tensor {where} keeps its values in other files (HDF5 external or virtual storage), which were not opened",
                              _HINT_OUTSIDE)
    return dataset


def small_cache(f: h5py.File) -> h5py.File:
    """`f` with a small metadata cache (256 KiB to start, 512 KiB at most; HDF5's default grows to
    32 MiB per file). A conversion opens a few files at once, each with hundreds of object
    headers; the default cache holds them all, ~8 MiB more peak memory for DenseNet121, and the
    small one is measured no slower: its misses are reads the page cache answers."""
    config = f.id.get_mdc_config()
    config.set_initial_size, config.initial_size = True, METADATA_CACHE >> 1
    config.min_size, config.max_size = METADATA_CACHE >> 2, METADATA_CACHE
    f.id.set_mdc_config(config)
    return f


def has_attr(obj: Union[h5py.Group, h5py.Dataset], name: str) -> bool:
    """True when `name` or its chunked form `name0` is present."""
    return name in obj.attrs or f"{name}0" in obj.attrs


def _decode(item: Any) -> str:
    if isinstance(item, (bytes, np.bytes_)):
        item = bytes(item).decode("utf-8")
    if not isinstance(item, str):
        raise TypeError(f"{type(item).__name__} is not a string")
    if "\x00" in item:  # no HDF5 name or Keras string holds one: the bytes were damaged
        raise ValueError(f"{item.rstrip(chr(0))[:40]!r}... holds a NUL byte")
    item.encode("utf-8")  # h5py decodes invalid UTF-8 to lone surrogates: refused here, not when printed
    return item


def str_list_attr(obj: Union[h5py.Group, h5py.Dataset], name: str, file: Union[str, Path]) -> List[str]:
    """A list-of-strings attribute in any form Keras ever wrote (absent -> [])."""
    try:
        keys: List[str] = []
        if name in obj.attrs:
            keys.append(name)
        else:
            while f"{name}{len(keys)}" in obj.attrs:
                keys.append(f"{name}{len(keys)}")
        shapes = [obj.attrs.get_id(key).shape for key in keys]
        budgets.check_name_count(sum(math.prod(shape) for shape in shapes if shape is not None), obj, name, file)  # before reading them
        values: List[str] = []
        for key, shape in zip(keys, shapes):
            if shape is not None and math.prod(shape) == 0:  # nothing to read (a weightless layer's empty list)
                continue
            array = np.asarray(obj.attrs[key])
            if array.size == 0:
                continue
            if array.dtype.kind not in ("S", "U", "O"):
                raise TypeError(f"holds {array.dtype} values, not strings")
            values.extend(_decode(item) for item in array.reshape(-1))
        return values
    except (TypeError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise WeightportError(file, f"attribute '{name}' of '{obj.name}' is not a list of names ({exc})", "the file is damaged or not written by Keras") from None


def str_attr(obj: Union[h5py.Group, h5py.Dataset], name: str, file: Union[str, Path]) -> Optional[str]:
    """A scalar string attribute (`keras_version`, `backend`, `model_config`), or None."""
    if name not in obj.attrs:
        return None
    try:
        value = obj.attrs[name]
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        return _decode(value)
    except (TypeError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise WeightportError(file, f"attribute '{name}' of '{obj.name}' is not a string ({exc})", "the file is damaged or not written by Keras") from None


@contextlib.contextmanager
def damaged_hdf5(path: Union[str, Path]) -> Iterator[None]:
    """Turn the HDF5 library's complaints about a damaged file (h5py raises them as OSError or
    RuntimeError: a bad B-tree signature, a heap offset out of range, a group that links back to
    itself ...) met while walking a file's structure into one `WeightportError` naming the file."""
    try:
        yield
    except RecursionError:
        raise WeightportError(path, "damaged HDF5 file: its structure nests too deep to read", _HINT_DAMAGED) from None
    except (OSError, RuntimeError) as exc:
        raise WeightportError(path, f"damaged HDF5 file ({_reason(exc)})", _HINT_DAMAGED) from None


def _reason(exc: BaseException) -> str:
    """h5py's message without its wrapping: `Unable to open object (bad symbol table node signature)` -> the part in brackets."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)  # a KeyError's str() adds quotes
    return text.rsplit("(", 1)[-1].rstrip(")") if "(" in text else text


def tensor_storage(dataset: h5py.Dataset, root: h5py.File, file: Union[str, Path], image: "Image") -> "HDF5Storage":
    """`dataset`'s storage if it can be a Keras variable stored in this file, else a
    `WeightportError` naming it; every fact is asked of HDF5 once (a model has hundreds of
    tensors, and each ask of h5py costs ~10-30 us: the type, the shape, the creation properties).

    Refused before anything is read (`member`, which opened it, has refused values kept in other
    files): values that are not numbers; and a declared size the stored bytes cannot be
    (contiguous data past the end of the file, chunks never written or compressed past the
    budgets of `budgets.check_stored`), which would otherwise make numpy allocate it.
    """
    dsid = dataset.id
    dtype = dsid.dtype
    if dtype.kind not in _NUMERIC or dtype.fields is not None or dtype.subdtype is not None:
        raise WeightportError(file, f"tensor {dataset.name} holds {_dtype_name(dtype)} values, not numbers", "the file is damaged or was not written by Keras")
    plist = creation(dataset)
    layout = plist.get_layout()
    shape = tuple(int(n) for n in dsid.shape)
    declared = math.prod(shape) * dtype.itemsize
    budgets.check_stored(dataset, declared, file, plist, shape)
    size = root.id.get_filesize()
    if layout != h5py.h5d.CHUNKED and declared > size:
        raise WeightportError(file, f"tensor {dataset.name} declares {'x'.join(map(str, shape))} {dtype} values ({declared:,} bytes), "
                                    f"more than the {size:,}-byte file can hold", _HINT_DAMAGED)
    offset = dsid.get_offset() if layout == h5py.h5d.CONTIGUOUS else None
    if layout == h5py.h5d.CONTIGUOUS and declared:
        if offset is None:
            raise WeightportError(file, f"tensor {dataset.name} has no values stored", _HINT_DAMAGED)
        if offset + declared > size:
            raise WeightportError(file, f"tensor {dataset.name} ends past the end of the file (truncated file)", _HINT_DAMAGED)
    in_place = offset is not None and image.base is not None and dsid.get_storage_size() == declared
    return HDF5Storage(root.id, h5py.h5i.get_name(dsid), image, shape, dtype, image.base + offset if in_place else None)


def creation(dataset: h5py.Dataset) -> h5py.h5p.PropDCID:
    """The dataset's creation property list, asked of HDF5 once per `h5py.Dataset` object: h5py
    keeps it (its own `is_virtual`, `chunks`, `external` ... read it there)."""
    return dataset._dcpl


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields:
        return "compound"
    if dtype.kind in ("S", "U") or h5py.check_string_dtype(dtype):
        return "string"
    return "object" if dtype.kind == "O" else str(dtype)


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """The given distinct rows (slices along the last axis) of a dataset seen as rows, in the
    order given, read in one call: the rows as hyperslabs (consecutive ones as one, within the
    last leading axis), joined, which HDF5 reads in file order."""
    lead, width = dataset.shape[:-1], dataset.shape[-1]
    ordered = np.sort(np.asarray(rows, dtype=np.int64))
    space = dataset.id.get_space()
    if lead:
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (ordered[1:] % lead[-1] == 0)) + 1
        for k, run in enumerate(np.split(ordered, breaks)):  # the first SET, so one block stays a regular selection
            start = tuple(int(i) for i in np.unravel_index(int(run[0]), lead)) + (0,)
            space.select_hyperslab(start, (1,) * (len(lead) - 1) + (len(run), width), op=h5py.h5s.SELECT_OR if k else h5py.h5s.SELECT_SET)
    in_file_order = np.empty((len(ordered), width), dataset.dtype)
    dataset.id.read(h5py.h5s.create_simple(in_file_order.shape), space, in_file_order)
    return in_file_order[np.argsort(np.argsort(rows))]


@dataclass(frozen=True)
class Image:
    """An open HDF5 file as a reader hands it on: the file on disk its bytes lie in (as opened:
    `identity`), from byte `base` on (a `.keras` member's start; None when not in place, an
    inflated member), and what closes it (the view's `resources`)."""

    file: str
    identity: Optional[tuple]
    base: Optional[int]
    resources: contextlib.ExitStack


def view_facts(f: h5py.File, image: Image) -> Dict[str, Any]:
    """The `ModelView` fields an HDF5 reader fills from its file: the data file, its identity,
    the resources, and the source digests weightport recorded on the root (as text)."""
    found = {name: f.attrs[name] for name in digests.RECORDED if name in f.attrs}
    return {"data_file": image.file, "data_identity": image.identity, "resources": image.resources,
            "recorded_digests": {name: value.decode("ascii", "replace") if isinstance(value, bytes) else str(value) for name, value in found.items()}}


class HDF5Storage(Storage):
    """A tensor in an HDF5 file: what is asked of it many times over read from HDF5 once, and its
    dataset opened only when its values are read (`dataset`). Nothing keeps a dataset open: HDF5
    holds ~11 KiB for each open one, which a model of hundreds of tensors, read twice by a checked
    conversion, turns into megabytes. `offset` is set where Keras puts the bytes: contiguous and
    uncompressed, in an image that lies in place."""

    __slots__ = ("_file", "_name")

    def __init__(self, file_id: h5py.h5f.FileID, name: bytes, image: Image, shape: Tuple[int, ...], dtype: np.dtype, offset: Optional[int]) -> None:
        """The dataset `name` (its path in the open file `file_id`, opened as `image`), as
        `tensor_storage` found it: `offset` is absolute in `image.file`, or None."""
        super().__init__(image.file, image.identity, offset, shape, dtype)
        self._file, self._name = file_id, name

    @property
    def path(self) -> str:
        """The dataset's path in its file (`/model_weights/dense/dense/kernel:0`)."""
        return self._name.decode("utf-8", "surrogateescape")

    @property
    def dataset(self) -> h5py.Dataset:
        """The HDF5 dataset, opened again on each call (by the path it was opened by, in the same
        open file); it closes when the caller lets it go."""
        return h5py.Dataset(h5py.h5d.open(self._file, self._name), readonly=True)

    def read(self) -> np.ndarray:
        return self.dataset[()]

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        return read_rows(self.dataset, rows)


def as_storage(source: Union[Storage, h5py.Dataset]) -> Storage:
    """`source` as a storage: an h5py dataset met outside a view (one made in memory, a test's)
    is read through h5py where it is, not in place."""
    if isinstance(source, Storage):
        return source
    return HDF5Storage(source.file.id, h5py.h5i.get_name(source.id), Image(source.file.filename, None, None, contextlib.ExitStack()),
                       tuple(int(n) for n in source.shape), source.dtype, None)
