"""Opening HDF5 weight files safely and reading Keras's string attributes.

Keras has stored `layer_names`/`weight_names` as fixed-length bytes, variable-length str,
empty float64 arrays, and split into `name0`, `name1`, ... past the 64 KB header limit.
This module turns all of those into a plain list of str, and turns every way a file can
fail to open into one clear `WeightportError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, IO, List, Optional, Union

import h5py
import numpy as np

from .errors import WeightportError

__all__ = ["open_h5", "check_readable", "str_list_attr", "str_attr", "has_attr"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_readable(path: Union[str, Path]) -> None:
    """Refuse a missing path, a directory or an empty file with a message saying which."""
    p = Path(path)
    if not p.exists():
        raise WeightportError(path, "no such file", "check the path")
    if p.is_dir():
        raise WeightportError(path, "is a directory, not a weights file", "give the .h5, .weights.h5 or .keras file inside it")
    if not os.access(p, os.R_OK):
        raise WeightportError(path, "permission denied", "make the file readable")
    if p.stat().st_size == 0:
        raise WeightportError(path, "empty file (0 bytes)", "the file was not written completely; save the weights again")


def open_h5(path: Union[str, Path], fileobj: Optional[IO[bytes]] = None) -> h5py.File:
    """Open an HDF5 file read-only, or explain in one line why it is not one."""
    if fileobj is None:
        check_readable(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head != _HDF5_SIGNATURE and not h5py.is_hdf5(str(path)):
            raise WeightportError(path, "not an HDF5 file", "give a Keras weights file (.h5, .hdf5, .weights.h5) or a .keras archive")
    try:
        return h5py.File(fileobj if fileobj is not None else str(path), "r")
    except (OSError, ValueError) as exc:
        reason = str(exc).split("(")[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise WeightportError(path, f"damaged HDF5 file, cannot be opened ({reason})", "the file may be truncated; save or download it again") from None


def has_attr(obj: Union[h5py.Group, h5py.Dataset], name: str) -> bool:
    """True when `name` or its chunked form `name0` is present."""
    return name in obj.attrs or f"{name}0" in obj.attrs


def _decode(item: Any) -> str:
    if isinstance(item, (bytes, np.bytes_)):
        return bytes(item).decode("utf-8")
    if isinstance(item, str):
        return item
    raise TypeError(f"{type(item).__name__} is not a string")


def str_list_attr(obj: Union[h5py.Group, h5py.Dataset], name: str, file: Union[str, Path]) -> List[str]:
    """A list-of-strings attribute in any form Keras ever wrote (absent -> [])."""
    try:
        if name in obj.attrs:
            chunks = [obj.attrs[name]]
        else:
            chunks = []
            while f"{name}{len(chunks)}" in obj.attrs:
                chunks.append(obj.attrs[f"{name}{len(chunks)}"])
        values: List[str] = []
        for chunk in chunks:
            array = np.asarray(chunk)
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
