"""A hostile uploader's PyTorch checkpoints: pickles small on disk whose allowed opcodes and
stand-ins would cost far more than their size (each opcode repeating work on one big object it
fetches from the memo), refused or read within the bounds of every hostile input (under 2 s of
CPU, under 200 MiB, one line, exit 2), each run in a child process."""

from __future__ import annotations

import struct
from pathlib import Path

from test_hostile_inputs import CPU_SECONDS, MAX_RSS_MIB, assert_refused, run_bounded
from test_torchfile import SIXTEEN, _archive, _handmade, _int, _tensor, _text
from weightport.torchpickle import MAX_PICKLE_OPCODES

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9\x20j\xa8P\x19."


def _beside_a_state_dict(path: Path, junk: bytes) -> None:
    """A training checkpoint {'junk': <junk>, 'state_dict': {'w.weight': 16 values}}: `junk` is
    what the pickle spends its opcodes on."""
    state = b"ccollections\nOrderedDict\n)R(" + _text("w.weight") + _tensor("0", 16, (16,), (1,)) + b"u"
    _archive(path, b"\x80\x02}(" + _text("junk") + junk + _text("state_dict") + state + b"u.", {"0": SIXTEEN.tobytes()})


def test_bytes_encoded_again_and_again_from_one_string_are_refused(tmp_path: Path) -> None:
    """`_codecs.encode` (how protocol 2 pickles bytes) called 400 times on one memoized 1 MB
    string: 400 MB made from a 1 MB file (a 4 MB one made 8 GB, read as a success)."""
    source = tmp_path / "model.pth"
    string = b"X" + struct.pack("<I", 1 << 20) + b"a" * (1 << 20)
    setup = b"c_codecs\nencode\nq\x000" + string + _text("latin1") + b"\x86q\x010"
    _beside_a_state_dict(source, setup + b"](" + b"h\x00h\x01R" * 400 + b"e")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="_codecs.encode")


def test_one_big_state_built_onto_many_ordered_dicts_reads_in_bounds(tmp_path: Path) -> None:
    """BUILD of one memoized 20,000-entry dict onto 400 OrderedDicts: the C unpickler copies it
    into each one's attributes (a 740 KB file took 11 GB and did not end)."""
    source = tmp_path / "model.pth"
    big = b"}(" + b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(20_000)) + b"uq\x020"
    _beside_a_state_dict(source, b"ccollections\nOrderedDict\nq\x030" + big + b"](" + b"h\x03)Rh\x02b" * 400 + b"e")
    outcome = run_bounded("inspect", str(source), cwd=tmp_path)
    assert outcome.status == 0 and "w.weight" in outcome.stdout, outcome
    assert outcome.cpu < CPU_SECONDS and outcome.rss_mib < MAX_RSS_MIB, outcome


def test_a_device_called_with_a_huge_argument_tuple_is_refused(tmp_path: Path) -> None:
    """torch.device called 2,000 times with one memoized tuple of 100,000 items."""
    source = tmp_path / "model.pth"
    arguments = b"(" + _text("cpu") + b"N" * 100_000 + b"tq\x020"
    _beside_a_state_dict(source, b"ctorch\ndevice\nq\x010" + arguments + b"](" + b"h\x01h\x02R" * 2_000 + b"e")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="damaged PyTorch checkpoint")


def test_one_tensor_dict_under_many_keys_is_judged_once(tmp_path: Path) -> None:
    """A dict of 12,000 keys whose values are all one memoized dict of 12,000 tensors: each value
    checked in full is 144 million checks."""
    source = tmp_path / "model.pth"
    tensors = b"}(" + b"".join(_text(f"m{i}.weight") + b"h\x01" for i in range(12_000)) + b"uq\x020"
    outer = b"}(" + b"".join(_text(f"copy{i}") + b"h\x02" for i in range(12_000)) + b"u."
    _archive(source, b"\x80\x02" + _tensor("0", 16, (16,), (1,)) + b"q\x010" + tensors + outer, {"0": SIXTEEN.tobytes()})
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="not a state dict of tensors")


