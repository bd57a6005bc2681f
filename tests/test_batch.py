"""Checkpoint sweeps: `convert A B C --out-dir DIR [-j N]`, each file on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

from conftest import FIXTURES, ROOT, children, cli_command, run_cli, temporaries, wait_until

GOOD = ["seq__k3.keras", "gap__k3.keras", "nested__tfk.h5", "conv1d__k3.h5"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sweep_converts_every_file_and_reports_the_bad_one(jobs: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.h5"
    bad.write_text("not a weights file")
    sources = [str(FIXTURES / name) for name in GOOD] + [str(bad)]
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", *sources, "--out-dir", str(out), "-j", jobs, keras_load=False)
    assert result.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(GOOD)
    assert result.stderr.count("weightport: error:") == 1 and "broken.h5: not an HDF5 file" in result.stderr
    assert result.stdout.count("(verified)") == len(GOOD)
    for name in GOOD:
        assert run_cli("verify", str(FIXTURES / name), str(out / name)).returncode == 0


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "-o", str(tmp_path / "o.h5"), "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    result = run_cli("convert", *(str(FIXTURES / n) for n in GOOD), "--out-dir", str(tmp_path), "--quiet", keras_load=False)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_out_and_out_dir_are_exclusive(tmp_path: Path) -> None:
    assert run_cli("convert", str(FIXTURES / "seq__k3.keras")).returncode == 2
    two = [str(FIXTURES / n) for n in GOOD[:2]]
    result = run_cli("convert", *two, "-o", str(tmp_path / "o.h5"))
    assert result.returncode == 2 and "--out-dir" in result.stderr


def test_two_inputs_with_one_output_are_refused_before_anything_is_converted(tmp_path: Path) -> None:
    """Issue 11: `a/model.h5 b/model.h5 --out-dir out -j 2` said "2 of 2 files converted" with one file in out/."""
    sources = []
    for folder, fixture in (("a", "seq__k3.h5"), ("b", "gap__k3.h5")):
        (tmp_path / folder).mkdir()
        sources.append(tmp_path / folder / "model.h5")
        sources[-1].write_bytes((FIXTURES / fixture).read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", *map(str, sources), "--out-dir", str(out), "-j", "2")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"weightport: error: {out / 'model.h5'}: two inputs would be written here: {sources[0]} and {sources[1]};")
    assert list(out.iterdir()) == []


COUNT_PROCESSES = """
import multiprocessing.process, sys
import weightport.keras_load
weightport.keras_load.installed = lambda module: False  # the processes counted are weightport's own
start = multiprocessing.process.BaseProcess.start
def counted(self):
    print("PROCESS STARTED", file=sys.stderr, flush=True)
    start(self)
multiprocessing.process.BaseProcess.start = counted
sys.argv[0] = "weightport"
from weightport.cli import run
run()
"""


@pytest.mark.parametrize("files", [1, 3])
def test_jobs_are_capped_at_the_files_and_the_cores(files: int, tmp_path: Path) -> None:
    """Issue 11: `-j 1000` with one file started 1000 processes. One file runs in the command's
    own process; more start at most one worker per file and per core."""
    result = subprocess.run([sys.executable, "-c", COUNT_PROCESSES, "convert", *(str(FIXTURES / n) for n in GOOD[:files]),
                             "--out-dir", str(tmp_path), "-j", "1000", "--quiet"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert result.returncode == 0, result.stderr
    started = result.stderr.count("PROCESS STARTED")
    assert started == (0 if files == 1 else min(files, len(os.sched_getaffinity(0)))), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GOOD[:files])


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_must_be_a_positive_number(jobs: str, tmp_path: Path) -> None:
    result = run_cli("convert", str(FIXTURES / "seq__k3.keras"), "--out-dir", str(tmp_path), "-j", jobs)
    assert result.returncode == 2 and f"'{jobs}' is not a positive whole number" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _in_progress(out: Path) -> Set[str]:
    """The outputs whose temporaries are in `out` (`.NAME.weightport-TOKEN.tmp`)."""
    return {p.name[1:].partition(".weightport-")[0] for p in temporaries(out)}


@pytest.mark.parametrize("stop", ["SIGKILL to the parent", "SIGTERM to the parent", "Ctrl-C"])
def test_an_interrupted_sweep_stops_its_workers(stop: str, big_source: Path, tmp_path: Path) -> None:
    """Issue 11: after SIGTERM or SIGKILL to the parent of a `-j 2` sweep the workers went on
    converting and never exited; after Ctrl-C the queued files were still converted. The whole
    sweep is frozen (SIGSTOP) while files are being written, stopped, then let go: no file is
    started after that, the workers exit, and no temporary is left."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for i in range(6):
        (sources / f"s{i}_weights.h5").symlink_to(big_source)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(**cli_command("convert", *sorted(map(str, sources.iterdir())), "--flatten", "7,7,64", "--out-dir", str(out),
                                          "-j", "2", "--no-verify", "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: temporaries(out) or proc.poll() is not None, 120, "a worker's temporary file")
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGSTOP)
        workers = children(proc.pid)
        allowed = {p.name for p in out.iterdir()} | _in_progress(out)  # done, or being written at the stop
        assert len(workers) == 2
        if stop == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGKILL if stop.startswith("SIGKILL") else signal.SIGTERM)
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == {"Ctrl-C": 130, "SIGTERM to the parent": 143, "SIGKILL to the parent": -signal.SIGKILL}[stop], err
    wait_until(lambda: all(_gone(pid) for pid in workers), 30, "the workers to exit")
    assert not temporaries(out)
    assert {p.name for p in out.iterdir()} <= allowed, err
