"""Faults: a killed or interrupted run, a full disk, racing runs. The destination is either
absent, the previous file intact, or a complete new file; never a partial one."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

import weightport
from conftest import FIXTURES, ROOT, run_cli, wait_until, without_root_powers
from weightport.cli import main


def _popen(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "weightport", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def _kill_when_writing(proc: subprocess.Popen, folder: Path, sig: int) -> None:
    """Send `sig` as soon as the run's temporary file exists (it is then mid-write)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(".weightport-" in p.name for p in folder.iterdir()):
            time.sleep(0.05)
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    proc.communicate(timeout=60)


def _temporaries(folder: Path) -> list:
    return [p for p in folder.iterdir() if ".weightport-" in p.name]


@pytest.mark.parametrize("previous", [None, b"the previous output"])
def test_sigkill_leaves_destination_absent_or_intact(big_source: Path, tmp_path: Path, previous) -> None:
    out = tmp_path / "fcn.h5"
    if previous is not None:
        out.write_bytes(previous)
    proc = _popen("convert", str(big_source), "--flatten", "7,7,64", "-o", str(out), "--force", "--no-verify")
    _kill_when_writing(proc, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert (out.read_bytes() == previous) if previous is not None else not out.exists()
    assert _temporaries(tmp_path), "the killed run's temporary file should be left, recognisable"
    result = run_cli("convert", str(big_source), "--flatten", "7,7,64", "-o", str(out), "--force", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert not _temporaries(tmp_path), "the next run removes what a killed run left"
    assert run_cli("verify", str(big_source), str(out), "--flatten", "7,7,64").returncode == 0


def test_ctrl_c_removes_the_temporary(big_source: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-write: exit 130, no OUT, no temporary. A run that finished before the signal
    landed (a fast machine) must have written a right OUT; then it is tried again, and one of
    three tries must be caught mid-write."""
    out = tmp_path / "fcn.weights.h5"
    for _ in range(3):
        proc = _popen("convert", str(big_source), "--flatten", "7,7,64", "-o", str(out), "--no-verify", "--force")
        _kill_when_writing(proc, tmp_path, signal.SIGINT)
        if proc.returncode != 0:
            break
        assert run_cli("verify", str(big_source), str(out), "--flatten", "7,7,64").returncode == 0
        out.unlink()
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert not out.exists() and not _temporaries(tmp_path)


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_file_size_limit_gives_a_clear_error_and_no_file(tmp_path: Path) -> None:
    out = tmp_path / "fcn.h5"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "weightport", "convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out)],
                            capture_output=True, text=True, env=env, preexec_fn=_limit_file_size(8192), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"weightport: error: {out}: cannot write the output") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_filesystem_gives_a_clear_error(tmp_path: Path) -> None:
    """A real small filesystem (a 16 KiB tmpfs) that the ~30 KB output cannot fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs (the file-size-limit test covers the same path)")
    try:
        out = mount / "fcn.h5"
        result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"weightport: error: {out}: cannot write the output: no space left on the device")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_racing_conversions_end_with_one_complete_file(tmp_path: Path) -> None:
    out = tmp_path / "fcn.h5"
    procs = [_popen("convert", str(FIXTURES / source), "-o", str(out), "--force", "--no-verify")
             for source in ("seq__k3.keras", "seq__tfk.h5", "seq__k3.h5", "seq__k3.keras")]
    codes = [p.wait(timeout=120) for p in procs]
    assert set(codes) == {0}, [p.stderr.read() for p in procs]
    with h5py.File(out, "r") as f:
        winner = f.attrs["weightport_source"]  # the last to finish; OUT records its source (and its digest)
    assert winner in ("seq__k3.keras", "seq__tfk.h5", "seq__k3.h5")
    assert run_cli("verify", str(FIXTURES / winner), str(out)).returncode == 0
    assert not _temporaries(tmp_path)


def test_internal_error_exit_1_and_debug_traceback(monkeypatch, capsys, tmp_path: Path) -> None:
    import weightport.api

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(weightport.api, "analyze_head", broken)
    assert main(["convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "o.h5")]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: simulated bug" in err and "--debug" in err and "Traceback" not in err
    assert main(["--debug", "convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "o.h5")]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _as_a_user(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` without root's power to ignore file modes (tests run as root in CI)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          timeout=300, preexec_fn=without_root_powers if os.geteuid() == 0 else None)


def test_inputs_are_opened_read_only(tmp_path: Path) -> None:
    """Read-only source, --target and OUT (for verify): convert and verify still work, because
    they open every input for reading only, and leave each one as it was."""
    source, target = tmp_path / "seq.keras", tmp_path / "target.weights.h5"
    source.write_bytes((FIXTURES / "seq__k3.keras").read_bytes())
    weightport.convert(source, target)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (source, target)}
    for path in before:
        path.chmod(0o444)
    control = _as_a_user("-c", f"open({str(source)!r}, 'r+b')")
    if control.returncode == 77:
        pytest.skip("this machine does not let root drop its file-permission powers")
    assert control.returncode == 1 and "PermissionError" in control.stderr, "the read-only check would prove nothing"
    out = tmp_path / "out.h5"
    converted = _as_a_user("-m", "weightport", "convert", str(source), "--target", str(target), "-o", str(out), "--quiet")
    assert converted.returncode == 0, converted.stderr
    out.chmod(0o444)
    checked = _as_a_user("-m", "weightport", "verify", str(source), str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for a reaper has ended)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_keras_load_child_ends_with_weightport(tmp_path: Path) -> None:
    """weightport killed (a pipeline's timeout, SIGKILL) while its Keras load child is busy: the
    child ends too, instead of loading on unwatched. Its output here is a pipe nobody writes,
    which would block the child for ever."""
    fifo = tmp_path / "out.h5"
    os.mkfifo(fifo)
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, os, time
from weightport import keras_load
child = subprocess.Popen([sys.executable, keras_load.__file__, str(os.getpid()), "keras", {str(fifo)!r}, {str(fifo)!r}, ""])
print(child.pid, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    child = int(parent.stdout.readline())
    try:
        time.sleep(2)  # the child is importing Keras, or blocked opening the pipe
        assert _alive(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not _alive(child), 10, "the Keras load child to end with weightport")
    finally:
        parent.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
