"""One entry point that reads any supported weights file into a `ModelView`.

Dispatch is by content, not by suffix (a `.weights.h5` renamed to `.h5` still reads), so a
file is read the same way whatever it is called.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Union

from . import arguments, budgets, digests
from .archive import is_archive, read_archive
from .config import ModelConfig, load_config_file
from .errors import WeightportError, speaks_api
from .hdf5 import Image, damaged_hdf5, open_h5
from .inputs import by_descriptor, open_input
from .keras3 import is_keras3, read_keras3
from .legacy import is_legacy, read_legacy
from .safetensors import looks_like_safetensors, read_safetensors
from .torchfile import read_torch, sniff
from .view import ModelView

__all__ = ["read"]

PathLike = Union[str, Path]


@speaks_api
def read(path: PathLike, config: Optional[Union[PathLike, ModelConfig]] = None) -> ModelView:
    """Read a Keras weights file into an ordered, lazy view of its weighted layers.

    Args:
        path: a legacy `.h5`/`.hdf5` (Keras 1, 2 or 3), a Keras 3 `.weights.h5`, a `.keras` archive,
            or a PyTorch state dict: a `.safetensors` file (modules as layers, `framework` "torch"), or one saved by
            `torch.save` (`.pth`, `.pt`, `.bin`), read without torch.
        config: a sidecar JSON config (`model.to_json()`), as a path or a parsed `ModelConfig`;
            it overrides a config stored in the file.

    Returns:
        A `ModelView`; use it as a context manager so the file is closed after use.

    Example:
        >>> with read("vgg16.weights.h5") as view:  # doctest: +SKIP
        ...     print([layer.name for layer in view.layers])
    """
    path = arguments.path("path", path)
    if config is not None and not isinstance(config, ModelConfig):
        config = load_config_file(arguments.path("config", config))
    fd = open_input(path)  # checked once; every later open goes through this descriptor
    try:
        budgets.check_allocated(path, fd)
        state_dict = "safetensors" if looks_like_safetensors(path, fd) else sniff(fd)
        if state_dict is not None:  # a PyTorch state dict (.safetensors, or a torch.save checkpoint): read without torch
            if config is not None:  # a Keras config names no module of a state dict: refused, not ignored
                raise WeightportError(path, f"a {'safetensors file' if state_dict == 'safetensors' else 'PyTorch checkpoint'} (a PyTorch state dict) "
                                            "takes no Keras model config", "leave out --config")
            return read_safetensors(path, fd) if state_dict == "safetensors" else read_torch(path, fd, state_dict)
        name = by_descriptor(path, fd)
        if is_archive(name):
            return read_archive(path, config, name)
        f = open_h5(path, fd)
    finally:
        os.close(fd)
    resources = contextlib.ExitStack()  # closed here if reading fails, else by the view
    resources.callback(f.close)
    try:
        image = Image(str(path), digests.identity(str(path), f.id.get_vfd_handle()), 0, resources)
        with damaged_hdf5(path):
            return _read_h5(f, path, image, config)
    except BaseException:
        resources.close()
        raise


def _read_h5(f, path: PathLike, image: Image, config: Optional[ModelConfig]) -> ModelView:
    if is_legacy(f, path):
        view = read_legacy(f, path, image, config)
    elif is_keras3(f, path):
        view = read_keras3(f, path, image, config)
    else:
        raise WeightportError(path, "HDF5 file, but not a Keras weights file (no layer_names attribute, model_weights or layers group)",
                              "give a file written by save_weights, model.save or a .keras archive")
    if not view.layers:
        raise WeightportError(path, "Keras weights file with no weights in it", "check that the model was built before it was saved")
    return view
