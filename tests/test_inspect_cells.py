"""Issue 10, case 8: `inspect` keeps every cell readable, and a refusal names its real cause.

Both on Keras 3 models built here: a DenseNet-like block, whose layers are fed through long
chains of weightless layers, and a classifier whose Flatten reaches the Dense only through a
Concatenate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_or_skip, run_cli

keras = import_or_skip("keras")


@pytest.fixture(scope="module")
def dense_block(tmp_path_factory) -> Path:
    """Conv -> 20 weightless layers (Activation, Dropout, Concatenate, as in a DenseNet block,
    then MaxPooling2D) -> Conv."""
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = L.Activation("relu")(x)
    for _ in range(6):
        x = L.Concatenate()([L.Dropout(0.1)(x), inputs])
        x = L.Activation("relu")(x)
    x = L.Conv2D(5, 1, name="transition")(L.MaxPooling2D()(x))
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    path = tmp_path_factory.mktemp("block") / "block.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_long_fed_by_chains_are_shortened_with_a_count(dense_block: Path) -> None:
    doc = json.loads(run_cli("inspect", str(dense_block), "--json").stdout)
    chain = {layer["name"]: layer["fed_by"] for layer in doc["layers"]}["transition"]
    assert len(chain) == 20 and chain[0] == "Activation" and chain[-1] == "MaxPooling2D"  # the JSON keeps it whole
    table = run_cli("inspect", str(dense_block))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if " transition " in line)
    assert "Activation > ... (+18) > MaxPooling2D" in row
    assert max(len(line) for line in table.stdout.splitlines()[4:]) <= 120


def test_a_concatenate_between_flatten_and_dense_is_named(tmp_path: Path) -> None:
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    features = L.Conv2D(4, 3, name="conv")(inputs)
    joined = L.Concatenate(name="join")([L.Flatten(name="flat")(features), L.GlobalMaxPooling2D(name="gmp")(features)])
    outputs = L.Dense(3, name="fc")(L.Dropout(0.5)(joined))
    path = tmp_path / "joined.keras"
    keras.Model(inputs, outputs).save(path)
    result = run_cli("plan", str(path))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "has none" not in lines[0], result.stderr
    assert "Concatenate 'join' stands between Flatten 'flat' and Dense 'fc'" in lines[0], result.stderr
