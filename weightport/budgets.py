"""How much weightport will read, parse, inflate or walk, tied to what the input really holds.

A small hostile file can declare a great deal: a config that inflates to millions of JSON
values, a file 20 GB long that is all holes, a tensor of 37 GB whose bytes were never written, a
compressed chunk that inflates a thousandfold, `vars/20000000` beside `vars/0`, 400,000 entries
in `layer_names`. Each check here compares what is declared with what is there (bytes allocated
on disk, bytes stored for a dataset, links present in a group) or with a generous ceiling far above
any real Keras model, and refuses before the work is done, with one line saying which limit.
The limits are module constants, so a test (or a user with a truly huge model) can see them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .errors import WeightportError

if TYPE_CHECKING:  # h5py is imported where a dataset is checked: `digests` uses `hollow` before h5py is loaded
    import h5py

__all__ = ["check_allocated", "hollow", "read_limited", "check_config_text", "check_name_count", "check_layer_count", "check_state_dict", "check_nesting", "check_names", "vars_keys", "check_stored"]

PathLike = Union[str, Path]
_HINT_DAMAGED = "the file is damaged or was not written by Keras; save or download it again"

# A file may be sparse (its zeros left as holes) or sit on a compressing file system, but its
# length may not exceed this many times the bytes it has on disk, plus the slack (small files
# kept inside the inode report no blocks at all).
MAX_HOLLOW_RATIO = 16
HOLLOW_SLACK = 16 << 20
# Model configs: the largest Keras applications (NASNetLarge, EfficientNetV2L: ~1,000 layers)
# write ~1 MB and ~65,000 JSON values; these ceilings are 16 times that.
MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_VALUES = 1_000_000
# Layers of a model (`layer_names` entries, config layers; weightless ones too): the largest Keras
# applications have ~1,000; each costs ~0.1 ms to walk, plan and rewrite, so this many take about a second.
MAX_LAYERS = 4_000
# Tensors of a state dict (a PyTorch file lists each module's weight, bias, running statistics
# and counter): five for each of `MAX_LAYERS` modules.
MAX_TENSORS = 5 * MAX_LAYERS
# A state-dict key (`model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_q.weight`
# is 80): a 16 MB key of a million dotted parts costs seconds and gigabytes to order and print.
MAX_KEY_CHARS = 1_000
# Axes of a tensor: a weight has at most 5 (a Conv3d's); HDF5 allows 32, numpy 64, a safetensors
# header any number (a shape of 100 ones passes every byte check and then breaks numpy).
MAX_DIMS = 32
# Groups below a Keras 3 file's root: a layer of a model nested in a model nested in ... sits a few
# levels deeper per model (`layers/functional/layers/dense/vars`); no real file nests this deep.
MAX_NESTING = 64
# Compressed tensors: the declared bytes may exceed the stored ones by this factor (float weights
# compress ~1.1x; an all-zero vector much more, which the slack allows), and one chunk, which is
# inflated whole every time any part of it is read, may hold at most this many bytes.
MAX_INFLATION = 100
INFLATION_SLACK = 1 << 20
MAX_CHUNK_BYTES = 16 << 20


def _size(n: int) -> str:
    """Bytes the way a person reads them: 21,474,836,480 -> '20.0 GiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def hollow(info: os.stat_result) -> bool:
    """Whether a file is longer than its bytes on disk can justify (mostly holes)."""
    allocated = getattr(info, "st_blocks", None)
    if allocated is None:  # no block count on this system: nothing to compare
        return False
    return info.st_size > MAX_HOLLOW_RATIO * allocated * 512 + HOLLOW_SLACK


def check_allocated(path: PathLike, fd: int) -> None:
    """Refuse a file (open as `fd`) whose length is mostly holes: reading (and hashing) it would
    spend seconds per gigabyte on zeros that were never written, whatever tensors it declares there."""
    info = os.fstat(fd)
    if hollow(info):
        raise WeightportError(path, f"{_size(info.st_size)} long but only {_size(info.st_blocks * 512)} stored on disk (a sparse file, mostly holes)",
                              "a weights file has no holes; save or download it again")


