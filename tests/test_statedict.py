"""State dicts as layers (weightport/statedict.py): grouping, natural order, inferred classes and
roles, checked on hand-made entries and on real PyTorch models' state dicts."""

from __future__ import annotations

import random
import time
from typing import Dict, List, Sequence, Tuple

import pytest

from conftest import import_or_skip
from weightport.statedict import ROOT, Entry, infer_class, ignored_note, modules, natural_order, split_name


def entries(spec: Sequence[Tuple[str, Tuple[int, ...]]]) -> List[Entry]:
    return [Entry(name, shape, "float32") for name, shape in spec]


def summary(spec: Sequence[Tuple[str, Tuple[int, ...]]]) -> List[Tuple[str, str, List[Tuple[str, str]]]]:
    return [(m.path, m.class_name, [(e.name.rsplit(".", 1)[-1], role) for e, role in m.tensors]) for m in modules(entries(spec))]


BN = [("bn.weight", (8,)), ("bn.bias", (8,)), ("bn.running_mean", (8,)), ("bn.running_var", (8,)), ("bn.num_batches_tracked", ())]


def test_modules_group_by_path_in_order_of_first_appearance() -> None:
    spec = [("b.weight", (4, 3)), ("a.weight", (2, 4)), ("b.bias", (4,)), ("a.bias", (2,))]
    assert summary(spec) == [("b", "Linear", [("weight", "kernel"), ("bias", "bias")]),
                             ("a", "Linear", [("weight", "kernel"), ("bias", "bias")])]


def test_split_name_gives_the_module_path_and_the_attribute() -> None:
    assert split_name("features.10.weight") == ("features.10", "weight")
    assert split_name("layer1.0.downsample.1.running_var") == ("layer1.0.downsample.1", "running_var")
    assert split_name("weight") == (ROOT, "weight")


def test_natural_order_compares_numbered_parts_as_numbers() -> None:
    keys = ["features.10.weight", "features.2.weight", "features.0.weight", "classifier.0.weight", "layer10.conv.weight", "layer2.conv.weight"]
    assert natural_order(sorted(keys)) == ["classifier.0.weight", "features.0.weight", "features.2.weight", "features.10.weight",
                                           "layer2.conv.weight", "layer10.conv.weight"]


def test_natural_order_puts_a_modules_attributes_in_registration_order() -> None:
    names = [name for name, _ in BN] + ["bn.extra"]
    assert natural_order(sorted(names)) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "bn.extra"]


def test_natural_order_is_total_on_mixed_parts() -> None:
    """Parts that are text in one key and numbers in another, prefixes, leading zeros and the
    root's own tensors still sort (no str-int comparison), deterministically."""
    names = ["a.01.weight", "a.1.weight", "a.b.weight", "a.weight", "weight", "a.b2c.weight", "a.b10c.weight", "a.1.0.bias"]
    ordered = natural_order(names)
    for _ in range(5):
        assert natural_order(random.sample(names, len(names))) == ordered
    assert ordered[0] == "weight"
    assert ordered.index("a.b2c.weight") < ordered.index("a.b10c.weight")
    assert ordered.index("a.1.weight") < ordered.index("a.1.0.bias")


def test_natural_order_takes_numbers_longer_than_python_converts() -> None:
    """A file's key may hold a 5,000-digit run, which int() refuses (past 4,300 digits): it is
    still ordered as the number it writes, at once, not an internal error."""
    huge = "9" * 5000
    names = [f"features.{huge}.weight", f"features.1{huge}.weight", "features.10.weight", f"features.0{huge}.bias", "features.2.weight"]
    start = time.process_time()
    assert natural_order(names) == ["features.2.weight", "features.10.weight", f"features.{huge}.weight", f"features.0{huge}.bias",
                                    f"features.1{huge}.weight"]
    assert time.process_time() - start < 0.1


