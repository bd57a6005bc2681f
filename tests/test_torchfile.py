"""PyTorch checkpoints (`torch.save`: .pth/.pt/.bin) as sources: read with weightport's own
restricted unpickler, never a full unpickle and never torch; values as torch.load gives them; the
state dict's own order kept; anything but a state dict of tensors refused in one line (exit 2,
nothing written, no code run)."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import FIXTURES, ROOT, import_or_skip
from weightport.budgets import MAX_TENSORS
from weightport.cli import main
from weightport.torchfile import LEGACY, ZIP, load_checkpoint
from weightport.torchpickle import MAX_PICKLE_OPCODES

torch = import_or_skip("torch")
nn = torch.nn
from torch_models import Named, randomized  # noqa: E402  (needs torch)


def _named(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomized(Named(), seed)


def _values(state) -> dict:
    return {name: tensor.detach().numpy() for name, tensor in state.items() if not name.endswith("num_batches_tracked")}


def _read_all(path: Path) -> dict:
    """{state-dict key: values} as weightport reads them, through the view's tensors."""
    with weightport.read(path) as view:
        return {t.name: t.read() for t in view.tensors}


def test_state_dict_keeps_its_registration_order(tmp_path: Path) -> None:
    model = _named()
    path = tmp_path / "named.pth"
    torch.save(model.state_dict(), path)
    with weightport.read(path) as view:
        assert [layer.name for layer in view.layers] == ["stem", "bn", "body", "head"]
        assert view.layout == "torch-pickle"
        assert "registration order" in view.order_note
        assert [t.role for t in view.layers[1].weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
        for layer in view.layers:  # contiguous tensors lie in place in the zip: their bytes at their offset are their values
            for tensor in layer.weights:
                want = model.state_dict()[tensor.name].detach().numpy()
                assert tensor.storage.offset is not None
                raw = np.fromfile(path, dtype=tensor.dtype, count=want.size, offset=tensor.storage.offset).reshape(want.shape)
                np.testing.assert_array_equal(raw, want)
                rows = raw.reshape(-1, raw.shape[-1])
                np.testing.assert_array_equal(tensor.storage.read_rows(np.arange(len(rows))[::-1]), rows[::-1])
    for key, values in _values(model.state_dict()).items():
        np.testing.assert_array_equal(_read_all(path)[key], values)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_a_training_checkpoint_is_unwrapped_and_said(wrapper: str, tmp_path: Path) -> None:
    model = _named(1)
    path = tmp_path / "checkpoint.pt"
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(8, 3, 3, 3)}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}  # as SGD's state_dict()
    torch.save({"epoch": 7, wrapper: model.state_dict(), "optimizer": optimizer}, path)
    with weightport.read(path) as view:
        assert [layer.name for layer in view.layers] == ["stem", "bn", "body", "head"]
        assert f"under key '{wrapper}'" in view.order_note
    for key, values in _values(model.state_dict()).items():
        np.testing.assert_array_equal(_read_all(path)[key], values)


