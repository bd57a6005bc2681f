"""Hostile files (issue 11): nothing opened but what the user named, no hang, no code run, no
forged output.

Each case runs `python -m weightport` in a child process, as a user would, and holds it to the
promise of the README's Errors section: exit 2, one line on stderr naming the file, nothing left
beside OUT, and a bound on what refusing costs: under `CPU_SECONDS` of CPU time and `MAX_RSS_MIB`
of memory (the child's own, from `wait4`). A hang (a blocking open or read, which Ctrl-C would not
stop either) is caught by `HANG_SECONDS` of wall time: a refused file takes well under a second of
it, but this machine's other work counts against wall time, not against CPU time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import h5py
import numpy as np
import pytest

from conftest import FIXTURES, cli_command, measured_cli_command

CPU_SECONDS = 2.0
MAX_RSS_MIB = 200
HANG_SECONDS = 20.0


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    cpu: float  # seconds of CPU time, user + system
    rss_mib: float  # peak resident memory (VmHWM)
    wall: float


def run_bounded(*args: str, cwd: Path, keras_load: bool = True) -> Outcome:
    """Run the CLI in a child; its exit status, output and own resource use (CPU time from wait4,
    peak memory from the child's own VmHWM). Fails the test on a hang. `keras_load=False`: a
    whole-model output is not loaded in Keras (whose start alone can take `HANG_SECONDS` of wall
    time on a busy machine)."""
    fd, peak_file = tempfile.mkstemp(prefix="weightport-peak-")
    os.close(fd)
    command = measured_cli_command(*args, peak_file=Path(peak_file), keras_load=keras_load)
    try:
        outcome = _wait_bounded(subprocess.Popen(**command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd), args)
        text = Path(peak_file).read_text()
    finally:
        os.unlink(peak_file)
    outcome.rss_mib = int(text) / 1024 if text else float("inf")
    return outcome


def _wait_bounded(proc: subprocess.Popen, args) -> Outcome:
    streams: Dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, fh=fh: streams.__setitem__(name, fh.read()))
               for name, fh in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    start = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > HANG_SECONDS:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            pytest.fail(f"weightport {' '.join(args)} hung (no exit in {HANG_SECONDS} s)")
        time.sleep(0.01)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Outcome(proc.returncode, streams["out"].decode(errors="replace"), streams["err"].decode(errors="replace"),
                   usage.ru_utime + usage.ru_stime, float("inf"), wall)


def assert_refused(*args: str, cwd: Path, names: Path, says: str, out: Optional[Path] = None) -> str:
    """The command exits 2 with one line naming `names` and saying `says`, within the bounds,
    and leaves nothing beside OUT (or beside the inputs in `cwd`). Returns the line."""
    folder = out.parent if out is not None else cwd
    before = sorted(os.listdir(folder))
    outcome = run_bounded(*args, cwd=cwd)
    assert outcome.status == 2, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith(f"weightport: error: {names}"), lines[0]
    assert says in lines[0], lines[0]
    assert outcome.cpu < CPU_SECONDS, f"{outcome.cpu:.2f} s of CPU to refuse it"
    assert outcome.rss_mib < MAX_RSS_MIB, f"{outcome.rss_mib:.0f} MiB to refuse it"
    assert sorted(os.listdir(folder)) == before, "something was left beside OUT"
    return lines[0]


def _copy(name: str, folder: Path) -> Path:
    path = folder / name
    shutil.copyfile(FIXTURES / name, path)
    return path


# --- nothing is opened but what the user named ------------------------------------------------

def _fifo(folder: Path) -> Path:
    path = folder / "pipe.h5"
    os.mkfifo(path)  # nobody ever writes it: a reader blocks for ever
    return path


def _external_in_layers(folder: Path, at: Path) -> Path:
    """A Keras 3 .weights.h5 whose layers/ group holds an external link to `at`."""
    path = _copy("seq__k3.weights.h5", folder)
    with h5py.File(path, "r+") as f:
        f["layers/evil"] = h5py.ExternalLink(str(at), "/x")
    return path


def _external_in_layer_names(folder: Path, at: Path) -> Path:
    """A legacy .h5 whose layer `dense`, named in layer_names, is an external link to `at`."""
    path = _copy("seq__tfk_weights.h5", folder)
    with h5py.File(path, "r+") as f:
        del f["dense"]
        f["dense"] = h5py.ExternalLink(str(at), "/x")
    return path


def _soft_to_external(folder: Path, at: Path) -> Path:
    """A tensor that is a soft link (a path in this file) to an external link: followed one link
    at a time, the external one is met and refused."""
    path = _copy("seq__k3.weights.h5", folder)
    with h5py.File(path, "r+") as f:
        f["hidden"] = h5py.ExternalLink(str(at), "/x")
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.SoftLink("/hidden")
    return path


def _virtual_tensor(folder: Path, at: Path) -> Path:
    """A tensor that is a virtual dataset mapping `at` without limit: asking h5py its shape would
    open `at` (a FIFO: for ever)."""
    path = _copy("seq__k3.weights.h5", folder)
    unlimited = h5py.h5s.UNLIMITED
    with h5py.File(path, "r+") as f:
        del f["layers/dense/vars/1"]
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        spaces = []
        for _ in range(2):
            space = h5py.h5s.create_simple((8,), (unlimited,))
            space.select_hyperslab((0,), (unlimited,), stride=(8,), block=(8,))
            spaces.append(space)
        plist.set_virtual(spaces[0], str(at).encode(), b"x", spaces[1])
        h5py.h5d.create(f["layers/dense/vars"].id, b"1", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple((8,), (unlimited,)), dcpl=plist)
    return path


def _external_storage(folder: Path, at: Path) -> Path:
    """A tensor whose raw bytes are declared to live in `at` (HDF5 external storage)."""
    path = _copy("seq__k3.weights.h5", folder)
    with h5py.File(path, "r+") as f:
        del f["layers/dense/vars/1"]
        f["layers/dense/vars"].create_dataset("1", shape=(8,), dtype="f4", external=[(str(at), 0, 32)])
    return path


LINKS: Dict[str, Callable[[Path, Path], Path]] = {
    "external link in layers/": _external_in_layers,
    "external link named in layer_names": _external_in_layer_names,
    "soft link to an external link": _soft_to_external,
    "virtual dataset": _virtual_tensor,
    "external storage": _external_storage,
}
SAYS = {"virtual dataset": "keeps its values in other files", "external storage": "keeps its values in other files"}


@pytest.mark.parametrize("case", sorted(LINKS))
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_link_to_a_fifo_is_refused_before_it_is_followed(case: str, command: str, tmp_path: Path) -> None:
    """A link to a FIFO blocked inspect and convert for ever (Ctrl-C could not stop it)."""
    path = LINKS[case](tmp_path, _fifo(tmp_path))
    out = tmp_path / "out" / "fcn.weights.h5"
    out.parent.mkdir()
    args = ["inspect", str(path)] if command == "inspect" else ["convert", str(path), "-o", str(out), "--flatten", "7,7,4"]
    assert_refused(*args, cwd=tmp_path, names=path, says=SAYS.get(case, "in another file"), out=out)


def test_an_external_link_to_etc_passwd_is_refused_not_opened(tmp_path: Path) -> None:
    """`inspect` opened /etc/passwd through the link, skipped it and exited 0 without a word."""
    path = _external_in_layers(tmp_path, Path("/etc/passwd"))
    line = assert_refused("inspect", str(path), cwd=tmp_path, names=path, says="/layers/evil is a link to /x in another file (/etc/passwd)")
    assert "weights must be stored in the file itself" in line


def test_a_soft_link_inside_the_file_is_still_followed(tmp_path: Path) -> None:
    """Links that stay in the file are legal HDF5 and still read: a tensor reached through a soft link."""
    path = _copy("seq__k3.weights.h5", tmp_path)
    with h5py.File(path, "r+") as f:
        f.move("layers/dense/vars/0", "moved")
        f["layers/dense/vars/0"] = h5py.SoftLink("/moved")
    outcome = run_bounded("inspect", "--json", str(path), cwd=tmp_path)
    assert outcome.status == 0, outcome.stderr
    dense = [layer for layer in json.loads(outcome.stdout)["layers"] if layer["group"] == "/layers/dense/vars"][0]
    assert dense["weights"][0]["shape"] == [196, 8]


def test_a_soft_link_loop_is_refused(tmp_path: Path) -> None:
    path = _copy("seq__k3.weights.h5", tmp_path)
    with h5py.File(path, "r+") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.SoftLink("/layers/dense/vars/0")
    assert_refused("inspect", str(path), cwd=tmp_path, names=path, says="soft links lead on")


# --- special files: refused for every input, unread -------------------------------------------

def _special(kind: str, folder: Path) -> Path:
    return _fifo(folder) if kind == "fifo" else Path("/dev/zero")


ROLES = ["SRC", "--config", "--target", "verify OUT"]


@pytest.mark.parametrize("kind, role", [(kind, role) for kind in ("fifo", "/dev/zero") for role in ROLES] + [("fifo", "sweep SRC")])
def test_a_special_file_is_refused_for_every_input(kind: str, role: str, tmp_path: Path) -> None:
    """`--config FIFO` hung; a FIFO or a device is refused as any input, nothing read from it."""
    special = _special(kind, tmp_path)
    good = _copy("seq__k3.keras", tmp_path)
    out = tmp_path / "out" / "fcn.weights.h5"
    out.parent.mkdir()
    args = {
        "SRC": ["convert", str(special), "-o", str(out)],
        "--config": ["convert", str(_copy("seq__k3.weights.h5", tmp_path)), "--config", str(special), "-o", str(out)],
        "--target": ["convert", str(good), "--target", str(special), "-o", str(out)],
        "verify OUT": ["verify", str(good), str(special)],
        "sweep SRC": ["convert", str(special), "--out-dir", str(out.parent)],
    }[role]
    kind_said = "is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a character device, not a regular file"
    if role == "sweep SRC":  # a sweep reports each file on its line, then the count
        before = sorted(os.listdir(out.parent))
        outcome = run_bounded(*args, cwd=tmp_path)
        assert outcome.status == 2 and f"weightport: error: {special}: {kind_said}" in outcome.stderr, outcome
        assert outcome.cpu < CPU_SECONDS and outcome.rss_mib < MAX_RSS_MIB and sorted(os.listdir(out.parent)) == before
        return
    assert_refused(*args, cwd=tmp_path, names=special, says=kind_said, out=out)


_SWAP = """
import os, sys
import weightport.readers as readers
checked = readers.by_descriptor
def swapped(path, fd):  # the name is given to a FIFO after the file was checked, before it is opened
    os.replace(path, str(path) + ".moved")
    os.mkfifo(path)
    return checked(path, fd)
readers.by_descriptor = swapped
with readers.read(sys.argv[1]) as view:
    print(len(view.layers))
"""


@pytest.mark.parametrize("name", ["seq__k3.keras", "seq__tfk_weights.h5"])
def test_a_fifo_swapped_in_after_the_check_is_never_opened(name: str, tmp_path: Path) -> None:
    """Every open after the check goes through the checked descriptor: a FIFO given the file's
    name in between is never opened (HDF5 or zipfile opening it by name would block for ever)."""
    path = _copy(name, tmp_path)
    command = cli_command()
    result = subprocess.run([command["args"][0], "-c", _SWAP, str(path)], env=command["env"], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3" and path.is_fifo()  # the file that was checked, read whole


_SWAP_BEFORE_WRITE = """
import os, sys
import weightport.writers as writers
from weightport import cli
opened = writers.open_data_files
def swapped(views):  # the source's name is given to a FIFO after it was read, before its bytes are copied
    views = list(views)
    os.replace(sys.argv[1], sys.argv[1] + ".moved")
    os.mkfifo(sys.argv[1])
    return opened(views)
writers.open_data_files = swapped
sys.exit(cli.main(["convert", sys.argv[1], "-o", sys.argv[2], "--flatten", "7,7,4"]))
"""


def test_a_fifo_swapped_in_before_the_bytes_are_copied_is_refused(tmp_path: Path) -> None:
    """The writer reopens the source for its raw bytes: non-blocking, then checked to be the file read."""
    path = _copy("seq__tfk_weights.h5", tmp_path)
    out = tmp_path / "out" / "fcn.h5"
    out.parent.mkdir()
    command = cli_command()
    result = subprocess.run([command["args"][0], "-c", _SWAP_BEFORE_WRITE, str(path), str(out)], env=command["env"],
                            capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"weightport: error: {path}: changed while being converted (rewritten or replaced since it was read); "
                                          "convert again once the file is no longer being written; nothing was written"]
    assert os.listdir(out.parent) == []


# --- graphs: cycles and depth -----------------------------------------------------------------

def _functional(folder: Path, name: str, edit: Callable[[List[dict]], None]) -> Path:
    """func_names__k3.keras with its config's layer list edited by `edit`."""
    source = FIXTURES / "func_names__k3.keras"
    with zipfile.ZipFile(source) as z:
        config = json.loads(z.read("config.json"))
        edit(config["config"]["layers"])
        path = folder / name
        with zipfile.ZipFile(path, "w") as out:
            for info in z.infolist():
                out.writestr(info, json.dumps(config) if info.filename == "config.json" else z.read(info))
    return path


def _feed(layer: dict, producer: str) -> None:
    layer["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [producer, 0, 0]


def _dropouts_before(layers: List[dict], consumer: str, names: List[str], first_producer: Optional[str] = None) -> None:
    """Insert Dropout layers `names` in a chain before `consumer`; the first is fed by
    `first_producer` (default: the consumer's own producer)."""
    at = [layer["name"] for layer in layers].index(consumer)
    template = next(layer for layer in layers if layer["class_name"] == "Dropout")
    producer = first_producer or layers[at]["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]
    chain = []
    for name in names:
        layer = copy.deepcopy(template)
        layer["name"] = layer["config"]["name"] = name
        _feed(layer, producer)
        chain.append(layer)
        producer = name
    _feed(layers[at], producer)
    layers[at:at] = chain


def test_a_graph_cycle_is_refused_not_walked_for_ever(tmp_path: Path) -> None:
    """A Dropout feeding itself before the Flatten made `plan` loop for ever, memory growing."""
    path = _functional(tmp_path, "cycle.keras", lambda layers: _dropouts_before(layers, "my_flat", ["loop"], first_producer="loop"))
    out = tmp_path / "out" / "fcn.weights.h5"
    out.parent.mkdir()
    for args in (["plan", str(path)], ["convert", str(path), "-o", str(out)]):
        assert_refused(*args, cwd=tmp_path, names=path, says="layer 'loop' feeds itself in the model config", out=out)


def test_a_cycle_between_dense_layers_is_refused(tmp_path: Path) -> None:
    def edit(layers: List[dict]) -> None:
        _dropouts_before(layers, "predictions", ["a", "b"])
        _feed(layers[[layer["name"] for layer in layers].index("a")], "b")

    path = _functional(tmp_path, "dense_cycle.keras", edit)
    assert_refused("plan", str(path), cwd=tmp_path, names=path, says="feeds itself in the model config")


def test_a_deep_graph_is_walked_without_recursion(tmp_path: Path) -> None:
    """3,000 Dropouts between two Dense layers raised RecursionError (exit 1): walked iteratively,
    the chain is planned like any other."""
    path = _functional(tmp_path, "deep.keras", lambda layers: _dropouts_before(layers, "predictions", [f"deep{i}" for i in range(3000)]))
    outcome = run_bounded("plan", "--json", str(path), cwd=tmp_path)
    assert outcome.status == 0, outcome.stderr
    steps = {step["target_layer"]: step for step in json.loads(outcome.stdout)["steps"] if step["role"] == "kernel"}
    assert steps["predictions"]["rule"] == "dense-to-1x1" and steps["fc6"]["rule"] == "dense-to-conv"
    assert outcome.cpu < CPU_SECONDS and outcome.rss_mib < MAX_RSS_MIB


# --- names from files are printed escaped -----------------------------------------------------

FORGED = "weightport: all 3 layers ok"
HOSTILE = "\x1b[2J\x1b[31mdense\u202e\r\n" + FORGED  # clear the screen, red, right-to-left, a forged line


def _renamed_layer(folder: Path, new: str, group: bool = True) -> Path:
    """seq__tfk_weights.h5 with layer `dense` called `new` in layer_names (and its group, if `group`)."""
    path = _copy("seq__tfk_weights.h5", folder)
    with h5py.File(path, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array([(new if n == "dense" else n).encode() for n in names])
        if group:
            f.move("dense", new)
    return path


def _clean(text: str) -> None:
    """No control character, escape sequence or bidi override reaches the terminal, and no line is forged."""
    assert not any(ch in text for ch in "\x1b\r\u202e"), repr(text[:300])
    assert not any(line.startswith(FORGED) for line in text.splitlines()), text


def test_a_newline_in_a_layer_name_cannot_forge_an_error_line(tmp_path: Path) -> None:
    """The one-line error turned into several, one of them a forged "weightport: all 3 layers ok"."""
    path = _renamed_layer(tmp_path, HOSTILE, group=False)  # listed in layer_names, no such group: an error naming it
    line = assert_refused("inspect", str(path), cwd=tmp_path, names=path, says="is listed in layer_names but has no group")
    _clean(line)
    assert "\\x1b[2J\\x1b[31mdense\\u202e\\r\\nweightport: all 3 layers ok" in line


@pytest.mark.parametrize("command", ["inspect", "plan"])
def test_names_in_tables_are_printed_escaped(command: str, tmp_path: Path) -> None:
    """`inspect` printed escape sequences in layer names raw; tables escape every name."""
    path = _renamed_layer(tmp_path, HOSTILE)
    args = ["inspect", str(path)] if command == "inspect" else ["plan", str(path), "--flatten", "7,7,4"]
    outcome = run_bounded(*args, cwd=tmp_path)
    assert outcome.status == 0, outcome.stderr
    _clean(outcome.stdout)
    assert "\\x1b[2J\\x1b[31mdense" in outcome.stdout  # still there to read, escaped
    header = next(line for line in outcome.stdout.splitlines() if line.startswith("#"))
    rows = outcome.stdout.splitlines()[outcome.stdout.splitlines().index(header) + 1:]
    expected = {"inspect": 6, "plan": 6}[command]  # one line per tensor, then a blank line and the totals
    assert len([row for row in rows if row.strip()]) == expected + 1, outcome.stdout
    assert outcome.cpu < CPU_SECONDS and outcome.rss_mib < MAX_RSS_MIB


@pytest.mark.parametrize("command", ["inspect", "plan"])
def test_json_output_stays_valid_json_with_the_names_as_they_are(command: str, tmp_path: Path) -> None:
    path = _renamed_layer(tmp_path, HOSTILE)
    args = ["inspect", "--json", str(path)] if command == "inspect" else ["plan", "--json", str(path), "--flatten", "7,7,4"]
    outcome = run_bounded(*args, cwd=tmp_path)
    assert outcome.status == 0, outcome.stderr
    _clean(outcome.stdout)
    document = json.loads(outcome.stdout)
    names = [layer["name"] for layer in document["layers"]] if command == "inspect" else [s["source_layer"] for s in document["steps"]]
    assert HOSTILE in names  # JSON is for programs: the name exactly as stored, encoded by JSON's own escapes


# --- configs are data: verify --keras runs no code from a file --------------------------------

def test_verify_keras_never_runs_a_lambdas_code(tmp_path: Path) -> None:
    """`verify --keras` on a tf_keras full-model .h5 with a Lambda executed the Lambda's stored
    bytecode (a marker file appeared). It is refused by name, before Keras is even imported."""
    from conftest import import_or_skip, run_cli

    tf_keras = import_or_skip("tf_keras")
    marker = tmp_path / "marker"
    # the Lambda's code writes the marker: whoever deserializes and calls it leaves the file behind
    writes_marker = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = tf_keras.layers.Lambda(writes_marker, name="evil")(x)
    outputs = tf_keras.layers.Dense(5, name="fc")(tf_keras.layers.Flatten(name="flat")(x))
    source = tmp_path / "src.h5"
    tf_keras.Model(inputs, outputs).save(source)
    marker.unlink()  # written while the model was built here, in the test
    out = tmp_path / "fcn.h5"
    converted = run_cli("convert", str(source), "-o", str(out), "--flatten", "6,6,4")  # the config is edited as data
    assert converted.returncode == 0, converted.stderr
    line = assert_refused("verify", str(source), str(out), "--keras", cwd=tmp_path, names=source,
                          says="the model config holds a Lambda layer 'evil' (Lambda), whose stored code building the model would run")
    assert "verify without --keras" in line
    assert not marker.exists()
    tf_keras.models.load_model(source, compile=False)  # the file is truly hostile: Keras outside safe mode runs the code
    assert marker.read_text() == "ran"


_SWAP_BEFORE_KERAS = """
import os, sys
import weightport.keras_check as keras_check
chosen = keras_check._keras_for
def swapped(view):  # the source's name is given to a FIFO after its config was checked, before Keras loads it
    os.replace(sys.argv[1], sys.argv[1] + ".moved")
    os.mkfifo(sys.argv[1])
    return chosen(view)
keras_check._keras_for = swapped
from weightport import cli
sys.exit(cli.main(["verify", sys.argv[1], sys.argv[2], "--keras"]))
"""


@pytest.mark.parametrize("name", ["seq__k3.keras", "seq__tfk.h5"])
def test_verify_keras_loads_the_file_it_checked(name: str, tmp_path: Path) -> None:
    """Keras opened the source by name after weightport had checked its config: a FIFO given that
    name in between hung `verify --keras` for ever (and a file swapped in would be built unchecked).
    Keras now opens the very file checked, through its descriptor."""
    from conftest import import_or_skip, run_cli

    import_or_skip("keras" if name.endswith(".keras") else "tf_keras")
    path = _copy(name, tmp_path)
    out = tmp_path / "fcn.h5"
    assert run_cli("convert", str(path), "-o", str(out)).returncode == 0
    command = cli_command()
    result = subprocess.run([command["args"][0], "-c", _SWAP_BEFORE_KERAS, str(path), str(out)], env=command["env"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr  # Keras built the file that was checked, through its descriptor
    assert "agree end to end" in result.stdout and path.is_fifo()  # the FIFO now under the name was never opened


def test_verify_keras_refuses_a_custom_object_by_name(tmp_path: Path) -> None:
    """A Keras 3 config naming a class from outside Keras (which Keras would import) is refused
    by name from the config as data, before Keras is imported."""
    from conftest import run_cli

    source = tmp_path / "custom.keras"
    with zipfile.ZipFile(FIXTURES / "seq__k3.keras") as z:
        config = json.loads(z.read("config.json"))
        pooling = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "MaxPooling2D")
        pooling.update(module="evil_package.layers", registered_name="Evil>MaxPooling2D")
        with zipfile.ZipFile(source, "w") as out:
            for info in z.infolist():
                out.writestr(info, json.dumps(config) if info.filename == "config.json" else z.read(info))
    out = tmp_path / "fcn.weights.h5"
    assert run_cli("convert", str(source), "-o", str(out)).returncode == 0
    assert_refused("verify", str(source), str(out), "--keras", cwd=tmp_path, names=source,
                   says=f"uses the custom object '{pooling['config']['name']}' (MaxPooling2D) from evil_package.layers")


def test_verify_keras_refuses_a_layer_class_keras_does_not_define(tmp_path: Path) -> None:
    """A tf_keras config (which records no module) naming a class tf_keras does not define is
    refused by name once Keras is imported, before anything is built. (Importing Keras takes
    seconds and hundreds of MiB, so this case is held to the outcome, not to the bounds.)"""
    from conftest import import_or_skip, run_cli

    import_or_skip("tf_keras")
    source = _copy("seq__tfk.h5", tmp_path)
    with h5py.File(source, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"].append({"class_name": "MyActivation", "config": {"name": "my_act"}})  # after the head: still converts
        f.attrs["model_config"] = json.dumps(config)
    out = tmp_path / "fcn.h5"
    assert run_cli("convert", str(source), "-o", str(out)).returncode == 0
    result = run_cli("verify", str(source), str(out), "--keras")
    ours = [line for line in result.stderr.splitlines() if line.startswith("weightport")]  # TensorFlow logs its own lines as it loads
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ours == [f"weightport: error: {source}: the model config uses layer class 'MyActivation' ('my_act'), which tf_keras does not define "
                    "(a custom object), so it is not looked up; verify without --keras: the numpy verification runs nothing from the file"]


def test_an_external_link_inside_a_keras_archive_is_refused(tmp_path: Path) -> None:
    """The weights member of a .keras archive is read through the same link checks."""
    weights = _external_in_layers(tmp_path, _fifo(tmp_path))
    path = tmp_path / "linked.keras"
    with zipfile.ZipFile(FIXTURES / "seq__k3.keras") as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            out.writestr(info, weights.read_bytes() if info.filename == "model.weights.h5" else z.read(info))
    assert_refused("inspect", str(path), cwd=tmp_path, names=path, says="/layers/evil is a link to /x in another file")


def test_a_nan_size_in_a_config_cannot_make_json_output_invalid(tmp_path: Path) -> None:
    """`inspect --json` printed NaN and Infinity (which JSON does not allow) from an input_shape
    of [NaN, Infinity, 3]: sizes that are not whole numbers are refused like any damaged config."""
    source = tmp_path / "nan_shape.keras"
    with zipfile.ZipFile(FIXTURES / "seq__k3.keras") as z:
        config = json.loads(z.read("config.json"))
        settings = config["config"]["layers"][0]["config"]
        settings.pop("batch_shape")
        settings["input_shape"] = [float("nan"), float("inf"), 3]
        with zipfile.ZipFile(source, "w") as out:
            for info in z.infolist():
                out.writestr(info, json.dumps(config) if info.filename == "config.json" else z.read(info))
    assert_refused("inspect", "--json", str(source), cwd=tmp_path, names=source, says="has input_shape [nan, inf, 3], not a list of sizes")


def test_the_pairing_table_of_an_error_prints_names_escaped(tmp_path: Path) -> None:
    """The side-by-side table below a pairing error: one row per layer whatever its name holds."""
    source = _renamed_layer(tmp_path, HOSTILE)
    outcome = run_bounded("plan", str(source), "--target", str(FIXTURES / "conv1d__tfk_weights.h5"), cwd=tmp_path)
    assert outcome.status == 2 and outcome.stdout == ""
    _clean(outcome.stderr)
    lines = outcome.stderr.splitlines()
    assert lines[0].startswith(f"weightport: error: {source}: 3 weighted layers in the source, 3 in the target")
    assert len(lines) == 5 and "\\x1b[2J\\x1b[31mdense" in lines[3], outcome.stderr  # the line, the header, 3 rows


def test_a_sweep_prints_file_names_escaped(tmp_path: Path) -> None:
    """A checkpoint sweep reports each file on one line, whatever its name holds."""
    source = tmp_path / "ckpt\nweightport: all 3 layers ok\x1b[2J.keras"
    shutil.copyfile(FIXTURES / "seq__k3.keras", source)
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_bounded("convert", str(source), "--out-dir", str(out), cwd=tmp_path, keras_load=False)
    assert outcome.status == 0, outcome.stderr
    _clean(outcome.stdout + outcome.stderr)
    assert "ckpt\\nweightport: all 3 layers ok\\x1b[2J.keras" in outcome.stdout
    assert os.listdir(out) == [source.name]
