"""PyTorch checkpoints (`torch.save`: .pth/.pt/.bin) as sources: read with the weights-only
unpickler, never a full unpickle; the state dict's own order kept; anything but a state dict of
tensors refused in one line (exit 2, nothing written, no code run)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import FIXTURES, ROOT, import_or_skip
from weightport.budgets import MAX_TENSORS
from weightport.cli import main
from weightport.torchfile import MAX_PICKLE_OPCODES

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


def test_legacy_format_reads_the_same(tmp_path: Path) -> None:
    model = _named(2)
    path = tmp_path / "legacy.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    with weightport.read(path) as view:
        assert [layer.name for layer in view.layers] == ["stem", "bn", "body", "head"]
        assert all(t.storage.offset is None for t in view.tensors)  # read by torch into memory, not in place
    for key, values in _values(model.state_dict()).items():
        np.testing.assert_array_equal(_read_all(path)[key], values)


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


def _legacy_short(path: Path) -> None:
    """A legacy file cut short: its pickle declares storages of more bytes than the file has."""
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


CASES = {
    "code": (_code, "names posix.system"),
    "instance": (_instance, "names test_torchfile.Instance"),
    "not-tensors": (_not_tensors, "a dict with keys epoch, lr, history, not a state dict of tensors"),
    "some-not-tensors": (_some_not_tensors, "a dict whose entries w.step (int) are not tensors"),
    "truncated": (_truncated, "truncated"),
    "compressed": (_compressed, "is compressed; torch.save stores members as they are"),
    "short-storage": (_short_storage, "declares 16,384 bytes but its zip member holds 16"),
    "legacy-short": (_legacy_short, "declares storages of more than its 4,096 bytes"),
    "a-tensor": (_a_tensor, "holding a single tensor"),
    "opcode-flood": (_opcode_flood, f"pickle holds more than {MAX_PICKLE_OPCODES:,} opcodes"),
    "shared-keys": (_shared_keys, f"declares {MAX_TENSORS + 1:,} tensors, more than weightport converts"),
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


def test_without_torch_a_checkpoint_says_how_to_read_it(tmp_path: Path) -> None:
    """PyTorch missing: one line saying what the file is and which extra reads it."""
    path = tmp_path / "model.pth"
    torch.save(_named().state_dict(), path)
    blocked = "import sys; sys.modules['torch'] = None; from weightport.cli import run; sys.argv[0] = 'weightport'; run()"
    result = subprocess.run([sys.executable, "-c", blocked, "inspect", str(path)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "a PyTorch checkpoint (torch.save zip)" in result.stderr and "pip install weightport[torch]" in result.stderr


@pytest.mark.parametrize("case", ["code", "instance", "truncated", "compressed", "opcode-flood"])
def test_hostile_files_are_refused_before_torch_is_imported(case: str, tmp_path: Path) -> None:
    """A damaged zip, or a pickle naming code, is refused from the container and the opcodes
    alone: PyTorch (seconds to import) is never loaded, so refusing costs well under a second."""
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
