"""The Keras route that weightport replaces, timed by bench.py: `python bench/keras_route.py MODEL SRC OUT`.

Builds the `keras.applications` MODEL (weights=None) and its fully-convolutional twin, loads SRC
into the classifier, moves every tensor with get_weights/set_weights, layer by layer in model
order (the Dense kernels reshaped into Conv kernels) and saves the twin with save_weights. A `.keras` / `.weights.h5` SRC goes
through Keras 3 (OUT must end in .weights.h5), a legacy `.h5` SRC through tf_keras (OUT: .h5).

The twins: VGG16's fc1/fc2/predictions become 7x7, 1x1, 1x1 convolutions; a global-pooling
head (ResNet50, DenseNet121, EfficientNetB0, MobileNetV2) keeps its pooling's dimensions and
its Dense becomes a 1x1 convolution.
"""

from __future__ import annotations

import sys

def twin(keras, model: str):
    """The fully-convolutional twin of `keras.applications.<model>`, with the classifier's layer names."""
    base = getattr(keras.applications, model)(weights=None, include_top=False)
    if model == "VGG16":
        x = keras.layers.Conv2D(4096, 7, activation="relu", name="fc1")(base.output)
        x = keras.layers.Conv2D(4096, 1, activation="relu", name="fc2")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(base.output)
    x = keras.layers.Conv2D(1000, 1, activation="softmax", name="predictions")(x)
    return keras.Model(base.input, x, name=f"{model.lower()}_fcn")


def main(model: str, source: str, out: str) -> None:
    if source.endswith((".keras", ".weights.h5")):
        import keras
    else:
        import tf_keras as keras
    classifier = getattr(keras.applications, model)(weights=None)
    classifier.load_weights(source)
    fcn = twin(keras, model)
    weighted = [layer for layer in fcn.layers if layer.weights]
    for trained, layer in zip([layer for layer in classifier.layers if layer.weights], weighted, strict=True):  # same order
        weights = trained.get_weights()
        weights[0] = weights[0].reshape(layer.weights[0].shape)  # the head's Dense kernels become conv kernels
        layer.set_weights(weights)
    fcn.save_weights(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