def test_legacy_format_reads_as_torch_load_reads_it(tmp_path: Path) -> None:
    """torch.save's format before PyTorch 1.6 (five pickles, then the storages): the same keys,
    order and values as torch.load, each storage found in place by walking the file."""
    model = _named(2)
    path = tmp_path / "legacy.pth"
    state = {**model.state_dict(), "view.weight": model.state_dict()["stem.weight"][2:5], "t.weight": torch.randn(4, 3).T, "b.weight": torch.randn(3).to(torch.bfloat16)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with weightport.read(path) as view:
        assert [layer.name for layer in view.layers][:4] == ["stem", "bn", "body", "head"]
        assert view.tensors[0].storage.offset is not None  # in place: streamed by the byte mover
    _same_as_torch(path, kind=LEGACY)


def test_tied_views_and_transposed_tensors_read_their_own_values(tmp_path: Path) -> None:
    """Tied weights (two keys, one storage), a view into a bigger storage (an offset inside it)
    and a transposed tensor (strides, no place in the file) each read as what they are."""
    torch.manual_seed(3)
    first, second = nn.Linear(6, 6), nn.Linear(6, 6)
    second.weight = first.weight
    big = torch.randn(10, 6)
    state = {"first.weight": first.weight, "first.bias": first.bias, "second.weight": second.weight, "second.bias": second.bias,
             "third.weight": big[4:], "third.bias": big[0], "fourth.weight": big[:6].T.contiguous().T, "fourth.bias": big[1]}  # fourth: column-major
    path = tmp_path / "tied.pth"
    torch.save(state, path)
    with weightport.read(path) as view:
        tensors = {t.name: t for t in view.tensors}
        assert tensors["first.weight"].storage.offset == tensors["second.weight"].storage.offset
        assert tensors["third.weight"].storage.offset == tensors["third.bias"].storage.offset + 4 * 6 * 4
        assert tensors["fourth.weight"].storage.offset is None  # not contiguous
        np.testing.assert_array_equal(tensors["fourth.weight"].storage.read_rows(np.array([5, 0, 2])), big[:6].numpy()[[5, 0, 2]])
    for key, tensor in state.items():
        np.testing.assert_array_equal(_read_all(path)[key], tensor.detach().numpy())


def test_a_checkpoint_cut_after_it_was_read_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Values of a tensor in place are read from the file, not through the memory map: a file cut
    after reading is an error naming it (reading a map past the file's new end is SIGBUS)."""
    path = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.ones(512, 512), "fc.bias": torch.ones(512)}, path)
    with weightport.read(path) as view:
        weight = view.tensors[0].storage
        assert weight.offset is not None
        np.testing.assert_array_equal(weight.read_rows(np.array([3, 1])), np.ones((2, 512), np.float32))
        os.truncate(path, weight.offset + 4096)
        for reading in (weight.read, lambda: weight.read_rows(np.array([500]))):
            with pytest.raises(weightport.WeightportError) as caught:
                reading()
            assert str(path) in caught.value.line() and "\n" not in caught.value.line()


# --- refusals: one line, exit 2, nothing written, no code run ---------------------------------

class Payload:
    """What an attacker's pickle runs when fully unpickled: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Instance:
    """A class of the training script, pickled as itself."""

    def __init__(self) -> None:
        self.weight = torch.zeros(2)


def _code(path: Path) -> None:
    torch.save({"w.weight": torch.zeros(2, 2), "w.bias": Payload(path.with_name("PWNED"))}, path)


def _instance(path: Path) -> None:
    torch.save({"model": Instance()}, path)


def _not_tensors(path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1, "history": [0.5, 0.4]}, path)


def _some_not_tensors(path: Path) -> None:
    torch.save({"w.weight": torch.zeros(2, 2), "w.step": 3}, path)


def _truncated(path: Path) -> None:
    torch.save(_named().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _compressed(path: Path) -> None:
    """Re-zipped with deflate: torch.save stores members as they are."""
    torch.save(_named().state_dict(), path)
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members:
            out.writestr(name, data)


def _short_storage(path: Path) -> None:
    """A storage's member holds fewer bytes than the pickle declares for it."""
    torch.save({"w.weight": torch.zeros(64, 64)}, path)
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in members:
            out.writestr(name, data[:16] if name.endswith("/data/0") else data)


def _legacy_code(path: Path) -> None:
    torch.save({"w.weight": torch.zeros(2, 2), "w.bias": Payload(path.with_name("PWNED"))}, path, _use_new_zipfile_serialization=False)


def _legacy_short(path: Path) -> None:
    """A legacy file cut short: its storage ends past the file's end."""
    torch.save({"w.weight": torch.zeros(256, 256)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:4096])


