"""Writing a plan to disk in the layout the output's name asks for, atomically.

`.weights.h5` gets the Keras 3 layout (`layers/<class>_N/vars/<i>`), `.h5`/`.hdf5` the legacy
layout (`layer_names`, `weight_names`) that tf_keras and Keras 3 both load by position. The
file is built in a temporary file beside the destination: first its structure with h5py
(contiguous datasets allocated up front, or chunked compressed ones with `--compression`), then
the tensor bytes streamed into place (raw byte moves, or pieces through h5py), then the
provenance attributes; it is flushed, fsynced and renamed over the destination only when whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ._version import __version__
from . import digests
from .atomic import atomic_output, cannot_write
from .compression import compression_filter
from .errors import WeightportError
from .hdf5 import small_cache
from .planner import Plan, Step
from .transfer import Output, open_data_files, piece_shape, raw_location, transfer, write_pieces
from .view import ModelView, Tensor

__all__ = ["output_layout", "write", "LAYOUTS"]

LAYOUTS = {".weights.h5": "keras3", ".keras": "keras-archive", ".h5": "legacy", ".hdf5": "legacy"}
HEADER_LIMIT = 64512  # Keras's HDF5_OBJECT_HEADER_LIMIT for one attribute


def output_layout(out: Path) -> str:
    """The layout an output's name asks for; refuses names Keras would not dispatch."""
    name = out.name.lower()
    for suffix, layout in LAYOUTS.items():
        if name.endswith(suffix):
            return layout
    raise WeightportError(out, "unknown output type", "name the output *.weights.h5 (Keras 3 layout), *.h5 / *.hdf5 (legacy layout) or *.keras (whole model)")


def write(plan: Plan, out: Path, views: Dict[str, ModelView], force: bool = False, model_config: Optional[dict] = None,
          keras_version: Optional[str] = None, progress: Optional[Callable[[int, int], None]] = None,
          check: Optional[Callable[[Path], None]] = None, compression: Optional[str] = None, inputs: Sequence[str] = ()) -> None:
    """Write `plan` to `out`; `views` maps each file named by the steps to its open view, and
    `inputs` names the conversion's other inputs (a sidecar config): none of them can be `out`.

    With `model_config` the output is a whole model: a `.keras` archive (config.json and
    model.weights.h5), or a legacy full-model `.h5` (`model_config`, `model_weights`).
    `progress(bytes_written, total)` is called as the tensor bytes go in; `check(path)` is
    given the temporary file before it replaces `out` (an `.h5` as soon as every tensor is in
    place, before the provenance attributes are added; a `.keras` archive whole), and may refuse
    it by raising. `compression` ("gzip", "gzip=LEVEL", "lzf") stores the tensors chunked and
    compressed, where Keras itself writes them contiguous and uncompressed.
    """
    layout = output_layout(out)
    filters = compression_filter(compression)
    _check_destination(out, [*views, *(v.data_file for v in views.values() if v.data_file), *inputs], force)
    if layout == "keras-archive" and model_config is None:
        raise WeightportError(out, "a .keras output needs the twin's model config, and there is none",
                              "write *.weights.h5 or *.h5 instead, or convert from a file with a config")
    archive = layout == "keras-archive"
    source = views[plan.source]
    hashed = source.data_file or plan.source
    digests.start(hashed)  # on another core while the bytes are copied, if the caller has not started it
    try:
        with atomic_output(out, parts=2 if archive else 1, force=force) as paths:
            weights = paths[-1]
            places, offsets = _structure(plan, "keras3" if archive else layout, weights, out, model_config if layout == "legacy" else None, filters)
            if filters:
                _fill_pieces(plan, places, weights, views, progress)
            else:
                _fill(plan, offsets, weights, views, progress, writeback=not archive)
            if not archive:
                _fsync(weights)  # the last tensor bytes go to disk
                if check is not None:
                    check(weights)  # every tensor is in place: proved while the source's hash finishes
            _provenance(plan, weights, digests.source_digest(hashed, source.data_identity))  # refused if no longer the file read
            if archive:
                _archive(weights, paths[0], model_config, keras_version)  # the weights file is read into the archive, never synced itself
                if check is not None:
                    check(paths[0])  # the archive as Keras will open it
    finally:
        digests.discard(hashed)  # a failed conversion stops its hash (a finished one has taken it already)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _archive(weights: Path, tmp: Path, model_config: dict, keras_version: Optional[str]) -> None:
    """A `.keras` zip as Keras writes it: metadata.json, config.json, model.weights.h5, stored."""
    metadata = {"keras_version": keras_version or "3", "date_saved": time.strftime("%Y-%m-%d@%H:%M:%S")}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", json.dumps(model_config))
        archive.write(weights, "model.weights.h5")


