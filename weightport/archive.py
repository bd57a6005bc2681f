"""Reader for `.keras` archives: a zip holding `config.json` and `model.weights.h5`.

The archive is treated as untrusted: only the expected members are opened, their flags,
methods and sizes are checked before reading, nothing is extracted beside it, and the weights
member is read in place (Keras stores it uncompressed) through a window onto the zip file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Optional, Union

from . import budgets, digests
from .config import ModelConfig, parse_model_config
from .errors import WeightportError
from .hdf5 import Image, damaged_hdf5, open_h5
from .keras3 import read_keras3
from .view import ModelView

__all__ = ["is_archive", "read_archive"]

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
METADATA_MEMBER = "metadata.json"
MAX_RATIO = 200  # a compressed member inflating more than this (plus 1 MB) is refused as a zip bomb
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)  # what reading a damaged member raises
_HINT = "save the model again with model.save('model.keras')"
# HDF5 reads the weights member's structure in thousands of small pieces (object headers, names,
# B-tree nodes): a buffer in front of the window serves most of them without a call into Python
READ_AHEAD = 64 << 10


class _Window(io.RawIOBase):
    """A read-only, seekable view of `length` bytes of `raw` starting at `start`."""

    def __init__(self, raw: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._raw, self.start, self._length, self._pos = raw, start, length, 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._length - self._pos))
        if count == 0:
            return 0
        got = os.preadv(self._raw.fileno(), [memoryview(buffer)[:count]], self.start + self._pos)  # one call, no seek
        self._pos += got
        return got


def is_archive(path: Union[str, Path]) -> bool:
    """A zip file, or a file that begins like one (a truncated archive keeps its first header)."""
    if zipfile.is_zipfile(str(path)):
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def read_archive(path: Union[str, Path], config: Optional[ModelConfig], name: str) -> ModelView:
    """Build the view of a `.keras` archive; the archive's own config gives the layer order.
    `name` opens the archive `path` was checked as (`inputs.by_descriptor`)."""
    try:
        archive = zipfile.ZipFile(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise WeightportError(path, f"damaged zip archive ({exc})", _HINT) from None
    resources = contextlib.ExitStack()  # closed here if reading fails, else by the view
    resources.callback(archive.close)
    try:
        names = set(archive.namelist())
        if WEIGHTS_MEMBER not in names:
            raise WeightportError(path, f"zip archive without {WEIGHTS_MEMBER} (not a Keras .keras file)", _HINT)
        if config is None and CONFIG_MEMBER in names:
            config = parse_model_config(_read_json_bytes(archive, CONFIG_MEMBER, path), source=f"{path} ({CONFIG_MEMBER})")
        version = _keras_version(archive, path) if METADATA_MEMBER in names else None
        fileobj = _open_weights(archive, path, name)
        resources.callback(fileobj.close)
        f = open_h5(f"{path} ({WEIGHTS_MEMBER})", fileobj)
        resources.callback(f.close)
        base = getattr(getattr(fileobj, "raw", None), "start", None)  # None: inflated, not in place
        image = Image(str(path), digests.identity(str(path), archive.fp.fileno()), base, resources)
        with damaged_hdf5(path):
            return read_keras3(f, path, image, config, layout="keras-archive", keras_version=version)
    except BaseException:
        resources.close()
        raise


def _member(archive: zipfile.ZipFile, member: str, path: Union[str, Path]) -> zipfile.ZipInfo:
    """The member's entry, once its flags, method and sizes show it can be read safely."""
    info = archive.getinfo(member)
    if info.flag_bits & 0x1:
        raise WeightportError(path, f"archive member {member} is encrypted", _HINT)
    if info.compress_type not in _METHODS:
        raise WeightportError(path, f"archive member {member} uses unknown compression method {info.compress_type}", _HINT)
    if info.header_offset + info.compress_size > os.fstat(archive.fp.fileno()).st_size:
        raise WeightportError(path, f"archive member {member} extends past the end of the archive (truncated file)", _HINT)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_RATIO * info.compress_size + (1 << 20):
        raise WeightportError(path, f"archive member {member} would inflate {info.compress_size:,} bytes to {info.file_size:,} (a zip bomb?)", _HINT)
    return info


def _read_json_bytes(archive: zipfile.ZipFile, member: str, path: Union[str, Path]) -> bytes:
    info = _member(archive, member, path)
    if info.file_size > budgets.MAX_CONFIG_BYTES:
        raise WeightportError(path, f"{member} declares {info.file_size} bytes, more than a model config can need", _HINT)
    try:
        with archive.open(info) as fh:
            data = fh.read(budgets.MAX_CONFIG_BYTES + 1)
    except _ZIP_ERRORS as exc:
        raise WeightportError(path, f"damaged archive member {member} ({exc})", _HINT) from None
    if len(data) > budgets.MAX_CONFIG_BYTES:
        raise WeightportError(path, f"{member} is larger than it declares", _HINT)
    return data


def _keras_version(archive: zipfile.ZipFile, path: Union[str, Path]) -> Optional[str]:
    data = _read_json_bytes(archive, METADATA_MEMBER, path)
    budgets.check_config_text(data, f"{path} ({METADATA_MEMBER})")
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and "\x00" not in version else None


def _open_weights(archive: zipfile.ZipFile, path: Union[str, Path], name: str) -> IO[bytes]:
    """The weights member as a seekable file: in place when stored, else inflated first."""
    info = _member(archive, WEIGHTS_MEMBER, path)
    if info.compress_type != zipfile.ZIP_STORED:
        return _inflate(archive, info, path)
    raw = open(name, "rb")
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raw.close()
        raise WeightportError(path, f"damaged zip entry for {WEIGHTS_MEMBER}", _HINT)
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if start + info.file_size > os.fstat(raw.fileno()).st_size:
        raw.close()
        raise WeightportError(path, f"{WEIGHTS_MEMBER} extends past the end of the archive (truncated file)", _HINT)
    return io.BufferedReader(_Window(raw, start, info.file_size), READ_AHEAD)


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Union[str, Path]) -> IO[bytes]:
    """A compressed weights member (Keras never writes one), inflated into an anonymous temporary
    file with its size and CRC checked on the way, so damage is refused here and not halfway
    through a conversion."""
    spool = tempfile.TemporaryFile()
    try:
        with archive.open(info) as member:
            shutil.copyfileobj(member, spool, 1 << 20)
    except _ZIP_ERRORS as exc:
        spool.close()
        raise WeightportError(path, f"damaged archive member {WEIGHTS_MEMBER} ({exc})", _HINT) from None
    spool.seek(0)
    return spool