def _a_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _opcode_flood(path: Path) -> None:
    """A torch.save zip whose pickle is 1.3 million one-byte opcodes (scanning 16 MB of them took 14 s)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        out.writestr("archive/data.pkl", b"\x80\x02" + b"N" * (MAX_PICKLE_OPCODES + 1) + b".")


def _shared_keys(path: Path) -> None:
    """More keys than weightport converts, all one tensor: a small file (150,000 of them took 13 s, 700 MB)."""
    one = torch.zeros(1)
    torch.save({f"m{i}.weight": one for i in range(MAX_TENSORS + 1)}, path)


# --- pickles written by hand: what torch.save writes, and what a hostile file might ---------

def _text(value: str) -> bytes:
    """BINUNICODE of `value`."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    """LONG1 of `value` (any size)."""
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, numel: int, shape: tuple, stride: tuple, offset: int = 0) -> bytes:
    """A float32 tensor as torch.save pickles it: _rebuild_tensor_v2 of a storage reference."""
    reference = _tuple(_text("storage"), b"ctorch\nFloatStorage\n", _text(key), _text("cpu"), _int(numel)) + b"Q"
    hooks = b"ccollections\nOrderedDict\n)R"
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple(reference, _int(offset), _tuple(*map(_int, shape)), _tuple(*map(_int, stride)), b"\x89", hooks) + b"R"


def _state(*items: bytes) -> bytes:
    """An OrderedDict of (key pickle, value pickle) pairs, as the whole pickle."""
    return b"\x80\x02ccollections\nOrderedDict\n)R(" + b"".join(items) + b"u."


def _archive(path: Path, pickle: bytes, storages: dict) -> None:
    """A torch.save zip holding `pickle` as its data.pkl and `storages` (key -> bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        out.writestr("archive/data.pkl", pickle)
        out.writestr("archive/byteorder", "little")
        out.writestr("archive/version", "3\n")
        for key, data in storages.items():
            out.writestr(f"archive/data/{key}", data)


SIXTEEN = np.arange(16, dtype="<f4")


def _handmade(path: Path) -> None:
    """What torch.save writes for {w.weight: 4x3 view at element 2, w.bias: 4}: read as torch reads it."""
    _archive(path, _state(_text("w.weight"), _tensor("0", 16, (4, 3), (3, 1), 2), _text("w.bias"), _tensor("0", 16, (4,), (1,), 12)), {"0": SIXTEEN.tobytes()})


def _os_system(path: Path) -> None:
    _archive(path, b"\x80\x02cos\nsystem\n" + _tuple(_text(f"touch {path.with_name('PWNED')}")) + b"R.", {})


def _stack_global(path: Path) -> None:
    """builtins.exec named by STACK_GLOBAL from two memoized strings (the scan follows the memo)."""
    named = b"\x8c\x08builtins\x94\x8c\x04exec\x94\x93"  # SHORT_BINUNICODE + MEMOIZE, twice, then STACK_GLOBAL
    _archive(path, b"\x80\x04" + named + _tuple(_text(f"open('{path.with_name('PWNED')}', 'w')")) + b"R.", {})


def _huge_memo(path: Path) -> None:
    """LONG_BINPUT 2**32 - 1: the C unpickler would make (and zero) a memo of 32 GB."""
    _archive(path, b"\x80\x02Nr\xff\xff\xff\xff.", {})


def _deep_key(path: Path) -> None:
    """A tuple nested 300,000 deep as a dict key: hashing it overflows the C stack (a segfault)."""
    _archive(path, b"\x80\x02}" + _text("x") + b"\x85" * 300_000 + b"Ns.", {})


def _deep_list(path: Path) -> None:
    """A list nested 200,000 deep (400,000 opcodes, within the cap) as a state dict's entry."""
    _archive(path, _state(_text("w.weight"), b"]" * 200_000 + b"a" * 199_999), {})


def _bad_rebuild(path: Path) -> None:
    """An allowed rebuilder called with a string for its storage."""
    _archive(path, _state(_text("w.weight"), b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple(_text("storage"), _int(0), _tuple(), _tuple(), b"\x89", b"N") + b"R"), {})


def _missing_entry(path: Path) -> None:
    _archive(path, _state(_text("w.weight"), _tensor("7", 16, (16,), (1,))), {"0": SIXTEEN.tobytes()})


def _past_storage(path: Path) -> None:
    """A 1000x1000 tensor on a storage of 16 values."""
    _archive(path, _state(_text("w.weight"), _tensor("0", 16, (1000, 1000), (1000, 1))), {"0": SIXTEEN.tobytes()})


def _huge_storage(path: Path) -> None:
    """A storage declaring 10**12 values, with 64 bytes in the zip."""
    _archive(path, _state(_text("w.weight"), _tensor("0", 10**12, (16,), (1,))), {"0": SIXTEEN.tobytes()})


def _empty_directory(path: Path) -> None:
    """A zip whose first member is data.pkl but whose directory lists none."""
    _handmade(path)
    data = path.read_bytes()
    directory = struct.unpack("<I", data[-6:-2])[0]  # the end record's offset of the directory
    path.write_bytes(data[:directory] + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0, 0, 0, directory, 0))