def _check_destination(out: Path, inputs: Iterable[str], force: bool) -> None:
    """Refuse, before anything is written, an OUT that is a folder, in no folder, one of the
    conversion's inputs (the same file by device and inode, or by resolved path), or that exists
    without `force`. The last step claims OUT again (`atomic_output`): one that appears meanwhile is kept."""
    try:
        found: Optional[os.stat_result] = os.stat(out)
    except FileNotFoundError:  # no OUT, or a link to nothing
        found = None
    except OSError as exc:  # too long a name, a path through a file
        raise cannot_write(out, exc) from None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise WeightportError(out, "is a directory", "give the output file's name")
    if not out.parent.is_dir():
        raise WeightportError(out, "its folder does not exist", "create the folder first")
    if any(_same_file(out, found, Path(path)) for path in inputs):
        raise WeightportError(out, "is an input of this conversion", "write to another file; inputs are never changed")
    if os.path.lexists(out) and not force:
        raise WeightportError(out, "already exists", "pass --force to replace it")


def _same_file(out: Path, found: Optional[os.stat_result], path: Path) -> bool:
    with contextlib.suppress(OSError):
        if out.resolve() == path.resolve():
            return True
        if found is not None:
            info = os.stat(path)
            return (info.st_dev, info.st_ino) == (found.st_dev, found.st_ino)
    return False


# --- structure ----------------------------------------------------------------------------

def _structure(plan: Plan, layout: str, tmp: Path, out: Path, model_config: Optional[dict] = None,
               filters: Optional[Tuple[str, Optional[int]]] = None) -> Tuple[List[str], List[Optional[int]]]:
    """Create every group, attribute and (allocated, empty) dataset; return the datasets' paths
    and data offsets (None for chunked ones). A legacy file with `model_config` is a whole
    model: weights under `model_weights`."""
    with small_cache(h5py.File(tmp, "w", locking=False)) as f:
        groups = _Groups(f)
        if layout == "legacy" and model_config is not None:
            _full_model_attrs(plan, f, model_config)
            places = [f"model_weights/{place}" for place in _legacy(plan, groups, "model_weights")]
        else:
            places = _legacy(plan, groups) if layout == "legacy" else _keras3(plan, groups, out)
        make = _Datasets(groups, filters)
        return places, [make(place, step) for place, step in zip(places, plan.steps, strict=True)]


def _full_model_attrs(plan: Plan, f: h5py.File, model_config: dict) -> None:
    _version_attrs(plan, f)
    f.attrs["model_config"] = json.dumps(model_config).encode("utf-8")


def _version_attrs(plan: Plan, group: h5py.Group) -> None:
    """`keras_version` and `backend` as the legacy loaders read them. The version is never a
    Keras 1 one: tf_keras would then re-transpose kernels that are already in today's layout."""
    version = plan.target.keras_version or ""
    group.attrs["keras_version"] = version if version[:1] in ("2", "3") else "2"
    group.attrs["backend"] = plan.target.backend or "tensorflow"


def _legacy(plan: Plan, groups: "_Groups", root: str = "") -> List[str]:
    """The legacy layout below `root` (the file's root, or a whole model's `model_weights`)."""
    containers = {layer.name: layer.entry for layer in plan.target.layers}
    entries: Dict[str, List[str]] = {}
    places = []
    for step in plan.steps:
        entry = containers[step.target_layer]
        entries.setdefault(entry, []).append(step.target_name)
        places.append(f"{entry}/{step.target_name}")
    top = groups.group(root)
    _version_attrs(plan, top)
    _save_names(top, "layer_names", list(entries))
    for entry, names in entries.items():
        _save_names(groups.group(f"{root}/{entry}"), "weight_names", names)
    return places


