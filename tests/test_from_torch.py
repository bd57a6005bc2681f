"""PyTorch weights into Keras models, proved against real PyTorch forwards (random init, no
download): a small CNN with BatchNorm, a depthwise conv, a transposed conv and a Linear after an
NCHW flatten, from `.pth` and from `.safetensors`, into Keras 3 and tf_keras; a model of named
modules whose order only the `.pth` keeps; torchvision's VGG16 into keras.applications' VGG16
and into its fully-convolutional twin."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weightport
from conftest import import_or_skip, keras_required, run_cli, scratch
from weightport.cli import main
from weightport.errors import WeightportError

torch = import_or_skip("torch")
safetensors_torch = import_or_skip("safetensors.torch")
keras = import_or_skip("keras")
tf_keras = import_or_skip("tf_keras")
nn = torch.nn
from torch_models import Named, randomized  # noqa: E402  (needs torch)


def relative_error(got, want) -> float:
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _torch_out(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    """The PyTorch model on a channels_last batch (transposed to NCHW), its output channels last."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


# --- a small CNN: BatchNorm, depthwise, transposed conv, NCHW flatten -------------------------

def small_torch(seed: int = 0) -> nn.Module:
    """Numbered modules (a Sequential), so the natural order of a .safetensors file is the model's."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, groups=8), nn.ReLU(),  # depthwise, multiplier 2
        nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1), nn.ReLU(),  # 6x6 -> 12x12, cropped 1 on each side as Keras's "same"
        nn.Flatten(), nn.Linear(6 * 12 * 12, 10),  # NCHW flatten: the Linear sees chw
    )
    return randomized(model, seed)


def small_keras(K, units: int = 10) -> "keras.Model":
    """The same network in Keras, channels_last (its Flatten lists hwc); `units`: its last Dense's."""
    x = inputs = K.Input((8, 8, 3))
    x = K.layers.Conv2D(8, 3, padding="same")(x)
    x = K.layers.BatchNormalization(epsilon=1e-5)(x)
    x = K.layers.ReLU()(x)
    x = K.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)
    x = K.layers.ReLU()(x)
    x = K.layers.Conv2DTranspose(6, 4, strides=2, padding="same")(x)
    x = K.layers.ReLU()(x)
    x = K.layers.Flatten()(x)
    return K.Model(inputs, K.layers.Dense(units)(x))


def _save_target(K, model, folder: Path) -> Path:
    """The Keras model as a file weightport reads its graph from: .keras (Keras 3), full-model .h5 (tf_keras)."""
    target = folder / ("target.keras" if K is keras else "target.h5")
    model.save(str(target))
    return target


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    with scratch(tmp_path_factory, "small") as folder:
        model = small_torch()
        torch.save(model.state_dict(), folder / "small.pth")
        safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "small.safetensors"))
        x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
        yield folder, model, x, _torch_out(model, x)


@pytest.mark.parametrize("source", ["small.pth", "small.safetensors"])
@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_small_cnn_outputs_equal_pytorch(small, source: str, flavour: str) -> None:
    folder, _, x, want = small
    K = keras if flavour == "k3" else tf_keras
    K.backend.clear_session()
    model = small_keras(K)
    target = _save_target(K, model, _mkdir(folder / f"{flavour}-{source}"))
    out = target.with_name("converted.weights.h5" if K is keras else "converted.h5")
    plan = weightport.convert(folder / source, out, target=target, force=True)
    rules = [(step.target_layer, step.rule) for step in plan.steps if step.role in ("kernel", "depthwise_kernel")]
    assert [rule for _, rule in rules] == ["torch-conv", "torch-depthwise", "torch-conv-transpose", "torch-linear-flatten"], rules
    assert plan.verification is not None and plan.verification.ok
    assert any("epsilon 1e-05, PyTorch's default" in note for note in plan.notes), plan.notes
    model.load_weights(str(out))
    assert relative_error(model(x), want) < 1e-5


