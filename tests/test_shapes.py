"""Static shape inference: against live Keras 3 and tf_keras models, hand-written Keras 1
configs, and the Flatten -> Dense heads of real files written by other projects."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import h5py
import pytest

import weightport
from weightport import budgets
from conftest import SHARED_FILES, import_or_skip, needs_shared_files, shared_files, sidecar_config
from own_cpu import OwnCPU
from weightport.config import ModelConfig, load_config_file, parse_model_config
from weightport.errors import WeightportError
from weightport.hdf5 import str_attr
from weightport.shapes import ShapeError, TensorInfo, infer_shapes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported


# ---------------------------------------------------------------------------------------------
# Hand-written configs (no Keras needed).

def keras1_sequential(*layers: Tuple[str, Dict[str, Any]]) -> ModelConfig:
    """A Keras 1 Sequential config: `config` is the bare list of layers."""
    entries = [{"class_name": cls, "config": {"name": f"l{i}", **cfg}} for i, (cls, cfg) in enumerate(layers)]
    return parse_model_config({"class_name": "Sequential", "keras_version": "1.2.2", "config": entries}, "k1.json")


def functional(*layers: Tuple[str, str, Dict[str, Any], List[str]]) -> ModelConfig:
    """A Keras 2 Functional config from (name, class, config, inbound names)."""
    entries = [
        {"name": name, "class_name": cls, "config": {"name": name, **cfg}, "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}
        for name, cls, cfg, inbound in layers
    ]
    inputs = [[name, 0, 0] for name, _, _, inbound in layers if not inbound]
    body = {"name": "m", "layers": entries, "input_layers": inputs, "output_layers": [[layers[-1][0], 0, 0]]}
    return parse_model_config({"class_name": "Model", "config": body}, "k2.json")


def all_shapes(config: ModelConfig, **kwargs: Any) -> Dict[str, Tuple]:
    shapes = infer_shapes(config, "test", **kwargs)
    return {layer.name: shapes.output(layer.name).shape for layer in config.layers}


def test_keras1_2d_theano_ordering() -> None:
    config = keras1_sequential(
        ("Convolution2D", {"nb_filter": 8, "nb_row": 3, "nb_col": 5, "border_mode": "same", "subsample": [2, 2], "dim_ordering": "th", "batch_input_shape": [None, 3, 32, 30]}),
        ("AtrousConvolution2D", {"nb_filter": 4, "nb_row": 3, "nb_col": 3, "atrous_rate": [2, 2], "border_mode": "valid", "subsample": [1, 1], "dim_ordering": "th"}),
        ("ZeroPadding2D", {"padding": {"top_pad": 1, "left_pad": 2, "right_pad": 3}, "dim_ordering": "th"}),
        ("ZeroPadding2D", {"padding": [1, 2], "dim_ordering": "th"}),
        ("ZeroPadding2D", {"padding": [1, 0, 0, 2], "dim_ordering": "th"}),
        ("Cropping2D", {"cropping": [[1, 1], [2, 2]], "dim_ordering": "th"}),
        ("UpSampling2D", {"size": [2, 2], "dim_ordering": "th"}),
        ("MaxPooling2D", {"pool_size": [2, 2], "strides": [2, 2], "border_mode": "valid", "dim_ordering": "th"}),
        ("AveragePooling2D", {"pool_size": [3, 3], "strides": None, "border_mode": "same", "dim_ordering": "th"}),
        ("Convolution2D", {"nb_filter": 3, "nb_row": 2, "nb_col": 2, "border_mode": "full", "subsample": [1, 1], "dim_ordering": "th"}),
        ("Deconvolution2D", {"nb_filter": 2, "nb_row": 3, "nb_col": 3, "output_shape": [None, 2, 13, 15], "subsample": [2, 2], "border_mode": "valid", "dim_ordering": "th"}),
        ("SeparableConvolution2D", {"nb_filter": 5, "nb_row": 3, "nb_col": 3, "depth_multiplier": 2, "border_mode": "valid", "subsample": [1, 1], "dim_ordering": "th"}),
        ("GlobalAveragePooling2D", {"dim_ordering": "th"}),
        ("Dense", {"output_dim": 5, "input_dim": None}),
    )
    assert list(all_shapes(config).values()) == [
        (8, 16, 15), (4, 12, 11), (4, 13, 16), (4, 15, 20), (4, 16, 22), (4, 14, 18), (4, 28, 36),
        (4, 14, 18), (4, 5, 6), (3, 6, 7), (2, 13, 15), (5, 11, 13), (5,), (5,),
    ]
    shapes = infer_shapes(config, "k1.json")
    assert shapes.output("l0").layout == "channels_first" and shapes.output("l12").layout is None


def test_keras1_1d_embedding_without_batch_input_shape() -> None:
    config = keras1_sequential(
        ("Embedding", {"input_dim": 100, "output_dim": 8, "input_length": 30}),
        ("Convolution1D", {"nb_filter": 6, "filter_length": 3, "subsample_length": 2, "border_mode": "valid"}),
        ("AtrousConvolution1D", {"nb_filter": 5, "filter_length": 3, "atrous_rate": 2, "border_mode": "same", "subsample_length": 1}),
        ("MaxPooling1D", {"pool_length": 3, "stride": None, "border_mode": "valid"}),
        ("ZeroPadding1D", {"padding": 1}),
        ("ZeroPadding1D", {"padding": {"left_pad": 2}}),
        ("Cropping1D", {"cropping": [1, 0]}),
        ("UpSampling1D", {"length": 2}),
        ("Flatten", {}),
        ("Dense", {"output_dim": 3}),
        ("RepeatVector", {"n": 2}),
        ("Permute", {"dims": [2, 1]}),
        ("Reshape", {"target_shape": [-1]}),
    )
    assert list(all_shapes(config).values()) == [
        (30, 8), (14, 6), (14, 5), (4, 5), (6, 5), (8, 5), (7, 5), (14, 5), (70,), (3,), (2, 3), (3, 2), (6,),
    ]


@pytest.mark.parametrize(
    "first,expected",
    [
        (("Dense", {"output_dim": 4, "input_dim": 20}), (4,)),
        (("Convolution1D", {"nb_filter": 2, "filter_length": 3, "input_dim": 7, "input_length": 12, "border_mode": "valid"}), (10, 2)),
        (("Convolution3D", {"nb_filter": 4, "kernel_dim1": 3, "kernel_dim2": 2, "kernel_dim3": 1, "subsample": [1, 2, 3], "border_mode": "valid", "dim_ordering": "tf", "batch_input_shape": [None, 8, 9, 10, 2]}), (6, 4, 4, 4)),
        (("Convolution2D", {"nb_filter": 4, "nb_row": 3, "nb_col": 3, "dim_ordering": "default", "batch_input_shape": [None, 9, 9, 2]}), (7, 7, 4)),
    ],
)
def test_keras1_first_layer_declares_the_input(first: Tuple[str, Dict[str, Any]], expected: Tuple) -> None:
    assert all_shapes(keras1_sequential(first))["l0"] == expected


def test_keras1_merge_is_unsupported_but_names_itself() -> None:
    config = functional(("a", "InputLayer", {"batch_input_shape": [None, 4]}, []), ("m", "Merge", {"mode": "concat"}, ["a", "a"]))
    with pytest.raises(ShapeError, match=r"layer 'm' \(Merge\).*--flatten"):
        infer_shapes(config, "k1.json").output("m")


def conv_chain(n_inputs: int = 1) -> ModelConfig:
    inputs = [(f"in{i}", "InputLayer", {"batch_input_shape": [None, 32, 32, 3]}, []) for i in range(n_inputs)]
    return functional(
        *inputs,
        ("conv", "Conv2D", {"filters": 8, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid"}, ["in0"]),
        ("pool", "MaxPooling2D", {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, ["conv"]),
        ("lstm", "LSTM", {"units": 3}, ["pool"]),
        ("flatten", "Flatten", {}, ["pool"]),
        ("dense", "Dense", {"units": 10}, ["flatten"]),
    )


def test_unsupported_layer_elsewhere_does_not_matter() -> None:
    shapes = infer_shapes(conv_chain(), "m.h5")
    assert shapes.output("flatten") == TensorInfo((15 * 15 * 8,), None)
    with pytest.raises(ShapeError) as err:
        shapes.output("lstm")
    assert isinstance(err.value, WeightportError)
    assert err.value.file == "m.h5" and "'lstm' (LSTM)" in err.value.problem and "--flatten" in err.value.hint


def test_input_shape_override() -> None:
    shapes = infer_shapes(conv_chain(), "m.h5", input_shape=[None, 320, 320, 3])
    assert shapes.output("pool").shape == (159, 159, 8) and shapes.output("pool").layout == "channels_last"
    with pytest.raises(ShapeError, match="one input"):
        infer_shapes(conv_chain(2), "m.h5", input_shape=[None, 64, 64, 3])
    with pytest.raises(ShapeError, match="too small"):
        infer_shapes(conv_chain(), "m.h5", input_shape=[None, 2, 2, 3]).output("conv")


@pytest.mark.parametrize(
    "layers,match",
    [
        ([("in", "InputLayer", {}, [])], r"'in' \(InputLayer\).*no input shape"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4, 4, 2]}, []), ("in2", "InputLayer", {"batch_input_shape": [None, 4, 4, 3]}, []),
          ("out", "Add", {}, ["in", "in2"])], r"'out' \(Add\).*disagree"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4, 2]}, []), ("out", "Concatenate", {"axis": 0}, ["in", "in"])], r"'out' \(Concatenate\).*axis 0"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4, 2]}, []), ("out", "Reshape", {"target_shape": [3, -1]}, ["in"])], r"'out' \(Reshape\).*cannot reshape"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4, 2]}, []), ("out", "Conv2D", {"filters": 2, "kernel_size": 3}, ["in"])], r"'out' \(Conv2D\).*spatial axes"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4, 4, 2]}, []), ("out", "Conv2D", {"kernel_size": 3}, ["in"])], r"'out' \(Conv2D\)"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4]}, []), ("in2", "InputLayer", {"batch_input_shape": [None, 4]}, []),
          ("out", "Lambda", {"function": "x"}, ["in", "in2"])], r"'out' \(Lambda\).*several inputs"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4]}, []), ("out", "Dense", {"units": 2}, ["gone"])], r"no layer 'gone'"),
        ([("in", "InputLayer", {"batch_input_shape": [None, 4]}, []), ("a", "Dense", {"units": 2}, ["out"]), ("out", "Dense", {"units": 2}, ["a"])], r"feeds itself"),
    ],
)
def test_refusals_name_the_layer(layers: List[Tuple], match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        infer_shapes(functional(*layers), "m.h5").output(layers[-1][0])


def test_lambda_output_shape_literal_or_assumed() -> None:
    bytecode = ["4wEAAAAAAAAA\n", None, None]
    config = functional(
        ("in", "InputLayer", {"batch_input_shape": [None, 6, 6, 4]}, []),
        ("keep", "Lambda", {"function": ["code", None, None], "function_type": "lambda", "output_shape": None, "output_shape_type": "raw"}, ["in"]),
        ("fn", "Lambda", {"function": ["code", None, None], "function_type": "lambda", "output_shape": bytecode, "output_shape_type": "lambda"}, ["keep"]),
        ("raw", "Lambda", {"function": ["code", None, None], "output_shape": [6, 6, 2], "output_shape_type": "raw"}, ["fn"]),
        ("vec", "Lambda", {"function": ["code", None, None], "output_shape": [72]}, ["raw"]),
        ("out", "Flatten", {}, ["vec"]),
    )
    shapes = infer_shapes(config, "m.h5")
    assert shapes.output("keep") == TensorInfo((6, 6, 4), None, ("keep",))
    assert shapes.output("fn").assumed == ("keep", "fn")
    assert shapes.output("raw") == TensorInfo((6, 6, 2), None, ("keep", "fn"))
    assert shapes.output("out") == TensorInfo((72,), None, ("keep", "fn"))


def test_dynamic_axes_stay_unknown() -> None:
    config = functional(
        ("in", "InputLayer", {"batch_input_shape": [None, None, 8, 3]}, []),
        ("conv", "Conv2D", {"filters": 4, "kernel_size": [3, 3], "strides": [2, 2], "padding": "same"}, ["in"]),
        ("flat", "Flatten", {}, ["conv"]),
        ("re", "Reshape", {"target_shape": [-1, 2]}, ["conv"]),
    )
    assert all_shapes(config) == {"in": (None, 8, 3), "conv": (None, 4, 4), "flat": (None,), "re": (None, 2)}


def test_deep_graph_needs_no_recursion() -> None:
    depth = budgets.MAX_LAYERS  # the deepest config accepted: four times Python's recursion limit
    assert depth > 3 * sys.getrecursionlimit()
    layers = [("l0", "InputLayer", {"batch_input_shape": [None, 3]}, [])]
    layers += [(f"l{i}", "Activation", {"activation": "relu"}, [f"l{i - 1}"]) for i in range(1, depth)]
    assert infer_shapes(functional(*layers), "m.h5").output(f"l{depth - 1}").shape == (3,)


def test_a_config_far_over_the_layer_budget_is_refused_before_its_layers_are_parsed() -> None:
    """30,000 weightless layers (the fuzz's `cmany` splice, a 2 MB config): refused by their count,
    in ~0.1 s of CPU for the JSON; parsing every layer first, then refusing, took 0.7 s."""
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 8, 8, 3]}}]
    layers += [{"class_name": "Dropout", "config": {"name": f"drop_{i}", "rate": 0.0}} for i in range(30_000)]
    text = json.dumps({"class_name": "Sequential", "config": {"name": "many", "layers": layers}})
    with OwnCPU() as cpu, pytest.raises(WeightportError) as caught:
        parse_model_config(text, "many.json")
    assert f"model config of 30,001 layers, more than any model has ({budgets.MAX_LAYERS:,})" in caught.value.problem
    assert cpu.seconds < 0.4, f"{cpu.seconds:.2f} s of CPU"


# ---------------------------------------------------------------------------------------------
# Live Keras: every layer's inferred shape equals the one Keras computes.

def build_conv2d(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((33, 31, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same")(i)
    x = L.Conv2D(8, (3, 5), dilation_rate=2)(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, strides=2, padding="same")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = L.ZeroPadding2D(((1, 2), (0, 3)))(x)
    x = L.Cropping2D(((1, 0), (2, 1)))(x)
    x = L.UpSampling2D((2, 3))(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = L.AveragePooling2D((2, 3))(x)
    x = L.Conv2DTranspose(4, 3, strides=2)(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1)(x)
    x = L.Conv2DTranspose(5, (4, 2), strides=3, output_padding=2)(x)
    x = L.Conv2DTranspose(3, 3, dilation_rate=2, padding="same")(x)
    x = L.Conv2D(4, 5, strides=(3, 2))(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.ZeroPadding2D(2)(x)
    x = L.GlobalMaxPooling2D()(x)
    return K.Model(i, L.Dense(7)(x))


def build_same_shape(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((6, 5, 4))
    x = i
    for layer in (L.ActivityRegularization(), L.ReLU(), L.LeakyReLU(), L.PReLU(), L.ELU(), L.Softmax(), L.Dropout(0.1),
                  L.SpatialDropout2D(0.1), L.GaussianNoise(0.1), L.GaussianDropout(0.1), L.AlphaDropout(0.1),
                  L.BatchNormalization(), L.LayerNormalization(), L.Activation("tanh"), L.Dense(3)):
        x = layer(x)
    return K.Model(i, [L.Dense(2)(L.Flatten()(x)), L.Masking()(i)])


def build_conv1d(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((40, 6))
    x = L.Conv1D(5, 4, padding="causal", dilation_rate=2)(i)
    x = L.Conv1D(6, 3, strides=3)(x)
    x = L.SeparableConv1D(4, 3, padding="same", strides=2)(x)
    x = L.DepthwiseConv1D(3, depth_multiplier=3, padding="same")(x)
    x = L.ZeroPadding1D(2)(x)
    x = L.Cropping1D((1, 2))(x)
    x = L.UpSampling1D(3)(x)
    x = L.MaxPooling1D(2)(x)
    x = L.AveragePooling1D(3, strides=2, padding="same")(x)
    x = L.Conv1DTranspose(4, 3, strides=2)(x)
    x = L.SpatialDropout1D(0.1)(x)
    x = L.GlobalMaxPooling1D(keepdims=True)(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.RepeatVector(4)(L.Dense(6)(x))
    return K.Model(i, L.Dense(2)(L.Flatten()(L.Dense(3)(x))))


def build_conv3d(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((9, 10, 11, 2))
    x = L.Conv3D(3, 2, strides=(1, 2, 3))(i)
    x = L.MaxPooling3D(2, padding="same")(x)
    x = L.AveragePooling3D((1, 2, 1))(x)
    x = L.ZeroPadding3D(1)(x)
    x = L.Cropping3D(((0, 1), (1, 0), (1, 1)))(x)
    x = L.UpSampling3D((1, 2, 2))(x)
    x = L.Conv3DTranspose(2, 3, strides=2)(x)
    x = L.SpatialDropout3D(0.1)(x)
    x = L.GlobalAveragePooling3D(keepdims=True)(x)
    return K.Model(i, L.Dense(3)(L.GlobalMaxPooling3D()(x)))


def build_channels_first(K: ModuleType) -> Any:
    """Built only: TensorFlow cannot run channels_first convolutions on CPU. Two inputs."""
    L, cf = K.layers, "channels_first"
    image = K.Input((3, 20, 24))
    x = L.Conv2D(4, (3, 5), strides=2, data_format=cf)(image)
    x = L.MaxPooling2D(2, padding="same", data_format=cf)(x)
    x = L.ZeroPadding2D(((1, 0), (2, 3)), data_format=cf)(x)
    x = L.Cropping2D((1, 2), data_format=cf)(x)
    x = L.UpSampling2D(2, data_format=cf)(x)
    x = L.Conv2DTranspose(2, 3, strides=2, data_format=cf)(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, data_format=cf)(x)
    x = L.GlobalAveragePooling2D(keepdims=True, data_format=cf)(x)
    a = L.Flatten(data_format=cf)(x)
    signal = K.Input((4, 30))
    y = L.Conv1D(5, 3, strides=2, data_format=cf)(signal)
    y = L.MaxPooling1D(2, data_format=cf)(y)
    y = L.UpSampling3D(2, data_format=cf)(L.Reshape((5, 7, 1, 1))(y))
    y = L.Conv3D(2, (3, 2, 2), data_format=cf)(y)
    b = L.GlobalMaxPooling3D(data_format=cf)(y)
    return K.Model([image, signal], L.Dense(3)(L.Concatenate()([a, b])))


def build_merges(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((8, 7, 4))
    a, b, c = L.Conv2D(6, 1)(i), L.Conv2D(6, 1)(i), L.Conv2D(3, 1)(i)
    merged = [cls()([a, b]) for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)]
    x = L.Concatenate()([*merged, c])
    x = L.Concatenate(axis=1)([x, x])
    x = L.Concatenate(axis=-2)([x, L.Cropping2D(((0, 0), (0, 5)))(x)])
    x = L.Permute((3, 1, 2))(x)
    x = L.Reshape((-1, 8))(x)
    return K.Model(i, L.Dense(2)(L.Flatten()(x)))


def build_nested(K: ModuleType) -> Any:
    """Sequentials (with and without an Input) and a Functional inside a Functional."""
    L = K.layers
    with_input = K.Sequential([K.Input((14, 14, 4)), L.Conv2D(5, 3), L.MaxPooling2D()], name="seq_in")
    without_input = K.Sequential([L.Conv2D(6, 2, padding="same"), L.ReLU()], name="seq_bare")
    inner_in = K.Input((6, 6, 6))
    inner = K.Model(inner_in, L.Concatenate()([L.Conv2D(2, 3)(inner_in), L.Conv2D(3, 3)(inner_in)]), name="func")
    i = K.Input((16, 16, 3))
    x = inner(without_input(with_input(L.Conv2D(4, 3)(i))))
    return K.Model(i, L.Dense(3)(L.Flatten()(x)))


def build_nested_two_inputs(K: ModuleType) -> Any:
    """A two-input Functional inside a Functional: each inner input is fed its own tensor."""
    L = K.layers
    a, b = K.Input((4, 4, 2)), K.Input((6, 6, 3))
    inner = K.Model([a, b], L.Concatenate()([L.Flatten()(a), L.Flatten()(b)]), name="two_in")
    x, y = K.Input((6, 6, 2)), K.Input((8, 8, 3))
    return K.Model([x, y], L.Dense(2)(inner([L.Conv2D(2, 3)(x), L.Conv2D(3, 3)(y)])))


def build_embedding(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((20,), dtype="int32")
    x = L.Conv1D(8, 3)(L.Embedding(50, 16)(i))
    return K.Model(i, L.Dense(2)(L.Flatten()(x)))


def build_lambda(K: ModuleType) -> Any:
    L = K.layers
    i = K.Input((5, 6, 4))
    x = L.Lambda(lambda t: t * 2.0, name="guessed")(i)
    x = L.Lambda(lambda t: t[..., :2], output_shape=(5, 6, 2), name="declared")(x)
    return K.Model(i, L.Dense(2)(L.Flatten()(x)))


def build_vgg_like(K: ModuleType, size: int = 32) -> Any:
    L = K.layers
    i = K.Input((size, size, 3))
    x = L.MaxPooling2D()(L.Conv2D(4, 3, padding="same")(i))
    x = L.MaxPooling2D()(L.Conv2D(8, 3, padding="same")(x))
    return K.Model(i, L.Dense(2)(L.Flatten()(x)))


def build_tf_keras_only(K: ModuleType) -> Any:
    """Layers Keras 3 dropped."""
    L = K.layers
    i = K.Input((12, 10, 3))
    x = L.LocallyConnected2D(4, 3, strides=2)(L.ThresholdedReLU(0.5)(i))
    x = L.LocallyConnected1D(3, 2)(L.Reshape((-1, 4))(x))
    return K.Model(i, L.Dense(2)(L.Flatten()(x)))


def build_tf_keras_sequential(K: ModuleType) -> Any:
    """Keras 2 style: the first layer carries the input shape, Embedding has input_length."""
    L = K.layers
    return K.Sequential([L.Embedding(30, 4, input_length=12), L.Conv1D(3, 3, strides=2), L.Flatten(), L.Dense(2)])


BOTH = ("keras", "tf_keras")
BUILDERS: List[Tuple[Callable[[ModuleType], Any], Tuple[str, ...]]] = [
    (build_conv2d, BOTH), (build_same_shape, BOTH), (build_conv1d, BOTH), (build_conv3d, BOTH),
    (build_channels_first, BOTH), (build_merges, BOTH), (build_nested, BOTH), (build_nested_two_inputs, BOTH), (build_embedding, BOTH),
    (build_lambda, BOTH), (build_vgg_like, BOTH), (build_tf_keras_only, ("tf_keras",)), (build_tf_keras_sequential, ("tf_keras",)),
]
CASES = [pytest.param(module, build, id=f"{module}-{build.__name__[6:]}") for build, modules in BUILDERS for module in modules]


def live(module: str, build: Callable[[ModuleType], Any]) -> Tuple[Any, ModelConfig]:
    K = import_or_skip(module)
    K.backend.clear_session()
    model = build(K)
    return model, parse_model_config(model.to_json(), source=f"{module}:{build.__name__}")


def live_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from live_layers(layer)


def keras_shape(layer: Any) -> Tuple:
    return tuple(None if n is None else int(n) for n in tuple(layer.output.shape)[1:])


SETS_LAYOUT = ("Conv", "SeparableConv", "DepthwiseConv", "LocallyConnected", "MaxPooling", "AveragePooling",
               "Global", "ZeroPadding", "Cropping", "UpSampling")


@pytest.mark.parametrize("module,build", CASES)
def test_every_layer_matches_keras(module: str, build: Callable[[ModuleType], Any]) -> None:
    model, config = live(module, build)
    shapes = infer_shapes(config, "live")
    by_name = {layer.name: layer for layer in live_layers(model)}
    missing = [l.name for l in config.layers if l.name not in by_name and l.class_name != "InputLayer"]
    assert not missing, f"config layers without a live layer: {missing}"
    for layer in (l for l in config.layers if l.name in by_name):
        info = shapes.output(layer.name)
        assert info.shape == keras_shape(by_name[layer.name]), (layer.name, layer.class_name)
        if layer.class_name.startswith(SETS_LAYOUT) and len(info.shape) > 1:
            assert info.layout == (layer.data_format or "channels_last"), (layer.name, layer.class_name)


@pytest.mark.parametrize("module", BOTH)
def test_channels_first_layouts(module: str) -> None:
    _, config = live(module, build_channels_first)
    shapes = infer_shapes(config, "live")
    layouts = {l.class_name: shapes.output(l.name).layout for l in config.layers}
    assert layouts["Conv2D"] == layouts["Conv1D"] == layouts["GlobalAveragePooling2D"] == "channels_first"
    assert layouts["Flatten"] is None and layouts["Reshape"] is None and layouts["GlobalMaxPooling3D"] is None
    flatten = next(l for l in config.layers if l.class_name == "Flatten")
    assert shapes.output(flatten.inbound[0]) == TensorInfo((4, 1, 1), "channels_first")


@pytest.mark.parametrize("module", BOTH)
def test_lambda_without_output_shape_is_assumed(module: str) -> None:
    _, config = live(module, build_lambda)
    shapes = infer_shapes(config, "live")
    dense = next(l for l in config.layers if l.class_name == "Dense")
    assert shapes.output("guessed").assumed == ("guessed",)
    assert shapes.output(dense.name).assumed == ("guessed",)


@pytest.mark.parametrize("module", BOTH)
def test_input_shape_override_matches_a_model_built_at_that_size(module: str) -> None:
    _, small = live(module, build_vgg_like)
    big, _ = live(module, lambda K: build_vgg_like(K, 320))
    shapes = infer_shapes(small, "live", input_shape=[None, 320, 320, 3])
    flatten = next(l for l in small.layers if l.class_name == "Flatten")
    big_flatten = next(l for l in big.layers if type(l).__name__ == "Flatten")
    assert shapes.output(flatten.inbound[0]).shape == (80, 80, 8) == tuple(big_flatten.input.shape[1:])


# ---------------------------------------------------------------------------------------------
# Real files: the shape reaching each Flatten (or global pooling) fits the Dense kernel after it.

needs_shared = needs_shared_files()

# Shape and layout of the tensor entering each file's Flatten.
FLATTEN_INPUTS: Dict[str, Tuple[Tuple, Optional[str]]] = {
    "dl4j-old__48net_complete.h5": ((128, 3, 3), None),  # after Permute((3, 2, 1)) of (3, 3, 128)
    "dl4j-old__dcgan_discriminator.h5": ((4, 4, 256), "channels_last"),
    "dl4j-old__keras2_dga_classifier_tf_model.h5": ((62, 100), "channels_last"),
    "dl4j-old__mnist_cnn_tf_keras_1_weights.h5": ((12, 12, 32), "channels_last"),
    "dl4j-old__mnist_cnn_th_keras_1_weights.h5": ((32, 12, 12), "channels_first"),
    "dl4j__cnn_batch_norm.h5": ((6, 6, 1), "channels_last"),
    "dl4j__cnn_tf_model_k1.h5": ((1, 1, 1), "channels_last"),
    "dl4j__conv2d_reshape_tensorflow_2.h5": ((4, 3, 6), "channels_last"),
    "dl4j__conv2d_reshape_theano_1.h5": ((6, 4, 6), "channels_last"),
    "dl4j__conv2d_reshape_theano_2.h5": ((6, 4, 6), "channels_last"),
    "dl4j__flatten_3d.hdf5": ((10, 10, 10, 1), None),
    "dl4j__issue_9560.h5": ((16, 32), "channels_last"),
    "dl4j__simpleconv2d.hdf5": ((6, 5, 15), "channels_last"),
    "ina__keras_speech_music_noise_cnn.hdf5": ((1, 1, 256), "channels_last"),
    "nnom__keras_mnist_model.h5": ((1, 1, 144), "channels_last"),
}


def file_config(path: Path) -> Optional[ModelConfig]:
    sidecar = sidecar_config(path)
    if sidecar is not None:
        return load_config_file(sidecar)
    with h5py.File(path, "r") as f:
        text = str_attr(f, "model_config", path)
    return None if text is None else parse_model_config(text, path)


def kernel_rows(path: Path, dense: str) -> int:
    sidecar = sidecar_config(path)
    with weightport.read(path, config=sidecar) as view:
        layer = next(l for l in view.layers if l.name == dense)
        return next(t.shape for t in layer.weights if t.role == "kernel")[0]


def heads(config: ModelConfig) -> Iterator[Tuple[str, str]]:
    """(Flatten or global pooling layer, the Dense it feeds) pairs."""
    for layer in config.layers:
        if layer.class_name == "Dense" and layer.inbound:
            producer = config.get(layer.inbound[0])
            if producer.class_name == "Flatten" or producer.class_name.startswith("Global"):
                yield producer.name, layer.name


def _with_config() -> List[Path]:
    """The shared files that carry a model config (in the file or beside it)."""
    return [p for p in shared_files() if file_config(p) is not None]


@needs_shared
@pytest.mark.parametrize("path", _with_config(), ids=lambda p: p.name)
def test_head_input_fits_the_dense_kernel(path: Path) -> None:
    config = file_config(path)
    shapes = infer_shapes(config, str(path))
    pairs = list(heads(config))
    for head, dense in pairs:
        assert shapes.output(head).shape == (kernel_rows(path, dense),), (head, dense)
    flattens = [l for l in config.layers if l.class_name == "Flatten"]
    assert bool(flattens) == (path.name in FLATTEN_INPUTS)
    for flatten in flattens:
        info = shapes.output(flatten.inbound[0])
        assert (info.shape, info.layout) == FLATTEN_INPUTS[path.name]
        assert math.prod(info.shape) == shapes.output(flatten.name).shape[0]
        assert flatten.name in {h for h, _ in pairs}
        assert bool(info.assumed) == path.name.startswith("nnom__")
