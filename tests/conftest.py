"""Shared test helpers: where the data lives, and running the CLI for real."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest

# PyTorch before TensorFlow: torchvision imported into a process that has loaded TensorFlow
# segfaults as it loads triton's native library (seen in a worker that had collected the Keras
# tests); imported first, both work. Test modules import Keras as they are collected, after this.
for _module in ("torch", "torchvision"):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SHARED_FILES = ROOT.parent / "shared" / "keras-files"
BIG_ROWS = 7 * 7 * 64  # the big source's window, 7,7,64 (--flatten)


# `python -c` programs: `_RUN` is `-m weightport`; `_NO_KERAS_LOAD` before it turns off the Keras
# load of whole-model outputs, as the `no_keras_load` fixture does in process (the load runs in a
# child that imports TensorFlow: seconds of CPU, and 5-20 s of wall time on a busy machine).
_RUN = """
import runpy, sys
sys.argv[0] = "weightport"
runpy.run_module("weightport", run_name="__main__", alter_sys=True)
"""
_NO_KERAS_LOAD = """
import weightport.keras_load
weightport.keras_load.installed = lambda module: False
"""


def cli_command(*args: str, python: Sequence[str] = (), keras_load: bool = True) -> dict:
    """The Popen arguments of `python [PYTHON...] -m weightport ARGS`, with this checkout importable.
    `keras_load=False`: whole-model outputs are not loaded in Keras (for tests of other things;
    the sweep's worker processes, forked, inherit that)."""
    assert keras_load or not python, "python options and keras_load=False do not combine"
    program = ["-m", "weightport"] if keras_load else ["-c", _NO_KERAS_LOAD + _RUN]
    return dict(args=[sys.executable, *python, *program, *args], env=dict(os.environ, PYTHONPATH=str(ROOT)))


# `python -m weightport` that writes its peak resident memory (KiB) to $WEIGHTPORT_TEST_PEAK as it
# exits. VmHWM belongs to the process's own address space; `wait4`'s ru_maxrss does not: a child
# forked from a test process that has grown (Keras imported, big arrays made) starts with its size.
_PEAK = """
import atexit, os
def report():
    with open("/proc/self/status") as status, open(os.environ["WEIGHTPORT_TEST_PEAK"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
atexit.register(report)
"""


def measured_cli_command(*args: str, peak_file: Path, keras_load: bool = True) -> dict:
    """The Popen arguments of `python -m weightport ARGS` (as `cli_command`), the process writing
    its own peak memory to `peak_file` as it exits: read it with `peak_mib`."""
    command = cli_command(*args)
    program = _PEAK + ("" if keras_load else _NO_KERAS_LOAD) + _RUN
    return dict(args=[command["args"][0], "-c", program, *args], env=dict(command["env"], WEIGHTPORT_TEST_PEAK=str(peak_file)))


def peak_mib(peak_file: Path) -> float:
    """The peak resident memory a `measured_cli_command` process reported, in MiB."""
    text = Path(peak_file).read_text() if Path(peak_file).exists() else ""
    assert text, "the child did not report its peak memory"
    return int(text) / 1024


def run_cli(*args: str, cwd: Path = ROOT, python: Sequence[str] = (), stdout=subprocess.PIPE, keras_load: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m weightport ARGS` in a fresh interpreter, as a user would (`python`: options
    before `-m`, such as `-m cProfile`; `stdout`: where its output goes, captured by default;
    `keras_load`: see `cli_command`)."""
    return subprocess.run(**cli_command(*args, python=python, keras_load=keras_load), stdout=stdout, stderr=subprocess.PIPE, text=True,
                          cwd=cwd, timeout=300)


def shared_files_absent() -> bool:
    """Whether ../shared/keras-files (real files from other projects) is absent, so the tests
    that read it may skip. Under CI (CI=true) it must be there: its absence fails the run, as
    an error where each test module is collected, instead of ~75 silent skips."""
    if SHARED_FILES.is_dir():
        return False
    if os.environ.get("CI") == "true":
        pytest.fail(f"{SHARED_FILES} is absent, and CI=true requires it: place the shared Keras files beside the repository", pytrace=False)
    return True


def needs_shared_files() -> pytest.MarkDecorator:
    """The mark of tests that read ../shared/keras-files: skipped without it, but not under CI."""
    return pytest.mark.skipif(shared_files_absent(), reason=f"{SHARED_FILES} is absent (it ships beside the repo, not in it)")


def shared_files() -> List[Path]:
    if shared_files_absent():
        return []
    return sorted(p for p in SHARED_FILES.iterdir() if p.suffix in (".h5", ".hdf5"))


def without_root_powers() -> None:
    """A `preexec_fn`: the child and what it execs lose root's power to ignore file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH dropped from the bounding set), so a read-only or
    unlistable file is what it is for a user. Exit 77 where the machine does not allow it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(77)


def sidecar_config(path: Path) -> Path | None:
    """Keras 1 weights-only files ship their architecture as `<stem>_config.json`."""
    candidate = path.with_name(path.name.replace("_weights.h5", "_config.json"))
    return candidate if candidate != path and candidate.exists() else None


def keras_required() -> bool:
    """CI sets WEIGHTPORT_REQUIRE_KERAS=1 so a missing Keras fails instead of skipping."""
    return os.environ.get("WEIGHTPORT_REQUIRE_KERAS") == "1"


def import_or_skip(module: str):
    """The module itself (`safetensors.torch`, not its package, as `__import__` would give), or a
    skip where it is not installed; under CI a missing module fails."""
    if keras_required():
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")


def load_maker():
    """fixtures/make_fixtures.py as a module (its builders, fill_weights, save ...)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


# Modules of many independent tests with no module-scoped fixture: under `-n`, handed out one
# test at a time (the fuzz alone is ~2,700 tests and a third of the suite), after the modules.
ONE_TEST_AT_A_TIME = ("test_fuzz.py", "test_hostile_inputs.py")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`-n N`: a module's tests run on one worker, so its module-scoped models (the load matrix,
    VGG16, the score maps) are built once, except `ONE_TEST_AT_A_TIME`, spread over the workers.
    The modules go first, those of the most tests first; the single tests fill in. (`--dist
    loadgroup` would say this with marks, but pytest 9.2 ignores its groups: pytest-xdist
    issue 1386.) An explicit `--dist` other than the default `load` is left to pytest-xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesThenTests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module.endswith(ONE_TEST_AT_A_TIME) else module

    return ModulesThenTests(config, log)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """`ONE_TEST_AT_A_TIME`'s tests are collected last: handed out after every module (with `-n`,
    modules of as many tests go in collection order), they fill both workers to the end."""
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0].endswith(ONE_TEST_AT_A_TIME))


@contextlib.contextmanager
def scratch(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A module fixture's folder, removed when the fixture ends. pytest keeps `tmp_path_factory`'s
    folders to the end of the session, and the suite writes ~20 GB of VGG16-sized files in all:
    kept, they filled CI's disk. (`tmp_path` folders go when their test passes: setup.cfg.)"""
    folder = tmp_path_factory.mktemp(name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def big_source(tmp_path_factory) -> Iterator[Path]:
    """A legacy weights-only classifier whose Dense kernel is ~200 MB (written in blocks): its
    conversion is long enough to be caught mid-write. Convert it with `--flatten 7,7,64`."""
    with scratch(tmp_path_factory, "big") as folder:
        yield _write_big_source(folder / "big_weights.h5")


def _write_big_source(path: Path) -> Path:
    import h5py
    import numpy as np

    units = 200 * 2**20 // (BIG_ROWS * 4)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "2.21.0", "tensorflow"
        f.attrs["layer_names"] = [b"conv", b"fc"]
        for name, shapes in (("conv", [(3, 3, 3, 64), (64,)]), ("fc", [(BIG_ROWS, units), (units,)])):
            names = [f"{name}/{role}:0" for role in ("kernel", "bias")]
            f.create_group(name).attrs["weight_names"] = [n.encode() for n in names]
            for n, shape in zip(names, shapes):
                ds = f[name].create_dataset(n, shape=shape, dtype="float32")
                for start in range(0, shape[0], 512):
                    block = (min(512, shape[0] - start),) + shape[1:]
                    ds[start:start + block[0]] = np.full(block, start % 7, "float32")
    return path


def temporaries(folder: Path) -> List[Path]:
    """weightport's temporary files in `folder` (`.OUT.weightport-TOKEN.tmp*`)."""
    return [p for p in folder.iterdir() if ".weightport-" in p.name]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it is true (returned) or `timeout` seconds pass (the test fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.002)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def children(parent: int) -> List[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def vgg16_classifier(K, seed: int):
    """keras.applications.VGG16(weights=None) with non-trivial biases (the initialiser's zeros
    would hide a bias paired with the wrong layer)."""
    import numpy as np

    classifier = K.applications.VGG16(weights=None)
    rng = np.random.default_rng(seed)
    for layer in classifier.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.05, bias.shape).astype("float32")])
    return classifier


@pytest.fixture
def no_keras_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`convert` in this process behaves as without Keras installed: no child process loads its
    whole-model outputs. For tests of other things that convert hundreds of files (the load
    check itself is tested in test_loads.py and test_load_matrix.py)."""
    monkeypatch.setattr("weightport.keras_load.installed", lambda module: False)