def _mkdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def test_verify_proves_the_output_with_pytorch_semantics(small, tmp_path: Path, capsys) -> None:
    """`verify SRC OUT` for a .pth source: passes on the output, fails (exit 1) on an output
    whose Dense rows were left in PyTorch's chw order."""
    folder, _, _, _ = small
    keras.backend.clear_session()
    target = _save_target(keras, small_keras(keras), tmp_path)
    out = tmp_path / "out.keras"
    weightport.convert(folder / "small.pth", out, target=target)
    assert main(["verify", str(folder / "small.pth"), str(out)]) == 0
    report = capsys.readouterr().out
    assert "PyTorch Linear on the window flattened chw vs Dense after Flatten (hwc)" in report, report
    loaded = keras.models.load_model(str(out))
    dense = loaded.layers[-1]
    kernel, bias = dense.get_weights()
    chw = small[1][-1].weight.detach().numpy().T  # rows in PyTorch's order: the classic mistake
    dense.set_weights([chw, bias])
    wrong = tmp_path / "wrong.keras"
    loaded.save(str(wrong))
    assert main(["verify", str(folder / "small.pth"), str(wrong)]) == 1
    capsys.readouterr()


def test_a_wrong_epsilon_is_said(small, tmp_path: Path) -> None:
    keras.backend.clear_session()
    model = small_keras(keras)
    model.layers[2].epsilon = 1e-3
    target = tmp_path / "eps.keras"
    model.save(str(target))
    plan = weightport.plan(small[0] / "small.pth", target)
    note = next(n for n in plan.notes if "epsilon" in n)
    assert "epsilon 0.001 in the target, PyTorch's default is 1e-05" in note and "outputs differ by that" in note


# --- --units: a subset of a PyTorch module's output units ----------------------------------

@pytest.mark.parametrize("source, spec, kept", [("small.pth", "0,3,7,9", [0, 3, 7, 9]), ("small.safetensors", "1:10", list(range(1, 10)))])
@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_units_keep_some_outputs_of_the_last_linear(small, source: str, spec: str, kept: list, flavour: str, tmp_path: Path) -> None:
    """The last Linear (10 outputs, after an NCHW flatten) cut to some of its units: the Keras
    model with that many gives exactly PyTorch's outputs at those units; `verify` proves it and
    catches other units."""
    folder, _, x, want = small
    K = keras if flavour == "k3" else tf_keras
    K.backend.clear_session()
    model = small_keras(K, len(kept))
    target = _save_target(K, model, tmp_path)
    out = tmp_path / ("converted.weights.h5" if K is keras else "converted.h5")
    plan = weightport.convert(folder / source, out, target=target, units={"8": spec})
    head = [(s.role, s.rule, s.params.get("axis"), s.params.get("rule")) for s in plan.steps if s.source_layer == "8"]
    assert head == [("kernel", "units", 0, "torch-linear-flatten"), ("bias", "units", 0, "copy")], head
    assert plan.verification is not None and plan.verification.ok
    model.load_weights(str(out))
    assert relative_error(model(x), want[:, kept]) < 1e-5
    assert weightport.verify(folder / source, out, units={"8": spec}).ok
    other = ",".join(str((i + 1) % 10) for i in kept)
    assert not weightport.verify(folder / source, out, units={"8": other}).ok  # the wrong units are caught