@pytest.mark.parametrize("spec, expected", [
    ({"weight": (16, 3, 3, 3), "bias": (16,)}, "Conv2d"),
    ({"weight": (16, 3, 5)}, "Conv1d"),
    ({"weight": (16, 3, 3, 3, 3), "bias": (16,)}, "Conv3d"),
    ({"weight": (32, 1, 3, 3), "bias": (32,)}, "Conv2d"),  # depthwise: the target's class decides
    ({"weight": (3, 16, 3, 3), "bias": (16,)}, "ConvTranspose2d"),
    ({"weight": (10, 20), "bias": (10,)}, "Linear"),
    ({"weight": (1000, 64)}, "Linear"),  # an Embedding looks the same
    ({"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,)}, "BatchNorm"),
    ({"running_mean": (8,), "running_var": (8,)}, "BatchNorm"),  # affine=False
    ({"weight": (8,), "bias": (8,)}, "Norm"),
    ({"weight": (8,)}, None),  # PReLU or a LayerNorm without bias
    ({"weight": (8,), "bias": (4,)}, None),
    ({"weight": (10, 20), "bias": (20,)}, None),
    ({"weight": (16, 3, 3, 3), "bias": (7,)}, None),
    ({"weight": (2, 3, 4, 5, 6, 7)}, None),
    ({"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (4,)}, None),
    ({"in_proj_weight": (24, 8), "in_proj_bias": (24,)}, None),
    ({"weight": (4, 4), "bias": (4, 1)}, None),
])
def test_class_is_inferred_from_names_and_shapes(spec: Dict[str, Tuple[int, ...]], expected: str) -> None:
    assert infer_class(spec) == expected


def test_roles_are_kerass_names_for_the_same_tensors() -> None:
    spec = [("conv.weight", (16, 3, 3, 3)), ("conv.bias", (16,))] + BN + [("ln.weight", (8,)), ("ln.bias", (8,)),
                                                                          ("fc.weight", (10, 8)), ("odd.weight", (8,)), ("odd.bias", (4,))]
    assert summary(spec) == [
        ("conv", "Conv2d", [("weight", "kernel"), ("bias", "bias")]),
        ("bn", "BatchNorm", [("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")]),
        ("ln", "Norm", [("weight", "gamma"), ("bias", "beta")]),
        ("fc", "Linear", [("weight", "kernel")]),
        ("odd", None, [("weight", None), ("bias", "bias")]),
    ]


def test_num_batches_tracked_is_ignored_and_said() -> None:
    found = modules(entries(BN + [("lonely.num_batches_tracked", ())]))
    assert [m.path for m in found] == ["bn"]  # a module with nothing else is no layer
    assert "num_batches_tracked" not in [e.name.rsplit(".", 1)[-1] for m in found for e, _ in m.tensors]
    note = ignored_note(entries(BN + [("lonely.num_batches_tracked", ())]))
    assert note is not None and note.startswith("2 num_batches_tracked tensors ignored")
    assert ignored_note(entries([("fc.weight", (2, 2))])) is None


def _torch_spec(model) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def test_a_real_sequential_models_order_is_its_natural_order() -> None:
    """torchvision's VGG16 state dict, sorted as safetensors sorts it, comes back in the model's
    own order within each Sequential; the named parts themselves come alphabetically (classifier
    before features), which is why a reader says the order is assumed. Every module is classed
    as PyTorch built it."""
    torch = import_or_skip("torch")
    torchvision = import_or_skip("torchvision")
    with torch.device("meta"):  # names and shapes only: no 553 MB of values
        model = torchvision.models.vgg16_bn(weights=None)
    spec = _torch_spec(model)
    names = [name for name, _ in spec]
    in_model = [n for n in names if n.startswith("classifier.")] + [n for n in names if n.startswith("features.")]
    assert natural_order(sorted(names)) == in_model
    assert natural_order(sorted(names)) != names
    found = modules(entries(spec))
    built = dict(model.named_modules())
    for module in found:
        actual = type(built[module.path]).__name__
        assert module.class_name == ("BatchNorm" if actual.startswith("BatchNorm") else actual), module.path
    assert len(found) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)) for m in model.modules())


def test_real_modules_of_every_kind_are_classed_as_built() -> None:
    torch = import_or_skip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8), nn.Conv3d(8, 4, 3, bias=False), nn.ConvTranspose2d(4, 6, 3),
                          nn.Conv2d(6, 6, 3, groups=6), nn.LayerNorm(6), nn.GroupNorm(2, 6), nn.Linear(6, 2))
    classes = [m.class_name for m in modules(entries(_torch_spec(model)))]
    assert classes == ["Conv1d", "BatchNorm", "Conv3d", "ConvTranspose2d", "Conv2d", "Norm", "Norm", "Linear"]
