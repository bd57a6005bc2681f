"""Recipe: initialise an FCN-32s from a VGG16 classifier, then fine-tune it.

The FCN paper's own recipe (Long, Shelhamer and Darrell): VGG16's convolutions as they are,
fc1/fc2 as the 7x7 and 1x1 convolutions fc6/fc7, the 1000-way `predictions` left out, and a
new 21-way `score_fr` and a 32x upsampling `upscore` that start from their own initial values.

    python docs/recipes/fcn32s.py [CLASSIFIER]

CLASSIFIER is your trained VGG16-shaped classifier (`.keras`, `.h5` or `.weights.h5`); without
one, an untrained `keras.applications.VGG16(weights=None)` stands in for it (with network access,
`weights="imagenet"` gives the real one). The script builds the FCN-32s in code, saves its
untrained weights as the target, lets weightport align the two layer lists (`--align`; the same
as `--drop predictions --skip score_fr --skip upscore`), loads the result with a plain
`load_weights` and runs two steps of `fit` on random data standing in for your dataset. (The
paper also pads conv1 by 100 and crops the upsampled map to the image; left out here.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

CLASSES = 21  # PASCAL VOC: 20 classes and the background


def build_fcn32s(K, classes: int = CLASSES):
    """FCN-32s on VGG16's convolutions, for any input of at least 224x224 (Keras 3 or tf_keras)."""
    base = K.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    x = K.layers.Conv2D(4096, 7, activation="relu", name="fc6")(base.output)
    x = K.layers.Dropout(0.5, name="drop6")(x)
    x = K.layers.Conv2D(4096, 1, activation="relu", name="fc7")(x)
    x = K.layers.Dropout(0.5, name="drop7")(x)
    x = K.layers.Conv2D(classes, 1, name="score_fr")(x)
    x = K.layers.Conv2DTranspose(classes, 64, strides=32, use_bias=False, name="upscore")(x)
    return K.Model(base.input, x, name="fcn32s")


def main(classifier: str) -> None:
    import keras

    if classifier == "":
        classifier = "vgg16.keras"
        keras.applications.VGG16(weights=None).save(classifier)  # stands in for your trained classifier
    fcn = build_fcn32s(keras)
    fcn.save_weights("fcn32s_target.weights.h5")  # the target: its layout and the new layers' initial values
    subprocess.run([sys.executable, "-m", "weightport", "convert", classifier, "--target", "fcn32s_target.weights.h5",
                    "--align", "-o", "fcn32s_init.weights.h5", "--force"], check=True)
    fcn.load_weights("fcn32s_init.weights.h5")

    fcn.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 224, 224, 3)).astype("float32")  # your images, VGG16-preprocessed
    labels = rng.integers(0, CLASSES, tuple(fcn.compute_output_shape(images.shape)[:3]))  # your label maps, at the output's size
    history = fcn.fit(images, labels, batch_size=1, epochs=1, verbose=0)
    print(f"fine-tuned 2 steps from fcn32s_init.weights.h5: loss {history.history['loss'][-1]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
