"""Every rule: numpy unit tests and property tests (hypothesis) on random shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightport.rules import RULES, SPATIAL, canonical_order, rows_of


def via_runs(name: str, array: np.ndarray, params: dict, dst_shape) -> np.ndarray:
    """Execute a rule's row runs on arrays: what the streaming writer does on bytes."""
    rows, row = rows_of(dst_shape)
    src, dst = array.reshape(-1, row), np.full((rows, row), np.nan, array.dtype)
    for run in RULES[name].runs(array.shape, params):
        for k in range(run.count):
            dst[run.dst_row + k * run.dst_stride] = src[run.src_row + k * run.src_stride]
    return dst.reshape(dst_shape)


def conv_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation of one channels_last window of exactly the kernel's size."""
    return np.tensordot(x, kernel, axes=x.ndim)


def flatten(x: np.ndarray, order: str) -> np.ndarray:
    """Flatten a channels_last window (spatial..., c) in a given axis order."""
    canonical = canonical_order(x.ndim - 1)
    return x.transpose([canonical.index(a) for a in order]).reshape(-1)


orders = {rank: sorted({"".join(p) for p in itertools.permutations(canonical_order(rank))}) for rank in SPATIAL}


@st.composite
def windows(draw):
    rank = draw(st.integers(1, 3))
    window = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    channels, out = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    order = draw(st.sampled_from(orders[rank]))
    return window, channels, out, order


@settings(max_examples=150, deadline=None)
@given(windows(), st.integers(0, 2**32 - 1))
def test_dense_to_conv_computes_what_the_dense_computes(spec, seed) -> None:
    window, channels, out, order = spec
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(int(np.prod(window)) * channels, out))
    params = {"window": window, "order": order}
    kernel = RULES["dense-to-conv"].apply(dense, params)
    assert kernel.shape == tuple(window) + (channels, out)
    x = rng.normal(size=tuple(window) + (channels,))
    np.testing.assert_allclose(conv_valid(x, kernel), flatten(x, order) @ dense, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(via_runs("dense-to-conv", dense, params, kernel.shape), kernel)


@settings(max_examples=150, deadline=None)
@given(windows(), st.integers(0, 2**32 - 1))
def test_conv_to_dense_inverts_dense_to_conv(spec, seed) -> None:
    window, channels, out, order = spec
    dense = np.random.default_rng(seed).normal(size=(int(np.prod(window)) * channels, out))
    kernel = RULES["dense-to-conv"].apply(dense, {"window": window, "order": order})
    back = RULES["conv-to-dense"].apply(kernel, {"order": order})
    np.testing.assert_array_equal(back, dense)
    np.testing.assert_array_equal(via_runs("conv-to-dense", kernel, {"order": order}, dense.shape), dense)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=3, max_size=5), st.integers(0, 2**32 - 1))