def test_a_legacy_protocol_number_of_thousands_of_digits_is_refused_as_bad_input(tmp_path: Path) -> None:
    """A legacy file whose protocol version is a 6,000-digit number: shown, it would be a
    ValueError (Python's limit on int-to-text), exit 1."""
    source = tmp_path / "model.pth"
    version = b"\x80\x02" + b"\x8b" + struct.pack("<i", 2_500) + (10**6000).to_bytes(2_500, "little") + b"."
    source.write_bytes(_LEGACY_MAGIC + version + b"\x80\x02}." * 2 + b"\x80\x02].")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="legacy torch.save file of protocol")


def test_a_megabyte_number_as_a_dict_key_again_and_again_is_refused(tmp_path: Path) -> None:
    """LONG4 of a 1 MB number, memoized, then set as a dict key 100,000 times (within the opcode
    cap): Python hashes an int anew each time (a string keeps its hash); 300,000 times took 180 s
    of CPU in one C call that not even SIGTERM ended, from a 2 MB file. A state dict's keys are strings."""
    source = tmp_path / "model.pth"
    number = b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20)
    _beside_a_state_dict(source, number + b"q\x000}(" + b"h\x00N" * 100_000 + b"u")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="as a dict key")


def test_a_directory_offset_past_the_end_is_refused_as_damaged(tmp_path: Path) -> None:
    """The end record says the directory starts at 2 GB in a 1 KB file: zipfile reads the directory
    where it lies and shifts every member's offset below zero by the lie (a seek to a negative
    offset: OSError, exit 1)."""
    source = tmp_path / "model.pth"
    _handmade(source)
    data = source.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    source.write_bytes(data[:end + 16] + struct.pack("<I", 1 << 31) + data[end + 20:])
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="damaged zip entry for archive/data.pkl")


def test_numbers_that_hash_alike_are_refused_as_dict_keys(tmp_path: Path) -> None:
    """20,000 keys k * (2**61 - 1): Python hashes an int modulo 2**61 - 1, so all hash to 0 and
    every insertion compares with all before it (a 520 KB file of 40,000: 24 s of CPU, read as a
    success). Below 2**61 - 1 distinct numbers hash apart; a state dict's keys are strings."""
    source = tmp_path / "model.pth"
    keys = b"".join(_int(k * ((1 << 61) - 1)) + b"N" for k in range(1, 20_001))
    _beside_a_state_dict(source, b"}(" + keys + b"u")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="as a dict key")


def test_more_calls_than_a_state_dict_makes_are_refused(tmp_path: Path) -> None:
    """One memoized tensor rebuilt 318,000 times (four opcodes each, under the opcode cap): a
    1.6 MB file took 4 s of CPU. torch.save writes a few calls per tensor (its rebuild, its
    hooks' OrderedDict, a Parameter's), and no more tensors than storage references."""
    source = tmp_path / "model.pth"
    hooks = b"ccollections\nOrderedDict\n)R"
    reference = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu") + _int(16) + b"tQ"
    arguments = b"(" + reference + _int(0) + b"(" + _int(16) + b"t(" + _int(1) + b"t\x89" + hooks + b"tq\x010"
    _beside_a_state_dict(source, b"ctorch._utils\n_rebuild_tensor_v2\nq\x000" + arguments + b"](" + b"h\x00h\x01R" * 318_000 + b"e")
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="calls")


def test_a_pickle_at_its_opcode_cap_is_refused_in_bounds(tmp_path: Path) -> None:
    """A tuple nested one opcode short of the cap deep (TUPLE1 after TUPLE1): the costliest pickle
    the caps let through, scanned whole in Python, then unpickled (1,280,000 opcodes took 2.2-2.4 s)."""
    source = tmp_path / "model.pth"
    _archive(source, b"\x80\x02K\x01" + b"\x85" * (MAX_PICKLE_OPCODES - 3) + b".", {})
    assert_refused("inspect", str(source), cwd=tmp_path, names=source, says="not a state dict of tensors")
