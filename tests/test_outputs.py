"""Outputs are claimed, never clobbered, and nothing is left beside them.

OUT is kept unless `--force`, even one that appears while the output is written; no input can
be OUT; a temporary belongs to the writer holding its lock, so cleanup never takes a live
writer's file; SIGTERM and SIGHUP clean up as Ctrl-C does; an output path that cannot be
written is one line and exit 2. Runs are caught mid-write by waiting for their temporary (then
stopping them with SIGSTOP where the moment matters), never by sleeping a fixed time.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Optional

import pytest

import weightport
import weightport.atomic
from conftest import FIXTURES, children, cli_command, run_cli, temporaries, wait_until, without_root_powers
from weightport.errors import WeightportError

BIG = ("--flatten", "7,7,64")
TIMEOUT = 120  # seconds for one run on a loaded machine


def _start(*args: str) -> subprocess.Popen:
    """The CLI in its own session (signals sent to it never reach pytest)."""
    return subprocess.Popen(**cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop_mid_write(proc: subprocess.Popen, folder: Path, writer: Optional[int] = None) -> Path:
    """Stop the run's `writer` process (default: `proc`) with SIGSTOP while its temporary exists
    in `folder`; return that temporary."""
    found = wait_until(lambda: temporaries(folder) or proc.poll() is not None, TIMEOUT, "the run's temporary file")
    assert found is not True, f"the run ended before its temporary was seen: {proc.communicate()}"
    os.kill(writer or proc.pid, signal.SIGSTOP)
    present = temporaries(folder)
    assert present, "the run finished between seeing its temporary and stopping it"
    return present[0]


def _finish(proc: subprocess.Popen, writer: Optional[int] = None) -> subprocess.CompletedProcess:
    os.kill(writer or proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- OUT is claimed -----------------------------------------------------------------------

def test_an_out_created_during_the_conversion_is_kept(big_source: Path, tmp_path: Path) -> None:
    """Issue 11: an OUT created while a conversion runs was replaced, exit 0, without --force."""
    out = tmp_path / "fcn.h5"
    proc = _start("convert", str(big_source), *BIG, "-o", str(out))
    _stop_mid_write(proc, tmp_path)
    out.write_bytes(b"someone else's file")
    result = _finish(proc)
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith(f"weightport: error: {out}: appeared while the output was being written")
    assert out.read_bytes() == b"someone else's file"
    assert sorted(tmp_path.iterdir()) == [out]


def _refuse_renameat2(*args) -> None:
    raise OSError(errno.EINVAL, "not on this filesystem")


@pytest.mark.parametrize("claim", ["renameat2", "link"])
@pytest.mark.parametrize("force", [False, True])
def test_the_last_step_claims_out_unless_forced(claim: str, force: bool, monkeypatch, tmp_path: Path) -> None:
    """OUT appears between the check and the last step: kept without force (by renameat2, or by
    link-then-unlink where the filesystem refuses renameat2), replaced with it."""
    if claim == "link":
        monkeypatch.setattr(weightport.atomic, "_renameat2", _refuse_renameat2)
    out = tmp_path / "fcn.h5"

    def appear(done: int, total: int) -> None:
        if not out.exists():
            out.write_bytes(b"theirs")

    source = FIXTURES / "seq__k3.keras"
    if force:
        weightport.convert(source, out, force=True, progress=appear)
        assert weightport.verify(source, out).ok
    else:
        with pytest.raises(WeightportError, match="appeared while the output was being written"):
            weightport.convert(source, out, progress=appear)
        assert out.read_bytes() == b"theirs"
    assert sorted(tmp_path.iterdir()) == [out]


def test_without_a_competitor_the_claim_writes_out_by_either_route(monkeypatch, tmp_path: Path) -> None:
    source = FIXTURES / "seq__k3.keras"
    weightport.convert(source, tmp_path / "a.h5")
    monkeypatch.setattr(weightport.atomic, "_renameat2", _refuse_renameat2)
    weightport.convert(source, tmp_path / "b.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]
    assert all(weightport.verify(source, tmp_path / name).ok for name in ("a.h5", "b.h5"))


# --- no input is an output ----------------------------------------------------------------

def _config_of(archive: Path, path: Path) -> Path:
    path.write_bytes(zipfile.ZipFile(archive).read("config.json"))
    return path


def _same_input(kind: str, tmp_path: Path):
    """(command arguments, the input file OUT names) for each way OUT can be an input."""
    source = tmp_path / "seq.keras"
    source.write_bytes((FIXTURES / "seq__k3.keras").read_bytes())
    if kind == "config":  # issue 11: `--config cfg.h5 -o cfg.h5 --force` overwrote that input
        config = _config_of(source, tmp_path / "cfg.h5")
        return ["convert", str(FIXTURES / "seq__k3.weights.h5"), "--config", str(config), "-o", str(config)], config
    if kind == "target":
        target = tmp_path / "fcn.weights.h5"
        assert run_cli("convert", str(source), "-o", str(target), "--quiet").returncode == 0
        return ["convert", str(source), "--target", str(target), "-o", str(target)], target
    if kind == "hard link":  # the same file by device and inode, under another name
        os.link(source, tmp_path / "other.keras")
        return ["convert", str(source), "-o", str(tmp_path / "other.keras")], source
    (tmp_path / "sub").mkdir()  # the same file by resolved path
    return ["convert", str(source), "-o", str(tmp_path / "sub" / ".." / "seq.keras")], source


@pytest.mark.parametrize("kind", ["config", "target", "hard link", "resolved path"])
def test_no_input_can_be_the_output(kind: str, tmp_path: Path) -> None:
    args, victim = _same_input(kind, tmp_path)
    before = victim.read_bytes()
    result = run_cli(*args, "--force")
    assert result.returncode == 2
    assert "is an input of this conversion" in _one_line(result.stderr)
    assert victim.read_bytes() == before and not temporaries(tmp_path)


# --- temporaries are owned by a lock ------------------------------------------------------

def test_cleanup_removes_only_the_temporaries_nobody_holds(tmp_path: Path) -> None:
    """A live writer is known by the lock on its temporary, not by a PID: one in another PID
    namespace or container (on a shared volume) holds its lock all the same."""
    out = tmp_path / "fcn.h5"
    live, dead = tmp_path / ".fcn.h5.weightport-0123abcd.tmp", tmp_path / ".fcn.h5.weightport-89abcdef.tmp.1"
    live.write_bytes(b"being written"), dead.write_bytes(b"left by a killed run")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        assert run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out), "--quiet").returncode == 0
        assert live.read_bytes() == b"being written" and not dead.exists()
    finally:
        os.close(holder)
    assert run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out), "--force", "--quiet").returncode == 0
    assert sorted(tmp_path.iterdir()) == [out]


def _pid_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("namespace", ["this", "another"], ids=lambda n: f"{n} PID namespace")
def test_a_running_writers_temporary_survives_another_runs_cleanup(namespace: str, big_source: Path, tmp_path: Path) -> None:
    """Issue 11: the cleanup deleted a live writer's temporary when the writer ran in another PID
    namespace (a container on a shared volume). Here a real writer, stopped mid-write, in this
    or in a new PID namespace, and a second run writing the same OUT meanwhile."""
    if namespace == "another" and not _pid_namespaces():
        pytest.skip("unshare --pid is not available or not permitted here")
    out = tmp_path / "fcn.h5"
    command = cli_command("convert", str(big_source), *BIG, "-o", str(out), "--force", "--no-verify")
    if namespace == "another":
        command["args"] = ["unshare", "--pid", "--fork", *command["args"]]
    first = subprocess.Popen(**command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    writer = first.pid if namespace == "this" else wait_until(lambda: children(first.pid), TIMEOUT, "the writer in its namespace")[0]
    try:
        held = _stop_mid_write(first, tmp_path, writer)
        second = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out), "--force", "--quiet")
        assert second.returncode == 0, second.stderr
        assert held.exists(), "the second run removed a live writer's temporary"
    finally:
        result = _finish(first, writer)
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(big_source), str(out), *BIG).returncode == 0
    assert sorted(tmp_path.iterdir()) == [out]


# --- signals ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_mid_write_cleans_up(sig: signal.Signals, big_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "fcn.h5"
    proc = _start("convert", str(big_source), *BIG, "-o", str(out), "--no-verify")
    _stop_mid_write(proc, tmp_path)
    proc.send_signal(sig)  # handled the moment the run is continued, mid-write
    result = _finish(proc)
    assert result.returncode == 128 + sig
    assert _one_line(result.stderr).startswith("weightport: interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.1, 0.3])
def test_sigterm_at_any_moment_leaves_nothing_behind(delay: float, big_source: Path, tmp_path: Path) -> None:
    """Issue 11: SIGTERM during a convert left a hidden partial temporary in 5 of 15 rounds.
    The signal lands `delay` seconds after the temporary appears: wherever that is, the run
    either finished (a complete OUT) or left nothing."""
    out = tmp_path / "fcn.h5"
    proc = _start("convert", str(big_source), *BIG, "-o", str(out))
    wait_until(lambda: temporaries(tmp_path) or proc.poll() is not None, TIMEOUT, "the run's temporary file")
    time.sleep(delay)  # the moment varies on purpose
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT)
    assert not temporaries(tmp_path)
    if proc.returncode == 0:
        assert run_cli("verify", str(big_source), str(out), *BIG).returncode == 0
    else:
        assert proc.returncode == 128 + signal.SIGTERM and not out.exists()


# --- output paths that cannot be written --------------------------------------------------

@pytest.mark.parametrize("length", [230, 255])
def test_a_long_output_name_gets_a_short_temporary(length: int, tmp_path: Path) -> None:
    """Issue 11: a 230-byte output name was an internal error (its temporary's name was too long)."""
    out = tmp_path / ("a" * (length - 3) + ".h5")
    result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [out]
    assert run_cli("verify", str(FIXTURES / "seq__k3.keras"), str(out)).returncode == 0


@pytest.mark.parametrize("out, problem", [
    ("/proc/fcn.h5", "this folder takes no new files"),
    ("/proc/self/fcn.h5", "this folder takes no new files"),
    ("{tmp}/" + "a" * 300 + ".h5", "the name is too long"),
], ids=["proc", "proc-self", "name-too-long"])
def test_an_output_path_that_cannot_be_written_is_one_line(out: str, problem: str, tmp_path: Path) -> None:
    out = out.format(tmp=tmp_path)
    result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", out)
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith(f"weightport: error: {out}: cannot write the output here: {problem};")
    assert list(tmp_path.iterdir()) == []


def test_a_write_only_drop_box_takes_the_output(tmp_path: Path) -> None:
    """Issue 11: a folder one may write into but not list was an internal error. Nothing needs
    listing there but the stale temporaries, which such a folder cannot show: the output goes
    in, and an existing one is still refused without --force."""
    box = tmp_path / "drop"
    box.mkdir()
    tmp_path.chmod(0o711)
    if os.geteuid() == 0:
        os.chown(box, 65534, 65534)  # someone else's box, as root's permission checks go
    box.chmod(0o733 if os.geteuid() == 0 else 0o300)
    out = box / "fcn.h5"
    args = cli_command("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(out), "--quiet")
    runs = [subprocess.run(**args, capture_output=True, text=True, timeout=TIMEOUT,
                           preexec_fn=without_root_powers if os.geteuid() == 0 else None) for _ in range(2)]
    if runs[0].returncode == 77:
        pytest.skip("this machine does not let root drop its file-permission powers")
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[1].returncode == 2 and _one_line(runs[1].stderr) == f"weightport: error: {out}: already exists; pass --force to replace it"
    box.chmod(0o755)
    assert list(box.iterdir()) == [out]
    assert run_cli("verify", str(FIXTURES / "seq__k3.keras"), str(out)).returncode == 0


def test_the_output_groups_refuse_a_path_held_twice_and_make_each_group_once(tmp_path: Path) -> None:
    """The writer makes the output's groups itself (writers._Groups, not h5py's require_group):
    two tensors at one path (`a/./b` is `a/b` to HDF5), a tensor where a group is and a group where
    a tensor is are refused as the target's duplicate names, and each group is made once, with its parents."""
    import h5py
    import numpy as np
    from weightport.writers import _Groups

    with h5py.File(tmp_path / "g.h5", "w") as f:
        groups = _Groups(f)
        first = groups.group_id("layers/dense/vars")
        assert groups.group_id("/layers//dense/./vars/") is first
        assert set(groups.ids) == {"", "layers", "layers/dense", "layers/dense/vars"}
        groups.text("layers/dense/vars", "name", "dense")
        assert f["layers/dense/vars"].attrs["name"] == "dense"
        groups.claim("layers/dense/vars/0")
        groups.tensors.add("layers/dense/vars/0")
        for held in ("layers/dense/vars/./0", "layers/dense", "layers/dense/vars/0/x"):
            with pytest.raises(WeightportError, match="two target tensors share the path"):
                groups.claim(held) if not held.endswith("/x") else groups.group_id(held)
        assert isinstance(f["layers/dense/vars"], h5py.Group) and np.asarray(list(f["layers/dense"])).tolist() == ["vars"]