def test_flip_turns_true_convolution_into_correlation(shape, seed) -> None:
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=shape)
    flipped = RULES["kernel-flip"].apply(kernel, {})
    x = rng.normal(size=shape[:-1])
    spatial = len(shape) - 2
    true_convolution = np.tensordot(x[(slice(None, None, -1),) * spatial], kernel, axes=len(shape) - 1)
    np.testing.assert_allclose(conv_valid(x, flipped), true_convolution, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(RULES["kernel-flip"].apply(flipped, {}), kernel)
    np.testing.assert_array_equal(via_runs("kernel-flip", kernel, {}, kernel.shape), flipped)


def test_known_orders_for_vgg_sized_windows() -> None:
    """The two classic cases, written out: hwc is a plain reshape, chw a reshape + transpose."""
    dense = np.arange(7 * 7 * 3 * 2).reshape(7 * 7 * 3, 2)
    np.testing.assert_array_equal(RULES["dense-to-conv"].apply(dense, {"window": [7, 7], "order": "hwc"}), dense.reshape(7, 7, 3, 2))
    chw = dense.reshape(3, 7, 7, 2).transpose(1, 2, 0, 3)
    np.testing.assert_array_equal(RULES["dense-to-conv"].apply(dense, {"window": [7, 7], "order": "chw"}), chw)
    assert len(RULES["dense-to-conv"].runs(dense.shape, {"window": [7, 7], "order": "hwc"})) == 1


def test_th_kernel_transpose_and_flip() -> None:
    th = np.random.default_rng(1).normal(size=(8, 3, 5, 4))  # (out, in, h, w)
    tf = RULES["kernel-from-th"].apply(th, {"flip": False})
    assert tf.shape == (5, 4, 3, 8)
    assert tf[1, 2, 0, 7] == th[7, 0, 1, 2]
    flipped = RULES["kernel-from-th"].apply(th, {"flip": True})
    assert flipped[0, 0, 2, 1] == th[1, 2, 4, 3]
    assert RULES["kernel-from-th"].runs is None


def test_copy_reshape_and_1x1_are_byte_identities() -> None:
    alpha = np.arange(6.0)
    assert RULES["reshape-singleton"].apply(alpha, {"shape": [1, 1, 6]}).shape == (1, 1, 6)
    kernel = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(RULES["dense-to-1x1"].apply(kernel, {"shape": [1, 1, 4, 3]})[0, 0], kernel)
    for name in ("copy", "reshape-singleton", "dense-to-1x1"):
        assert [(r.src_stride, r.dst_stride) for r in RULES[name].runs((4, 3), {})] == [(1, 1)]


def test_every_rule_is_documented() -> None:
    """The README's Rules table has a row for exactly the rules the planner can choose, and each
    rule says what it does (the plan and its JSON name them)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Rules", 1)[1].split("\n#", 1)[0]
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(RULES)
    assert all(len(rule.summary) > 20 for rule in RULES.values())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=3, max_size=5), st.booleans(), st.integers(0, 2**32 - 1))
def test_th_kernel_computes_what_the_keras1_layer_computed(shape, flip, seed) -> None:
    """A Keras 1 `th` kernel (out, in, *spatial), used as Theano used it (a true convolution
    when `flip`), equals Keras's cross-correlation with the converted kernel."""
    rng = np.random.default_rng(seed)
    th = rng.normal(size=shape)
    spatial = len(shape) - 2
    converted = RULES["kernel-from-th"].apply(th, {"flip": flip})
    assert converted.shape == tuple(shape[2:]) + (shape[1], shape[0])
    x = rng.normal(size=tuple(shape[2:]) + (shape[1],))  # one channels_last patch
    patch = x[(slice(None, None, -1),) * spatial] if flip else x
    in_th_layout = np.moveaxis(patch, -1, 0)  # (in, *spatial), as Theano saw it
    want = np.tensordot(in_th_layout, th, axes=(list(range(spatial + 1)), list(range(1, spatial + 2))))
    np.testing.assert_allclose(conv_valid(x, converted), want, rtol=1e-10, atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_identity_rules_keep_every_value_in_order(shape, ones, seed) -> None:
    """copy, reshape-singleton and dense-to-1x1 move bytes unchanged: the runs are one block."""
    array = np.random.default_rng(seed).normal(size=shape)
    padded = [1] * ones + list(shape)
    for name, params, target in (("copy", {}, shape), ("reshape-singleton", {"shape": padded}, padded)):
        result = RULES[name].apply(array, params)
        assert list(result.shape) == list(target)
        np.testing.assert_array_equal(result.reshape(-1), array.reshape(-1))
        np.testing.assert_array_equal(via_runs(name, array, params, tuple(target)), result)
    if len(shape) == 2:
        kernel = RULES["dense-to-1x1"].apply(array, {"shape": [1] * ones + list(shape)})
        x = np.random.default_rng(seed + 1).normal(size=(1,) * ones + (shape[0],))
        np.testing.assert_allclose(conv_valid(x, kernel), x.reshape(-1) @ array, rtol=1e-10, atol=1e-12)
