"""The Keras route that weightport replaces, timed by bench.py: `python bench/keras_route.py SRC OUT`.

Builds VGG16 (weights=None) and its fully-convolutional twin in Keras 3, loads SRC into VGG16,
moves every tensor with get_weights/set_weights (the three Dense kernels reshaped into Conv
kernels) and saves the twin with save_weights (OUT must end in .weights.h5).
"""

from __future__ import annotations

import sys

import keras

DENSE_TO_CONV = {"fc1": (7, 7, 512, 4096), "fc2": (1, 1, 4096, 4096), "predictions": (1, 1, 4096, 1000)}


def fcn_twin() -> keras.Model:
    """VGG16 without its top, then fc1/fc2/predictions as 7x7, 1x1, 1x1 convolutions."""
    base = keras.applications.VGG16(weights=None, include_top=False)
    x = keras.layers.Conv2D(4096, 7, activation="relu", name="fc1")(base.output)
    x = keras.layers.Conv2D(4096, 1, activation="relu", name="fc2")(x)
    x = keras.layers.Conv2D(1000, 1, activation="softmax", name="predictions")(x)
    return keras.Model(base.input, x, name="vgg16_fcn")


def main(source: str, out: str) -> None:
    classifier = keras.applications.VGG16(weights=None)
    classifier.load_weights(source)
    twin = fcn_twin()
    for layer in (layer for layer in twin.layers if layer.weights):
        weights = classifier.get_layer(layer.name).get_weights()
        if layer.name in DENSE_TO_CONV:
            weights[0] = weights[0].reshape(DENSE_TO_CONV[layer.name])
        layer.set_weights(weights)
    twin.save_weights(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