def read_limited(fh: IO[bytes], path: PathLike, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """At most `limit` bytes of an open config file, refusing one that holds more (`/dev/zero`,
    a huge file) after reading only one byte past the limit."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise WeightportError(path, f"config larger than {_size(limit)}, more than any model's config", "give the output of model.to_json()")
    return data


def check_config_text(text: Union[str, bytes], source: PathLike, what: str = "model config", hint: str = "give the output of model.to_json()",
                      limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse config text (or another JSON document, `what`) too large, or holding too many JSON
    values, to parse into memory: the count is bounded from above by the commas and brackets,
    found without parsing (a 62 MB `[{},{},...]` would make ~20 million Python objects)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise WeightportError(source, f"{what} of {_size(len(text))}, more than any model's ({_size(MAX_CONFIG_BYTES)})", hint)
    marks = (",", "[", "{") if isinstance(text, str) else (b",", b"[", b"{")
    values = sum(text.count(mark) for mark in marks)  # type: ignore[arg-type]
    if values > limit:
        raise WeightportError(source, f"{what} holds up to {values:,} JSON values, more than any model's ({limit:,})", hint)


def check_name_count(count: int, group: "h5py.Group", what: str, path: PathLike) -> None:
    """A list of names (`layer_names`, `weight_names`) no longer than `MAX_LAYERS`, checked
    before its names are decoded."""
    if count > MAX_LAYERS:
        raise WeightportError(path, f"{what} of '{group.name}' lists {count:,} names, more than any model has layers ({MAX_LAYERS:,})", _HINT_DAMAGED)


def check_nesting(depth: int, group: "h5py.Group", path: PathLike) -> None:
    """Groups nested no deeper than `MAX_NESTING` (checked as the walk goes down, so a chain of
    thousands of groups is refused at its 65th level, not walked to its end)."""
    if depth > MAX_NESTING:
        raise WeightportError(path, f"groups nest more than {MAX_NESTING} deep below '{group.name[:60]}...'", _HINT_DAMAGED)


def check_layer_count(count: int, source: PathLike) -> None:
    """A model config of no more than `MAX_LAYERS` layers (nested models' counted in)."""
    if count > MAX_LAYERS:
        raise WeightportError(source, f"model config of {count:,} layers, more than any model has ({MAX_LAYERS:,})", "give the output of model.to_json()")


def check_state_dict(path: PathLike, tensors: int = 0, modules: int = 0, longest: int = 0) -> None:
    """A state dict of no more than `MAX_TENSORS` tensors, in no more than `MAX_LAYERS` modules
    (each module is a layer to pair, plan and write), whose longest key has no more than `MAX_KEY_CHARS`."""
    if longest > MAX_KEY_CHARS:
        raise WeightportError(path, f"names a tensor with a key of {longest:,} characters, more than any model's ({MAX_KEY_CHARS:,})",
                              "the file is damaged or was not written from a model's state_dict(); save or download it again")
    if tensors > MAX_TENSORS:
        raise WeightportError(path, f"declares {tensors:,} tensors, more than weightport converts ({MAX_TENSORS:,}: five for each of {MAX_LAYERS:,} layers)",
                              "convert a model of fewer layers, or a part of the state dict saved on its own")
    if modules > MAX_LAYERS:
        raise WeightportError(path, f"holds the tensors of {modules:,} modules, more than weightport converts ({MAX_LAYERS:,} layers)",
                              "convert a model of fewer layers, or a part of the state dict saved on its own")


def check_names(names: Sequence[str], group: "h5py.Group", what: str, path: PathLike) -> None:
    """A list of member names that can be walked: each listed once (a name listed 400,000 times
    would be looked up 400,000 times), so each names an object of its own and walking them
    costs what the file holds."""
    if len(set(names)) != len(names):
        seen = set()
        twice = next(n for n in names if n in seen or seen.add(n))
        raise WeightportError(path, f"{what} of '{group.name}' lists {twice!r} more than once", _HINT_DAMAGED)


def vars_keys(keys: Sequence[str], group: str, path: PathLike) -> List[str]:
    """The dataset names of a Keras 3 `vars` group in variable order, once they are exactly
    `0`, `1`, ... `n-1`: plain ASCII decimals without leading zeros (`00` is not `0`, `²` is not
    a number), none missing. Checked in the keys' own number, never a range of the largest."""
    odd = sorted(k for k in keys if not (k.isascii() and k.isdigit() and (k == "0" or not k.startswith("0"))))
    if odd:
        raise WeightportError(path, f"'{group}' holds datasets not named 0, 1, ... ({', '.join(map(repr, odd[:4]))})", _HINT_DAMAGED)
    ordered = sorted(keys, key=int)
    missing: List[int] = []
    expected = 0
    for key in ordered:
        missing.extend(range(expected, min(int(key), expected + 6 - len(missing))))
        expected = int(key) + 1
        if len(missing) >= 6:
            break
    if missing:  # Keras numbers a layer's variables 0, 1, ... without gaps
        raise WeightportError(path, f"'{group}' holds tensors {', '.join(ordered[:6])}{' ...' if len(ordered) > 6 else ''} but not {', '.join(map(str, missing))}",
                              "a tensor is missing: the file is damaged; save the weights again")
    return ordered


def check_stored(dataset: "h5py.Dataset", declared: int, path: PathLike, plist: "h5py.h5p.PropDCID", shape: Tuple[int, ...]) -> None:
    """Refuse a tensor whose stored bytes cannot be its declared values: one with a zero-length
    axis (no Keras variable is empty), and a chunked one with chunks never written (HDF5 would
    hand back its fill value, as many bytes as declared, from nothing), compressed beyond
    `MAX_INFLATION`, or in compressed chunks larger than `MAX_CHUNK_BYTES`. `plist` and `shape`
    are the dataset's creation property list and shape, which the caller has read already (for
    each of hundreds of tensors, read once); its name is asked of HDF5 only for a message."""
    import h5py

    if 0 in shape:
        raise WeightportError(path, f"tensor {dataset.name} has shape {'x'.join(map(str, shape))}: no values (a Keras variable is never empty)", _HINT_DAMAGED)
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return
    name = dataset.name
    chunk = tuple(int(n) for n in plist.get_chunk())
    expected = math.prod(-(-n // c) for n, c in zip(shape, chunk))
    stored, written = dataset.id.get_storage_size(), dataset.id.get_num_chunks()
    if written < expected:
        raise WeightportError(path, f"tensor {name} has {written:,} of its {expected:,} chunks stored: the rest were never written", _HINT_DAMAGED)
    if plist.get_nfilters() == 0:
        return
    chunk_bytes = math.prod(chunk) * dataset.dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise WeightportError(path, f"tensor {name} is stored in compressed chunks of {_size(chunk_bytes)}, more than weightport inflates at once ({_size(MAX_CHUNK_BYTES)})",
                              "store it uncompressed (h5repack -l CONTI) or save the weights again with Keras")
    if declared > MAX_INFLATION * stored + INFLATION_SLACK:
        raise WeightportError(path, f"tensor {name} declares {_size(declared)} stored in {_size(stored)}, compressed more than {MAX_INFLATION}x",
                              _HINT_DAMAGED)
