"""The ordered, lazy view of a weights file that every later stage works from.

Readers turn each on-disk layout (Keras 1/2 legacy `.h5`, Keras 3 `.weights.h5`, `.keras`
archives, PyTorch state dicts: `statedict.read_view`) into this one shape, so the planner never
needs to know which layout it reads; `framework` says whose tensor layouts it holds.
Tensors hold a `Storage` (where their values lie), not an array: building the view reads no
tensor data.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from .storage import Storage

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["Tensor", "Layer", "ModelView"]


class Tensor:
    """One weight of a layer: its names and role, and its `storage` (where its values lie and how
    to read them), from which its shape, dtype and size are kept as plain attributes (asked many
    times over, for hundreds of tensors)."""

    __slots__ = ("name", "role", "path", "storage", "shape", "dtype", "size", "k3_var")

    def __init__(self, name: str, role: Optional[str], path: str, storage: Storage, k3_var: Optional[str] = None) -> None:
        self.name = name  # the name as stored (`dense_1/kernel:0`, `dense_1_W`, `0`)
        self.role = role  # what it is for the layer (`kernel`, `bias`, `gamma` ...), None if unknown
        self.path = path  # where it is in its file (the absolute HDF5 path of its dataset)
        self.k3_var = k3_var  # where Keras 3 keeps it below its layer's group (`vars/0`, `forward_layer/cell/vars/0`); None: unknown
        self.storage = storage
        self.shape: Tuple[int, ...] = storage.shape
        self.dtype: np.dtype = storage.dtype
        self.size: int = storage.size

    @property
    def dataset(self) -> Any:
        """The h5py dataset of a tensor stored in HDF5 (`hdf5.HDF5Storage`), opened again on each
        call: for looking at how it is stored (chunks, compression); values are read through `storage`."""
        return self.storage.dataset  # type: ignore[attr-defined]

    def read(self) -> np.ndarray:
        """The whole tensor."""
        return self.storage.read()

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
    layout: str  # legacy-h5, keras3-weights-h5, keras-archive or safetensors
    kind: str  # full-model or weights-only
    layers: List[Layer]
    order: str  # where the layer order comes from
    order_note: str  # why that order is trusted (or what it assumes)
    keras_version: Optional[str] = None
    backend: Optional[str] = None
    input_shape: Optional[List[Optional[int]]] = None
    model_class: Optional[str] = None
    config: Optional["ModelConfig"] = field(default=None, repr=False)
    data_file: Optional[str] = None  # the file on disk the reader read (the source's digest is its digest)
    data_identity: Optional[tuple] = None  # that file as it was opened (digests.identity): a replaced or rewritten file is noticed
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)  # what the tensors read through, closed with the view
    recorded_digests: Dict[str, str] = field(default_factory=dict)  # the source digests weightport recorded in the file (digests.RECORDED), if it wrote it
    framework: str = "keras"  # whose layouts the tensors are in: keras, or torch (a PyTorch state dict: Linear weight (out, in), conv (out, in, *k))
    notes: List[str] = field(default_factory=list)  # what the reader left out or assumed beyond the order (num_batches_tracked ignored ...)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def tensors(self) -> List[Tensor]:
        return [t for layer in self.layers for t in layer.weights]

    def close(self) -> None:
        """Close the files the lazy tensors read from."""
        self.resources.close()

    def __enter__(self) -> "ModelView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> Dict[str, Any]:
        """The documented, stable JSON form (see README, `inspect --json`)."""
        return {
            "file": self.path,
            "layout": self.layout,
            "framework": self.framework,
            "kind": self.kind,
            "keras_version": self.keras_version,
            "backend": self.backend,
            "model_class": self.model_class,
            "input_shape": self.input_shape,
            "order": {"source": self.order, "note": self.order_note},
            "notes": self.notes,
            "layers": [layer.to_dict() for layer in self.layers],
            "total_layers": len(self.layers),
            "total_tensors": len(self.tensors),
            "total_params": self.params,
        }
