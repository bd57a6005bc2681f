"""The HDF5 walk that reads a file's structure (`hdf5.members`, `hdf5.finder`): one pass over each
group's links, every link's type read before it is followed, and the same view as a walk that
looks each name up on its own."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from weightport import WeightportError
from weightport.hdf5 import finder, member, members
from weightport.readers import read


def _weights(path, extra=None) -> None:
    """A Keras 3 .weights.h5 of one Dense layer; `extra(f)` adds to it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.arange(6, dtype="f4").reshape(2, 3))
        f.create_dataset("layers/dense/vars/1", data=np.ones(3, "f4"))
        f["layers/dense/vars"].attrs["name"] = "dense"
        f.create_group("vars")
        if extra is not None:
            extra(f)


def test_members_gives_each_link_in_name_order_with_what_member_finds(tmp_path) -> None:
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("b", data=np.ones(2))
        f.create_group("a")
        f["c"] = h5py.SoftLink("/a")
        f["d"] = h5py.SoftLink("/nowhere")
    with h5py.File(path, "r") as f:
        found = list(members(f, path))
        assert [name for name, _ in found] == ["a", "b", "c", "d"]
        for name, obj in found:
            expected = member(f, name, path)
            assert type(obj) is type(expected) and (obj is None or obj.name == expected.name), name


def test_the_optimizer_group_is_not_followed_and_a_name_that_is_not_text_is_refused(tmp_path) -> None:
    """An optimizer group at the root is skipped before its link is read: a link from it to
    another file is never opened. A group name that is not UTF-8 is refused by name."""
    skipped = tmp_path / "opt.weights.h5"
    _weights(skipped, lambda f: f.__setitem__("optimizer", h5py.ExternalLink("/etc/passwd", "/x")))
    with read(skipped) as view:
        assert [layer.name for layer in view.layers] == ["dense"]
    odd = tmp_path / "odd.weights.h5"
    _weights(odd, lambda f: f["layers"].create_group(b"bad\xff"))
    with pytest.raises(WeightportError, match="has a name that is not text"):
        read(odd)


def test_an_external_link_among_a_groups_members_is_refused(tmp_path) -> None:
    path = tmp_path / "ext.weights.h5"
    _weights(path, lambda f: f["layers/dense/vars"].__setitem__("2", h5py.ExternalLink("/etc/passwd", "/x")))
    with pytest.raises(WeightportError, match="is a link to /x in another file"):
        read(path)


def test_finder_finds_what_member_finds(tmp_path) -> None:
    """Names below one group, their shared parents walked once: the same objects as `member`,
    None where `member` finds nothing (a missing name, a path through a dataset), absolute names too."""
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("g/conv1/conv/conv1/conv/kernel:0", data=np.ones((1, 1, 2, 2)))
        f.create_dataset("g/conv1/conv/conv1/conv/bias:0", data=np.ones(2))
        f["g/conv1/conv/link"] = h5py.SoftLink("conv1/conv")
    names = ["conv1/conv/kernel:0", "conv1/conv/bias:0", "conv1/conv/missing", "conv1/conv/kernel:0/deeper", "link/bias:0",
             "/g/conv1/conv/conv1/conv/bias:0", "kernel:0", "conv1/"]
    with h5py.File(path, "r") as f:
        entry = f["g/conv1/conv"]
        find = finder(entry, path)
        for name in names:
            got, expected = find(name), member(entry, name, path)
            assert (got is None) == (expected is None), name
            if got is not None:
                assert got.name == expected.name and type(got) is type(expected), name
