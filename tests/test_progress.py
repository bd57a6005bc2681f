"""Progress bars: on a terminal for long work (tqdm), never in pipes."""

from __future__ import annotations

import fcntl
import importlib
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

from conftest import FIXTURES, ROOT, cli_command

progress = importlib.import_module("weightport.progress")


def test_a_long_conversion_on_a_terminal_draws_a_byte_bar(monkeypatch, capsys, tmp_path: Path) -> None:
    """A byte bar named after the output (the size threshold lowered, stderr taken for a
    terminal); that it is told every byte is tests/test_transfer.py's."""
    from weightport.cli import main

    monkeypatch.setattr(progress, "_terminal", lambda: True)
    monkeypatch.setattr(progress, "LONG_WORK_BYTES", 0)
    assert main(["convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "bar.h5")]) == 0
    drawn = capsys.readouterr().err
    assert "bar.h5:" in drawn and "B/s" in drawn


def test_a_sweep_on_a_real_terminal_draws_a_file_bar(tmp_path: Path) -> None:
    """`convert A B --out-dir DIR` with stderr on a pseudo-terminal: a bar over the files."""
    sources = [FIXTURES / "seq__k3.keras", FIXTURES / "seq__tfk.h5"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal has a size
    try:
        done = subprocess.run(**cli_command("convert", *map(str, sources), "--out-dir", str(tmp_path), keras_load=False), stdout=subprocess.DEVNULL,
                              stderr=follower, cwd=ROOT, timeout=300)
        os.close(follower)
        drawn = b""
        while chunk := _read(leader):
            drawn += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"converting" in drawn and b"2/2" in drawn


def test_no_bar_in_a_pipe(tmp_path: Path) -> None:
    done = subprocess.run(**cli_command("convert", str(FIXTURES / "seq__k3.keras"), "seq__tfk.h5", "--out-dir", str(tmp_path), keras_load=False),
                          capture_output=True, text=True, cwd=FIXTURES, timeout=300)
    assert done.returncode == 0 and "converting" not in done.stderr and "%|" not in done.stderr


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed: all was read
        return b""
