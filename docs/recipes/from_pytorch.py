"""Recipe: a PyTorch model's weights into the same network built in Keras.

A state dict names modules, not Keras layers, keeps kernels as (out, in, kh, kw) and Linear
weights as (out, in), and a Linear after `torch.flatten` of an NCHW tensor sees its input in
channel-first order (chw). Build the network in Keras (channels_last), save it as the target, and
weightport pairs the modules with the layers in order and reorders every tensor exactly:

    python docs/recipes/from_pytorch.py

A small untrained PyTorch CNN stands in for yours (Conv2d, BatchNorm2d, a depthwise Conv2d, a
Linear after flatten). The script saves its state dict with `torch.save`, builds the Keras twin,
converts, verifies with PyTorch's semantics, and checks that Keras computes PyTorch's outputs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch  # before Keras: see the README's "From PyTorch"
from torch import nn


class Net(nn.Module):
    """Your PyTorch model (modules registered in the order they run: the .pth keeps that order)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.body = nn.Conv2d(16, 16, 3, groups=16)  # depthwise
        self.head = nn.Linear(16 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body(x))
        return self.head(torch.flatten(x, 1))  # NCHW flattened: the Linear sees chw


def build_keras(keras):
    """The same network in Keras: same kinds of layers in the same order, channels_last."""
    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(x)  # PyTorch's default epsilon; Keras's is 1e-3
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="body")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)  # lists the window hwc: weightport reorders the Linear's rows
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


def main() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    torch.save(net.state_dict(), "net.pth")  # stands in for your trained weights

    import keras

    build_keras(keras).save("keras_net.keras")  # the target: its config says what feeds each layer
    weightport = [sys.executable, "-m", "weightport"]
    subprocess.run(weightport + ["plan", "net.pth", "--target", "keras_net.keras"], check=True)
    subprocess.run(weightport + ["convert", "net.pth", "--target", "keras_net.keras", "-o", "converted.keras", "--force"], check=True)
    subprocess.run(weightport + ["verify", "net.pth", "converted.keras"], check=True)

    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()  # PyTorch takes NCHW
    got = np.asarray(keras.models.load_model("converted.keras")(x))
    error = float(np.abs(got - want).max() / np.abs(want).max())
    assert error < 1e-5, error
    print(f"Keras computes PyTorch's outputs (largest difference {error:.1e} of the largest output)")


if __name__ == "__main__":
    main()
