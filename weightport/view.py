"""The ordered, lazy view of a weights file that every later stage works from.

Readers turn each on-disk layout (Keras 1/2 legacy `.h5`, Keras 3 `.weights.h5`, `.keras`
archives) into this one shape, so the planner never needs to know which layout it reads.
Tensors hold an h5py dataset, not an array: building the view reads no tensor data.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["Tensor", "Layer", "ModelView"]


class Tensor:
    """One weight of a layer: what is asked of it many times over (shape, dtype, where its bytes
    lie) read from HDF5 once, and its dataset opened only when its values are read (`dataset`).
    A view keeps no dataset open: HDF5 holds ~11 KiB for each open one, which a model of
    hundreds of tensors, read twice by a checked conversion, turns into megabytes."""

    __slots__ = ("name", "role", "path", "shape", "dtype", "size", "offset", "k3_var", "_file", "_name")

    def __init__(self, name: str, role: Optional[str], path: str, dataset: h5py.Dataset, k3_var: Optional[str] = None) -> None:
        self.name = name  # the name as stored (`dense_1/kernel:0`, `dense_1_W`, `0`)
        self.role = role  # what it is for the layer (`kernel`, `bias`, `gamma` ...), None if unknown
        self.path = path  # absolute HDF5 path of the dataset inside its file
        self.k3_var = k3_var  # where Keras 3 keeps it below its layer's group (`vars/0`, `forward_layer/cell/vars/0`); None: unknown
        dsid = dataset.id
        self.shape: Tuple[int, ...] = tuple(int(n) for n in dsid.shape)
        self.dtype: np.dtype = dsid.dtype
        self.size = math.prod(self.shape)
        offset = dsid.get_offset()  # None unless stored contiguous
        # where its bytes start in the HDF5 image when they lie there in place, as Keras writes them
        self.offset: Optional[int] = offset if offset is not None and dsid.get_storage_size() == self.size * self.dtype.itemsize else None
        self._file, self._name = h5py.h5i.get_file_id(dsid), h5py.h5i.get_name(dsid)

    @property
    def dataset(self) -> h5py.Dataset:
        """The HDF5 dataset, opened again on each call (by the path it was opened by, in the same
        open file); it closes when the caller lets it go."""
        return h5py.Dataset(h5py.h5d.open(self._file, self._name), readonly=True)

    def read(self) -> np.ndarray:
        """The whole tensor; callers that stream use `dataset` slices instead."""
        return self.dataset[()]

    def __repr__(self) -> str:
        return f"Tensor(name={self.name!r}, role={self.role!r}, path={self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "path": self.path,
        }


@dataclass
class Layer:
    """A weighted layer in model order, with what the config says about it."""

    name: str
    class_name: Optional[str]
    weights: List[Tensor]
    group: str  # HDF5 group that holds the layer's datasets
    container: Optional[str] = None  # the nested model it sits in, if any
    data_format: Optional[str] = None  # channels_last / channels_first, from the config
    inbound: List[str] = field(default_factory=list)  # names of the layers that feed it
    fed_by: List[str] = field(default_factory=list)  # weightless classes between it and its producer
    config: Optional[Dict[str, Any]] = field(default=None, repr=False)
    wrapped: Optional[str] = None  # what a wrapper holds: `LSTM` in Bidirectional(LSTM)
    order_known: bool = True  # False: tensors kept in sub-objects weightport does not know, in an assumed order

    @property
    def display_class(self) -> Optional[str]:
        """`Bidirectional(LSTM)` for a wrapper, else the class."""
        return f"{self.class_name}({self.wrapped})" if self.class_name and self.wrapped else self.class_name

    @property
    def params(self) -> int:
        return sum(t.size for t in self.weights)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "class": self.class_name,
            "wrapped": self.wrapped,
            "weights": [t.to_dict() for t in self.weights],
            "params": self.params,
            "group": self.group,
            "container": self.container,
            "data_format": self.data_format,
            "inbound": self.inbound,
            "fed_by": self.fed_by,
        }


@dataclass
class ModelView:
    """Every weighted layer of one file, in model order, plus file-level facts."""

    path: str
    layout: str  # legacy-h5, keras3-weights-h5 or keras-archive
    kind: str  # full-model or weights-only
    layers: List[Layer]
    order: str  # where the layer order comes from
    order_note: str  # why that order is trusted (or what it assumes)
    keras_version: Optional[str] = None
    backend: Optional[str] = None
    input_shape: Optional[List[Optional[int]]] = None
    model_class: Optional[str] = None
    config: Optional["ModelConfig"] = field(default=None, repr=False)
    data_file: Optional[str] = None  # the file on disk whose bytes the datasets live in
    data_base: Optional[int] = 0  # where the HDF5 image starts in it (a .keras member); None: not in place
    data_identity: Optional[tuple] = None  # that file as it was opened (digests.identity): a replaced or rewritten file is noticed
    _resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def tensors(self) -> List[Tensor]:
        return [t for layer in self.layers for t in layer.weights]

    def close(self) -> None:
        """Close the files the lazy tensors read from."""
        self._resources.close()

    def __enter__(self) -> "ModelView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> Dict[str, Any]:
        """The documented, stable JSON form (see README, `inspect --json`)."""
        return {
            "file": self.path,
            "layout": self.layout,
            "kind": self.kind,
            "keras_version": self.keras_version,
            "backend": self.backend,
            "model_class": self.model_class,
            "input_shape": self.input_shape,
            "order": {"source": self.order, "note": self.order_note},
            "layers": [layer.to_dict() for layer in self.layers],
            "total_layers": len(self.layers),
            "total_tensors": len(self.tensors),
            "total_params": self.params,
        }
