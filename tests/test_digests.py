"""The provenance hash: started early, right, never stale, and stopped when a conversion fails."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import pytest

import weightport
from conftest import FIXTURES
from weightport import digests

writers = importlib.import_module("weightport.writers")


def _started(path: Path) -> list:
    real = os.path.realpath(path)
    return [h for k, h in digests._pending.items() if k[0] == real]


def test_started_hash_is_taken_by_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(os.urandom(3 * digests.BLOCK_BYTES + 17))  # several blocks and a partial one
    digests.start(str(path))
    assert len(_started(path)) == 1  # a thread is on it
    assert digests.sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _started(path) == []


def test_a_file_changed_after_the_start_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(b"before")
    digests.start(str(path))
    stale = _started(path)[0]
    stale.done.wait()
    path.write_bytes(b"after, longer")  # another size (and mtime): another file as far as the hash goes
    assert digests.sha256(str(path)) == hashlib.sha256(b"after, longer").hexdigest()
    assert _started(path) == [] and stale.stop.is_set()


def test_an_error_in_the_thread_reaches_the_caller(monkeypatch, tmp_path: Path) -> None:
    def broken(path, stop=None):
        raise MemoryError("no room")

    path = tmp_path / "w.h5"
    path.write_bytes(b"x")
    monkeypatch.setattr(digests, "_file_sha256", broken)
    digests.start(str(path))
    with pytest.raises(MemoryError):
        digests.sha256(str(path))


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_start_leaves_what_is_not_a_regular_file_alone(tmp_path: Path, kind: str) -> None:
    """No thread for them (a FIFO would block it forever); the reader reports them instead."""
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    before = dict(digests._pending)
    digests.start(str(path))
    assert digests._pending == before


def test_a_failed_conversion_stops_its_hash(monkeypatch, tmp_path: Path) -> None:
    source = tmp_path / "src.keras"
    source.write_bytes((FIXTURES / "seq__k3.keras").read_bytes())
    hashes = []
    real_start = digests.start

    def start(path: str) -> None:
        real_start(path)
        hashes.extend(_started(Path(path)))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(digests, "start", start)
    monkeypatch.setattr(writers, "_fill", fail)
    with pytest.raises(weightport.WeightportError, match="no space left"):
        weightport.convert(source, tmp_path / "out.h5")
    assert hashes and all(h.stop.is_set() for h in hashes)
    assert _started(source) == []


def test_a_refused_command_line_conversion_leaves_no_hash(tmp_path: Path) -> None:
    """`main` (in-process, as tests and embedders call it) stops the hash it started when the
    conversion is refused before anything is written."""
    from weightport.cli import main

    source = tmp_path / "src.h5"
    source.write_text("not weights\n" * 1000)  # a regular file, so hashed, then refused
    assert main(["convert", str(source), "-o", str(tmp_path / "out.h5"), "--quiet"]) == 2
    assert _started(source) == []


@pytest.mark.parametrize("when, how", [("_structure", "replaced"), ("_fsync", "rewritten")])
def test_a_source_changed_during_the_conversion_is_refused(monkeypatch, tmp_path: Path, when: str, how: str) -> None:
    """A checkpoint saved again (renamed over the same name, or rewritten in place) while it is
    converted: before the bytes are copied, or after. The output would not match the recorded
    SHA-256, so nothing is written and the file is named."""
    source, other = tmp_path / "src.keras", tmp_path / "other.keras"
    source.write_bytes((FIXTURES / "seq__k3.keras").read_bytes())
    other.write_bytes((FIXTURES / "seq__k3.keras").read_bytes() + b"\0")
    real = getattr(writers, when)

    def then_change(*args, **kwargs):
        result = real(*args, **kwargs)
        if how == "replaced":
            os.replace(other, source)
        else:
            with open(source, "ab") as fh:
                fh.write(b"\0")
        return result

    monkeypatch.setattr(writers, when, then_change)
    out = tmp_path / "out.h5"
    with pytest.raises(weightport.WeightportError, match="src.keras: changed while being converted"):
        weightport.convert(source, out)
    assert not [path for path in tmp_path.iterdir() if "out.h5" in path.name]  # no output, no temporary