def _keras3(plan: Plan, groups: "_Groups", out: Path) -> List[str]:
    places = []
    for step in plan.steps:
        if step.target_keras3 is None:
            raise WeightportError(out, f"the Keras 3 group of layer '{step.target_layer}' is unknown (its class is not known, or it sits in a nested model and there is no config)",
                                  "write a legacy .h5 output, or give --config")
        places.append(step.target_keras3)
    for layer in plan.target.layers:
        if layer.k3_path:
            groups.text(f"{layer.k3_path}/vars", "name", layer.name)
    groups.group("vars")
    return places


class _Groups:
    """The output's groups by path, each created once with HDF5's own call and kept: h5py's
    `require_group` asks HDF5 whether the path exists, then opens or creates it, ~1 ms a group
    for the hundreds of a many-tensor model. The file is new, so what this made is all there is;
    it also knows every tensor's path, so no path is both a group and a tensor, or two tensors."""

    _TEXT = h5py.string_dtype()  # what h5py stores a str attribute as: variable-length UTF-8

    def __init__(self, f: h5py.File) -> None:
        self.ids: Dict[str, h5py.h5g.GroupID] = {"": f.id}
        self.tensors: set = set()
        self._text = h5py.h5t.py_create(self._TEXT, logical=True), h5py.h5t.py_create(self._TEXT), h5py.h5s.create_simple(())

    def text(self, path: str, name: str, value: str) -> None:
        """A new scalar str attribute `name` of the group at `path`, stored as h5py's
        `attrs[name] = value` stores it, its HDF5 types and space made once (a Keras 3 layer's
        `name`, hundreds of them)."""
        stored, memory, space = self._text
        h5py.h5a.create(self.group_id(path), name.encode("utf-8"), stored, space).write(np.asarray(value, dtype=self._TEXT), mtype=memory)

    def group(self, path: str) -> h5py.Group:
        return h5py.Group(self.group_id(path))

    def group_id(self, path: str) -> h5py.h5g.GroupID:
        """The group at `path` (HDF5's meaning: empty and `.` parts name no group), made with its parents."""
        key = _normal(path)
        found = self.ids.get(key)
        if found is None:
            self.claim(key)
            parent, _, name = key.rpartition("/")
            found = self.ids[key] = h5py.h5g.create(self.group_id(parent), name.encode("utf-8"))
        return found

    def claim(self, path: str) -> None:
        """Refuse a second object at the same path (as HDF5 reads it)."""
        key = _normal(path)
        if key in self.tensors or key in self.ids:
            raise WeightportError(None, f"two target tensors share the path {key}", "the target has duplicate weight names")


def _normal(path: str) -> str:
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def _save_names(group: h5py.Group, name: str, values: List[str]) -> None:
    """A list-of-names attribute as Keras writes it: one attribute, or `name0`, `name1`, ...
    of fixed-length strings when it would exceed the HDF5 object-header limit."""
    encoded = [v.encode("utf-8") for v in values]
    if sum(len(v) for v in encoded) + 16 * len(encoded) < HEADER_LIMIT:
        group.attrs[name] = encoded
        return
    array = np.asarray(encoded)
    chunks = 1
    while any(c.nbytes > HEADER_LIMIT for c in np.array_split(array, chunks)):
        chunks += 1
        if chunks > len(array):
            raise WeightportError(None, f"a single name in '{name}' is longer than {HEADER_LIMIT} bytes", "shorten the layer names")
    for i, chunk in enumerate(np.array_split(array, chunks)):
        group.attrs[f"{name}{i}"] = chunk