CASES = {
    "code": (_code, "names posix.system"),
    "instance": (_instance, "names test_torchfile.Instance"),
    "not-tensors": (_not_tensors, "a dict with keys epoch, lr, history, not a state dict of tensors"),
    "some-not-tensors": (_some_not_tensors, "a dict whose entries w.step (int) are not tensors"),
    "truncated": (_truncated, "truncated"),
    "compressed": (_compressed, "is compressed; torch.save stores members as they are"),
    "short-storage": (_short_storage, "declares 16,384 bytes but the file holds 16 for it"),
    "legacy-code": (_legacy_code, "names posix.system"),
    "legacy-short": (_legacy_short, "of 262,144 bytes extends past the end of the file's 4,096 (truncated file)"),
    "a-tensor": (_a_tensor, "holding a single tensor"),
    "opcode-flood": (_opcode_flood, f"pickle holds more than {MAX_PICKLE_OPCODES:,} opcodes"),
    "shared-keys": (_shared_keys, f"declares {MAX_TENSORS + 1:,} tensors, more than weightport converts"),
    "os-system": (_os_system, "names os.system (code, or an object other than tensors)"),
    "stack-global": (_stack_global, "names builtins.exec"),
    "huge-memo": (_huge_memo, "stores into memo slot 4,294,967,295"),
    "deep-key": (_deep_key, "uses something other than a string or number as a dict key"),
    "deep-list": (_deep_list, "holding a dict with keys w.weight, not a state dict of tensors"),
    "bad-rebuild": (_bad_rebuild, "a tensor rebuilt from something other than a storage of the file"),
    "missing-entry": (_missing_entry, "refers to storage '7', which the file does not hold"),
    "past-storage": (_past_storage, "tensor w.weight of shape 1000x1000 reaches past its storage '0' (16 values)"),
    "empty-directory": (_empty_directory, "its directory lists no members"),
    "huge-storage": (_huge_storage, "storage '0' declares 4,000,000,000,000 bytes but the file holds 64 for it"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_is_not_a_state_dict_is_one_line(case: str, tmp_path: Path, capsys) -> None:
    make, expected = CASES[case]
    source, out = tmp_path / "checkpoint.pth", tmp_path / "out.h5"
    make(source)
    before = source.read_bytes()
    for command in (["inspect", str(source)], ["convert", str(source), "-o", str(out), "--target", str(FIXTURES / "seq__tfk.h5")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"weightport: error: {source}: "), err
        assert expected in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # nothing written, no marker: no code ran
    assert source.read_bytes() == before


def test_a_checkpoint_reads_without_torch(tmp_path: Path) -> None:
    """PyTorch missing (its import blocked): a checkpoint reads all the same."""
    path = tmp_path / "model.pth"
    torch.save(_named().state_dict(), path)
    blocked = "import sys; sys.modules['torch'] = None; from weightport.cli import run; sys.argv[0] = 'weightport'; run()"
    result = subprocess.run([sys.executable, "-c", blocked, "inspect", str(path)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "stem" in result.stdout and "4 weighted layers" in result.stdout, result.stdout


@pytest.mark.parametrize("case", ["code", "instance", "truncated", "compressed", "opcode-flood", "os-system", "stack-global", "huge-memo", "deep-key"])
def test_hostile_files_are_refused_without_torch(case: str, tmp_path: Path) -> None:
    """A damaged zip, or a pickle naming code, is refused from the container and the opcodes
    alone: PyTorch (seconds to import) is never loaded."""
    source = tmp_path / "checkpoint.pth"
    CASES[case][0](source)
    probe = ("import sys; from weightport.cli import main; code = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "inspect", str(source)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2 and CASES[case][1] in result.stderr, result.stderr
    assert result.stderr.endswith("NO-TORCH\n"), result.stderr
    assert not source.with_name("PWNED").exists()


def test_bfloat16_is_given_as_float32_exactly(tmp_path: Path) -> None:
    weight = torch.randn(4, 6).to(torch.bfloat16)
    path = tmp_path / "bf16.pth"
    torch.save({"w.weight": weight, "w.bias": torch.zeros(4)}, path)
    with weightport.read(path) as view:
        tensor = view.tensors[0]
        assert tensor.dtype == np.float32 and tensor.storage.offset is None  # not its bytes: read through the storage
        np.testing.assert_array_equal(tensor.read(), weight.float().numpy())
        np.testing.assert_array_equal(tensor.storage.read_rows(np.array([3, 1])), weight.float().numpy()[[3, 1]])
        assert any("1 bfloat16 tensor given as float32" in note for note in view.notes)


def _timed(args: list, env: dict) -> tuple:
    """(wall seconds, CPU seconds, the result) of `weightport ARGS` run as a child process."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "weightport", *args], capture_output=True, text=True, timeout=60, env=env)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, result


def test_a_hostile_file_is_refused_in_under_a_second(tmp_path: Path) -> None:
    """`weightport inspect` of a .pth whose pickle calls os.system: refused, exit 2, nothing run,
    by a process that spends under a second of CPU (0.3-0.4 s here: Python, numpy and h5py start;
    importing torch alone took 4 s). Its wall time is under a second on a quiet machine; on a
    shared one it is held to no more than reading a tiny Keras file takes beside it (best of three,
    bytecode cached as an installed package has it)."""
    source = tmp_path / "checkpoint.pth"
    _os_system(source)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    refusals, readings = [], []
    for _ in range(3):
        wall, cpu, result = _timed(["inspect", str(source)], env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "names os.system" in result.stderr, result.stderr
        refusals.append((wall, cpu))
        readings.append(_timed(["inspect", str(FIXTURES / "seq__tfk.h5")], env)[0])
    assert min(cpu for _, cpu in refusals) < 1.0, refusals
    assert min(wall for wall, _ in refusals) < max(1.0, 1.5 * min(readings)), (refusals, readings)
    assert not source.with_name("PWNED").exists()


def test_a_handmade_pickle_reads_as_torch_reads_it(tmp_path: Path) -> None:
    """The hand-written pickles above are torch.save's own form (the hostile ones differ only where
    they say): torch.load and weightport read the good one alike, views at their storage offsets."""
    path = tmp_path / "handmade.pth"
    _handmade(path)
    want = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(want["w.weight"].numpy(), SIXTEEN[2:14].reshape(4, 3))
    _same_as_torch(path)


def _same_as_torch(path: Path, key: str = None, kind: str = ZIP) -> None:
    """Every tensor of the state dict (`key`: under that key) as weightport reads it without torch,
    against torch.load's: the same keys in the same order, the same dtype (bfloat16: float32), the same values."""
    loaded = torch.load(path, weights_only=True)
    want = loaded if key is None else loaded[key]
    fd = os.open(path, os.O_RDONLY)
    try:
        got, _ = load_checkpoint(path, fd, kind)
    finally:
        os.close(fd)
    assert [name for name, _ in got] == list(want)
    for name, storage in got:
        tensor = want[name].detach()
        expected = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        values = storage.read()
        assert values.dtype == expected.dtype.newbyteorder(values.dtype.byteorder) if values.dtype.byteorder in "<>" else values.dtype == expected.dtype, name
        np.testing.assert_array_equal(values, expected, err_msg=name)


def _dtypes() -> dict:
    torch.manual_seed(5)
    values = torch.randn(6, 5) * 100
    state = {f"{name}.weight": values.to(getattr(torch, name)) for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool")}
    state["scalar.weight"] = torch.tensor(7, dtype=torch.int64)
    return state


def _views() -> dict:
    """Shared storages, views at storage offsets, strided views (a transpose, a step) and a parameter."""
    torch.manual_seed(6)
    big = torch.randn(10, 6)
    return {"tied.weight": big, "again.weight": big, "rows.weight": big[4:], "row.bias": big[1], "transposed.weight": big[:6].T,
            "stepped.weight": big[2:9:3, 1:5], "column.bias": big[:, 3], "param.weight": nn.Parameter(torch.randn(3, 2))}


def _attributes() -> dict:
    """Tensors carrying Python attributes: pickled through _rebuild_from_type_v2 and _rebuild_parameter_with_state."""
    torch.manual_seed(10)
    weight, bias = torch.randn(3, 2), nn.Parameter(torch.randn(3))
    weight.note, bias.note = "pruned", 1
    return {"w.weight": weight, "w.bias": bias}


def _module() -> dict:
    """nn.Module.state_dict(): an OrderedDict with `_metadata` (its modules' versions) set by BUILD."""
    return _named(7).state_dict()


@pytest.mark.parametrize("make", [_dtypes, _views, _attributes, _module], ids=["dtypes", "views", "attributes", "module"])
def test_torch_saved_state_dicts_read_as_torch_load_reads_them(make, tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    torch.save(make(), path)
    _same_as_torch(path)


def test_a_training_checkpoint_with_nested_extras_reads_as_torch_load_reads_it(tmp_path: Path) -> None:
    """The state dict under a wrapper key, beside what training scripts save: nested dicts and
    lists, a dtype, a torch.Size, a device, bytes, numbers."""
    path = tmp_path / "checkpoint.pt"
    extras = {"args": {"lr": 0.1, "layers": [1, 2, {"deep": (3, 4)}], "dtype": torch.float16, "size": torch.Size([2, 3]), "device": torch.device("cpu"),
                       "tag": b"\x00\xffbytes"}, "epoch": 3, "best": None}
    torch.save({"model_state_dict": _named(8).state_dict(), **extras}, path)
    _same_as_torch(path, "model_state_dict")


def _big_endian(little: Path, big: Path) -> None:
    """`little` (float32 storages only) as a big-endian machine's torch.save writes it: each storage byte-swapped, byteorder 'big'."""
    with zipfile.ZipFile(little) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as out:
        for name, data in members:
            if "/data/" in name:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            out.writestr(name, b"big" if name.endswith("/byteorder") else data)


def test_a_big_endian_checkpoint_reads_and_converts_as_the_little_endian_one(tmp_path: Path) -> None:
    """byteorder 'big': values read as torch.load reads them (it swaps them), and the same output."""
    torch.manual_seed(9)
    little, big = tmp_path / "little.pth", tmp_path / "big.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(196, 8), nn.Linear(8, 5)).state_dict(), little)
    _big_endian(little, big)
    _same_as_torch(big)
    target = str(FIXTURES / "seq__tfk.h5")
    for source in (little, big):
        assert main(["convert", str(source), "--target", target, "-o", str(source.with_suffix(".h5")), "--quiet"]) == 0
    with weightport.read(tmp_path / "little.h5") as one, weightport.read(tmp_path / "big.h5") as other:
        for a, b in zip(one.tensors, other.tensors, strict=True):
            np.testing.assert_array_equal(a.read(), b.read())