def test_units_of_a_transposed_conv_are_its_second_axis(tmp_path: Path) -> None:
    """A ConvTranspose2d's weight is (in, out, *k): its units are kept along its second axis;
    Keras 3 then computes PyTorch's outputs at those channels."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1)).eval()
    torch.save(model.state_dict(), tmp_path / "up.pth")
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype("float32")
    want = _torch_out(model, x)
    keras.backend.clear_session()
    inputs = keras.Input((8, 8, 3))
    target_model = keras.Model(inputs, keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same")(keras.layers.Conv2D(4, 3)(inputs)))
    target_model.save(str(tmp_path / "up.keras"))
    plan = weightport.convert(tmp_path / "up.pth", tmp_path / "up.weights.h5", target=tmp_path / "up.keras", units={"1": "2:5"})
    assert [(s.params["axis"], s.params["rule"]) for s in plan.steps if s.rule == "units"] == [(1, "torch-conv-transpose"), (0, "copy")]
    target_model.load_weights(str(tmp_path / "up.weights.h5"))
    assert relative_error(target_model(x), want[..., 2:5]) < 1e-5


def test_units_of_a_depthwise_conv_or_a_norm_are_refused(small, tmp_path: Path) -> None:
    """No subset of a depthwise conv's outputs is exact (each reads its own input channel), and a
    BatchNorm has no units: one-line errors (exit 2) naming the layer pair or the layer."""
    folder = small[0]
    keras.backend.clear_session()
    target = _save_target(keras, small_keras(keras), tmp_path)
    result = run_cli("plan", str(folder / "small.pth"), "--target", str(target), "--units", "3=0:8")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "layer pair 3 (Conv2d) -> depthwise_conv2d (DepthwiseConv2D) is a depthwise conv" in result.stderr
    assert "leave --units 3 out" in result.stderr
    result = run_cli("plan", str(folder / "small.safetensors"), "--target", str(target), "--units", "1=0:2")
    assert result.returncode == 2 and "1 (BatchNorm) has no output units to choose" in result.stderr, result.stderr
    result = run_cli("plan", str(folder / "small.safetensors"), "--target", str(target), "--units", "8=5:11")
    assert result.returncode == 2 and "outside the layer's 10 units" in result.stderr, result.stderr


# --- named modules: only the .pth keeps their order ------------------------------------------

def named_keras(K):
    x = inputs = K.Input((8, 8, 3))
    x = K.layers.Conv2D(8, 3, name="stem")(x)
    x = K.layers.BatchNormalization(epsilon=1e-5, name="bn")(x)
    x = K.layers.ReLU()(x)
    x = K.layers.DepthwiseConv2D(3, name="body")(x)
    x = K.layers.ReLU()(x)
    return K.Model(inputs, K.layers.Dense(5, name="head")(K.layers.Flatten()(x)))


def test_named_modules_keep_their_order_only_in_the_pth(tmp_path: Path) -> None:
    model = randomized(Named(), 5)
    torch.save(model.state_dict(), tmp_path / "named.pth")
    safetensors_torch.save_file(dict(model.state_dict()), str(tmp_path / "named.safetensors"))
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype("float32")
    want = _torch_out(model, x)
    keras.backend.clear_session()
    target_model = named_keras(keras)
    target = tmp_path / "named.keras"
    target_model.save(str(target))

    weightport.convert(tmp_path / "named.pth", tmp_path / "from_pth.weights.h5", target=target)
    target_model.load_weights(str(tmp_path / "from_pth.weights.h5"))
    assert relative_error(target_model(x), want) < 1e-5

    with pytest.raises(WeightportError, match="maps="):  # alphabetical: body, bn, head, stem do not pair in position
        weightport.convert(tmp_path / "named.safetensors", tmp_path / "from_st.weights.h5", target=target)
    maps = {name: name for name in ("stem", "bn", "body", "head")}
    weightport.convert(tmp_path / "named.safetensors", tmp_path / "from_st.weights.h5", target=target, maps=maps)
    target_model.load_weights(str(tmp_path / "from_st.weights.h5"))
    assert relative_error(target_model(x), want) < 1e-5


def test_a_state_dict_alone_derives_no_twin_and_an_unknown_window_is_refused(small, tmp_path: Path) -> None:
    folder = small[0]
    with pytest.raises(WeightportError, match="no model to derive a Keras twin from"):
        weightport.plan(folder / "small.pth")
    keras.backend.clear_session()
    weights_only = tmp_path / "target.weights.h5"  # no config: what feeds the Dense is unknown
    small_keras(keras).save_weights(str(weights_only))
    with pytest.raises(WeightportError, match=r"or flatten=\(12, 12, 6\) if the 6 channels of '5' \(the module before it\) reach it unchanged"):
        weightport.plan(folder / "small.pth", weights_only)
    plan = weightport.plan(folder / "small.pth", weights_only, flatten=(12, 12, 6))
    assert [s.rule for s in plan.steps if s.role == "kernel"][-1] == "torch-linear-flatten"


def test_verify_takes_the_window_from_the_plan_the_output_records(small, tmp_path: Path) -> None:
    """`verify model.pth out.weights.h5` (no config in OUT) checks the Linear after the NCHW
    flatten on the window the plan recorded in OUT; a --flatten given still rules (a wrong one
    fails); a file weightport did not write (no record) is refused in one line naming the
    --flatten to give, as far as the state dict tells it."""
    folder = small[0]
    keras.backend.clear_session()
    weights_only = tmp_path / "target.weights.h5"
    small_keras(keras).save_weights(str(weights_only))
    out = tmp_path / "out.weights.h5"
    assert main(["convert", str(folder / "small.pth"), "--target", str(weights_only), "--flatten", "12,12,6", "-o", str(out)]) == 0
    result = run_cli("verify", str(folder / "small.pth"), str(out))
    assert result.returncode == 0, result.stderr
    assert "PyTorch Linear on the window flattened chw vs Dense after Flatten (hwc)" in result.stdout, result.stdout
    plan = weightport.plan(folder / "small.pth", out)
    assert any("12x12x6, as the plan recorded in" in note for note in plan.notes), plan.notes
    # chw -> hwc moves rows by the channels alone: another grid of 144 positions is the same rule, 3 channels are not
    assert run_cli("verify", str(folder / "small.pth"), str(out), "--flatten", "6,24,6").returncode == 0
    result = run_cli("verify", str(folder / "small.pth"), str(out), "--flatten", "12,24,3")
    assert result.returncode == 1 and "FAIL" in result.stdout, result.stdout + result.stderr
    result = run_cli("verify", str(folder / "small.pth"), str(weights_only))  # written by Keras: no record
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "nor the window's shape" in result.stderr
    assert "--flatten 12,12,6 if the 6 channels of '5' (the module before it) reach it unchanged (a Dense after a Flatten needs only the channels: " \
           "any H,W with H*W = 144 orders its rows alike)" in result.stderr, result.stderr


def test_a_linear_after_a_global_pooling_is_named_with_its_flatten(tmp_path: Path) -> None:
    """A Linear with as many inputs as the conv before it has channels: the hint gives the exact value, 1,1,C."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    torch.save(model.state_dict(), tmp_path / "gap.pth")
    keras.backend.clear_session()
    inputs = keras.Input((8, 8, 3))
    target_model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))))
    target_model.save_weights(str(tmp_path / "gap.weights.h5"))
    result = run_cli("plan", str(tmp_path / "gap.pth"), "--target", str(tmp_path / "gap.weights.h5"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "--flatten 1,1,8 (its 8 inputs are the 8 channels of '0': a global pooling or a 1x1 window)" in result.stderr, result.stderr
    weightport.convert(tmp_path / "gap.pth", tmp_path / "out.weights.h5", target=tmp_path / "gap.weights.h5", flatten=(1, 1, 8))
    assert weightport.verify(tmp_path / "gap.pth", tmp_path / "out.weights.h5").ok
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 3)).astype("float32")
    target_model.load_weights(str(tmp_path / "out.weights.h5"))
    assert relative_error(target_model(x), _torch_out(model, x)) < 1e-5