class _Datasets:
    """Creates the output's datasets, each parent group made once and the creation properties
    and HDF5 types made once (hundreds of tensors: the per-tensor cost is what counts)."""

    def __init__(self, groups: _Groups, filters: Optional[Tuple[str, Optional[int]]] = None) -> None:
        self.groups, self.filters = groups, filters
        self.dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self.dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        self.dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        self.types: Dict[np.dtype, h5py.h5t.TypeID] = {}

    def __call__(self, place: str, step: Step) -> Optional[int]:
        """A contiguous dataset with its space allocated now and no fill, for raw writes later:
        its data offset. With `filters`, a chunked one compressed with them (byte-shuffled first:
        float bytes compress better grouped by significance), filled through h5py: None.
        Scalars and empty tensors stay contiguous."""
        key = _normal(place)
        parent, _, name = key.rpartition("/")
        group = self.groups.group_id(parent)
        self.groups.claim(key)
        self.groups.tensors.add(key)
        dtype = np.dtype(step.target_dtype).newbyteorder("<")
        shape = tuple(step.target_shape)
        if self.filters and shape and min(shape) > 0:
            chunks = piece_shape(shape, dtype.itemsize) if len(shape) > 1 else True
            h5py.Group(group).create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, shuffle=True, compression=self.filters[0],
                                             compression_opts=self.filters[1])
            return None
        space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
        if dtype not in self.types:
            self.types[dtype] = h5py.h5t.py_create(dtype, logical=True)
        return h5py.h5d.create(group, name.encode("utf-8"), self.types[dtype], space, dcpl=self.dcpl).get_offset()


# --- data ---------------------------------------------------------------------------------

def _source_tensors(views: Dict[str, ModelView]) -> Dict[Tuple[str, str], Tensor]:
    return {(file, t.path): t for file, view in views.items() for t in view.tensors}


def _sizes(plan: Plan) -> List[int]:
    """Every target tensor's size in bytes."""
    return [int(np.prod(s.target_shape, dtype=np.int64)) * np.dtype(s.target_dtype).itemsize for s in plan.steps]


def _advance(plan: Plan, progress: Optional[Callable[[int, int], None]]) -> Optional[Callable[[int], None]]:
    """`progress(bytes_written, total)` with the plan's total bound, for the writers to call."""
    if progress is None:
        return None
    total = sum(_sizes(plan))
    return lambda size: progress(size, total)


def _fill_pieces(plan: Plan, places: List[str], tmp: Path, views: Dict[str, ModelView],
                 progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Fill chunked (compressed) datasets through h5py, a piece at a time."""
    tensors, advance = _source_tensors(views), _advance(plan, progress)
    with small_cache(h5py.File(tmp, "r+", locking=False)) as f:
        for step, place in zip(plan.steps, places, strict=True):
            write_pieces(step.rule, step.params, tensors[(step.source_file, step.source_path)].storage, f[place], step.source_file, advance)


def _fill(plan: Plan, offsets: List[Optional[int]], tmp: Path, views: Dict[str, ModelView],
          progress: Optional[Callable[[int, int], None]] = None, writeback: bool = True) -> None:
    """Fill contiguous datasets with raw byte moves, a tensor at a time."""
    tensors = _source_tensors(views)
    with open_data_files(views.values()) as files, open(tmp, "rb+") as out:
        output = Output(out.fileno(), writeback, _advance(plan, progress))
        for step, offset, size in zip(plan.steps, offsets, _sizes(plan), strict=True):
            tensor = tensors[(step.source_file, step.source_path)]
            source = raw_location(tensor, files)
            dtype = np.dtype(step.target_dtype).newbyteorder("<")
            if offset is None:
                if size:
                    raise RuntimeError(f"dataset for {step.target_name} was not allocated")
                continue
            transfer(step.rule, step.params, tensor.storage, source, output, offset, dtype, step.source_file)


# --- provenance ---------------------------------------------------------------------------

def _provenance(plan: Plan, tmp: Path, source_digest: str) -> None:
    """Record who wrote the file, from what, and by which rule each tensor was made."""
    rules = [{"target": step.target_keras3 or step.target_name, "source": step.source_path, "source_file": Path(step.source_file).name,
              "rule": step.rule, "params": step.params} for step in plan.steps]
    with small_cache(h5py.File(tmp, "r+", locking=False)) as f:
        f.attrs["weightport_version"] = __version__
        f.attrs["weightport_source"] = Path(plan.source).name
        f.attrs[digests.ATTRIBUTE] = source_digest
        f.attrs["weightport_target"] = Path(plan.target.label).name
        f.attrs["weightport_rules"] = json.dumps(rules)
