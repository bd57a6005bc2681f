"""The provenance hash: started early, right, and never stale."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from weightport import digests


def test_started_hash_is_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(os.urandom(3 * digests.BLOCK_BYTES + 17))  # several blocks and a partial one
    digests.start(str(path))
    assert digests.sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_changed_after_the_start_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(b"before")
    digests.start(str(path))
    digests._pending[digests._key(str(path), path.stat())].done.wait()
    path.write_bytes(b"after, longer")  # another size (and mtime): another file as far as the hash goes
    assert digests.sha256(str(path)) == hashlib.sha256(b"after, longer").hexdigest()


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