# --- torchvision VGG16 into keras.applications VGG16 and its fully-convolutional twin --------

# torchvision imports torch._dynamo (triton), which crashes a process that has loaded TensorFlow:
# the model is made, saved and run in a child process of its own.
_TORCHVISION = """
import sys
import numpy as np, torch, torchvision
folder = sys.argv[1]
torch.manual_seed(16)
model = torchvision.models.vgg16(weights=None).eval()
with torch.no_grad():
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.bias.uniform_(-0.05, 0.05)  # torchvision starts them at 0: a swapped bias would not show
    torch.save(model.state_dict(), f"{folder}/vgg16.pth")
    nchw = lambda name: torch.from_numpy(np.load(f"{folder}/{name}.npy").transpose(0, 3, 1, 2).copy())
    np.save(f"{folder}/want224.npy", model(nchw("x224")).numpy())
    features = model.features(nchw("x256"))  # (1, 512, 8, 8): the classifier on each 7x7 window, flattened chw
    windows = [[model.classifier(torch.flatten(features[:, :, i:i + 7, j:j + 7], 1)).numpy() for j in range(2)] for i in range(2)]
    np.save(f"{folder}/want256.npy", np.stack([np.stack(row, 1) for row in windows], 1))
"""


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """torchvision's VGG16 (random init, non-zero biases) saved as a state dict, with its outputs
    on a 224x224 input and its classifier on each 7x7 window of a 256x256 one; keras.applications'
    VGG16 (logits) saved as the target."""
    if importlib.util.find_spec("torchvision") is None:  # looked for, not imported (see _TORCHVISION)
        if keras_required():
            pytest.fail("torchvision is not installed, and this run requires the test extra", pytrace=False)
        pytest.skip("torchvision is not installed (pip install -e '.[test]')")
    with scratch(tmp_path_factory, "vgg16") as folder:
        rng = np.random.default_rng(16)
        for size in (224, 256):
            np.save(folder / f"x{size}.npy", rng.uniform(-1, 1, size=(1, size, size, 3)).astype("float32"))
        made = subprocess.run([sys.executable, "-c", _TORCHVISION, str(folder)], capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stderr[-2000:]
        keras.backend.clear_session()
        target = keras.applications.VGG16(weights=None, classifier_activation=None)
        target.save(str(folder / "vgg16.keras"))
        yield folder, target


def test_vgg16_into_keras_applications_equals_torchvision(vgg, tmp_path) -> None:
    folder, target = vgg
    out = tmp_path / "from_torch.weights.h5"
    assert main(["convert", str(folder / "vgg16.pth"), "-o", str(out), "--target", str(folder / "vgg16.keras")]) == 0
    plan = weightport.plan(folder / "vgg16.pth", folder / "vgg16.keras")
    fc1 = next(s for s in plan.steps if s.target_layer == "fc1" and s.role == "kernel")
    assert (fc1.rule, fc1.params["order"], fc1.params["target_order"], fc1.params["window"]) == ("torch-linear-flatten", "chw", "hwc", [7, 7])
    target.load_weights(str(out))
    assert relative_error(target(np.load(folder / "x224.npy")), np.load(folder / "want224.npy")) < 1e-4


def test_vgg16_into_its_fcn_twin_gives_the_classifier_on_every_window(vgg, tmp_path) -> None:
    """The twin weightport derives from the Keras VGG16 is the target: each location of its map
    at 256x256 is torchvision's classifier on that 7x7 window of the features (chw flatten)."""
    folder, _ = vgg
    twin, out = tmp_path / "fcn.keras", tmp_path / "fcn_from_torch.keras"
    weightport.convert(folder / "vgg16.keras", twin)
    plan = weightport.convert(folder / "vgg16.pth", out, target=twin)
    assert [s.rule for s in plan.steps if s.role == "kernel"][-3:] == ["torch-linear-to-conv", "torch-linear", "torch-linear"]
    keras.backend.clear_session()
    got = np.asarray(keras.models.load_model(str(out))(np.load(folder / "x256.npy")))
    assert got.shape == (1, 2, 2, 1000)
    assert relative_error(got, np.load(folder / "want256.npy")) < 1e-4


def test_a_record_that_is_not_a_plan_is_no_window(small, tmp_path: Path) -> None:
    """A weightport_rules attribute that is damaged, not a list of rules, or bigger than any plan
    spares no --flatten: the refusal asks for it, as for a file weightport did not write."""
    import h5py

    folder = small[0]
    keras.backend.clear_session()
    weights_only = tmp_path / "target.weights.h5"
    small_keras(keras).save_weights(str(weights_only))
    for record in ("not json", '{"a": 1}', "[" + ",".join(["{}"] * 1_100_000) + "]"):
        with h5py.File(weights_only, "r+") as f:
            f.attrs["weightport_rules"] = record
        with pytest.raises(WeightportError, match=r"flatten=\(12, 12, 6\) if the 6 channels"):
            weightport.plan(folder / "small.pth", weights_only)


def test_a_linear_saved_transposed_converts_and_verifies(tmp_path: Path) -> None:
    """A Linear weight stored column-major (a strided view: no rows in place) converts, verifies in
    blocks from the one read of it, and Keras computes PyTorch's outputs."""
    torch.manual_seed(5)
    linear = torch.nn.Linear(300, 200)
    state = {"fc.weight": linear.weight.detach().T.contiguous().T, "fc.bias": linear.bias.detach()}
    torch.save(state, tmp_path / "t.pth")
    with weightport.read(tmp_path / "t.pth") as view:
        assert view.tensors[0].storage.offset is None  # strided, as meant
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((300,)), keras.layers.Dense(200, name="fc")])
    model.save(str(tmp_path / "target.keras"))
    plan = weightport.convert(tmp_path / "t.pth", tmp_path / "out.weights.h5", target=tmp_path / "target.keras")
    assert plan.verification is not None and plan.verification.ok
    model.load_weights(str(tmp_path / "out.weights.h5"))
    x = np.random.default_rng(5).standard_normal((3, 300)).astype("float32")
    assert relative_error(model(x), linear(torch.from_numpy(x)).detach().numpy()) < 1e-5
