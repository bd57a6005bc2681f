"""The provenance hash: started early, right, never stale, stopped when a conversion fails, and
checked by `verify`."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import blake3
import h5py
import pytest

import weightport
from conftest import FIXTURES, run_cli
from weightport import digests

writers = importlib.import_module("weightport.writers")


def _started(path: Path) -> list:
    real = os.path.realpath(path)
    return [h for k, h in digests._pending.items() if k[0] == real]


def test_started_hash_is_taken_by_source_digest(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(os.urandom(3 * digests.BLOCK_BYTES + 17))  # several blocks and a partial one
    digests.start(str(path))
    assert len(_started(path)) == 1  # a thread is on it
    assert digests.source_digest(str(path)) == blake3.blake3(path.read_bytes()).hexdigest()
    assert _started(path) == []
    assert digests.file_digest(str(path), "weightport_source_sha256") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_changed_after_the_start_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(b"before")
    digests.start(str(path))
    stale = _started(path)[0]
    stale.done.wait()
    path.write_bytes(b"after, longer")  # another size (and mtime): another file as far as the hash goes
    assert digests.source_digest(str(path)) == blake3.blake3(b"after, longer").hexdigest()
    assert _started(path) == [] and stale.stop.is_set()


def test_an_error_in_the_thread_reaches_the_caller(monkeypatch, tmp_path: Path) -> None:
    def broken(path, attribute=None, stop=None):
        raise MemoryError("no room")

    path = tmp_path / "w.h5"
    path.write_bytes(b"x")
    monkeypatch.setattr(digests, "file_digest", broken)
    digests.start(str(path))
    with pytest.raises(MemoryError):
        digests.source_digest(str(path))


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


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_verify_checks_the_recorded_source_digest(tmp_path: Path, suffix: str) -> None:
    """`verify SRC OUT` recomputes SRC's BLAKE3 and compares it with the one OUT records: the
    right source passes; another file with the very same weights (so every numeric check
    passes) fails, exit 1, both digests shown."""
    source, twin = tmp_path / "src.keras", tmp_path / "twin.keras"
    source.write_bytes((FIXTURES / "seq__k3.keras").read_bytes())
    twin.write_bytes(source.read_bytes() + b"\0")  # the same archive, one byte longer: other bytes, same weights
    out = tmp_path / f"out{suffix}"
    weightport.convert(source, out)
    right = run_cli("verify", str(source), str(out))
    expected = blake3.blake3(source.read_bytes()).hexdigest()
    assert right.returncode == 0 and f"source blake3: {expected}, as OUT records" in right.stdout, right.stdout
    wrong = run_cli("verify", str(twin), str(out), "--json")
    doc = json.loads(wrong.stdout)
    assert wrong.returncode == 1 and not doc["ok"] and all(p["ok"] for p in doc["pairs"])
    assert doc["source_digest"] == {"attribute": "weightport_source_blake3", "recorded": expected,
                                    "actual": blake3.blake3(twin.read_bytes()).hexdigest(), "ok": False}


def test_verify_checks_an_older_outputs_sha256_and_passes_an_output_without_one(tmp_path: Path) -> None:
    """Outputs of earlier weightport versions record SHA-256: checked by that algorithm. A file
    with no record (written by Keras, say) is verified on its numbers alone."""
    source, out = FIXTURES / "seq__k3.keras", tmp_path / "out.h5"
    weightport.convert(source, out)
    with h5py.File(out, "r+") as f:
        del f.attrs["weightport_source_blake3"]
        f.attrs["weightport_source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    result = weightport.verify(source, out)
    assert result.ok and result.digest.attribute == "weightport_source_sha256" and result.digest.ok
    with h5py.File(out, "r+") as f:
        f.attrs["weightport_source_sha256"] = "0" * 64
    assert not weightport.verify(source, out).ok
    with h5py.File(out, "r+") as f:
        del f.attrs["weightport_source_sha256"]
    result = weightport.verify(source, out)
    assert result.ok and result.digest is None
