"""Recipe: a score map from a global-pooling classifier (GAP -> Dense(relu) -> Dense).

A classifier that pools its features globally gives one vector per image. `--score-map` takes
the pooling out and turns the Dense layers into 1x1 convolutions, so the head runs at every
location of the feature map: a `(rows, cols, classes)` map for any input size (a class
activation map), written as a whole model that `keras.models.load_model` opens.

    python docs/recipes/score_map.py [CLASSIFIER.keras]

Without CLASSIFIER a small untrained Keras 3 classifier stands in for yours (for a tf_keras
`.h5`, write `-o score_map.h5 --full-model` instead of `.keras`). The script checks, at a larger
input, that every location of the map is the classifier's own head applied to the features there.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def build_classifier(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="classes")(x))


def main(classifier: str) -> None:
    import keras

    if classifier == "":
        classifier = "classifier.keras"
        build_classifier(keras).save(classifier)  # stands in for your trained classifier
    subprocess.run([sys.executable, "-m", "weightport", "convert", classifier, "--score-map", "-o", "score_map.keras", "--force"], check=True)
    subprocess.run([sys.executable, "-m", "weightport", "verify", classifier, "score_map.keras", "--score-map", "--keras"], check=True)

    score_map = keras.models.load_model("score_map.keras")
    scene = np.random.default_rng(0).uniform(0, 1, (1, 96, 128, 3)).astype("float32")  # any size
    scores = np.asarray(score_map(scene))
    print(f"score map {scores.shape[1:]} for a {scene.shape[1]}x{scene.shape[2]} input")

    source = keras.models.load_model(classifier)  # the check: the source's own head at every location
    names = [layer.name for layer in source.layers]
    pooling = next(layer for layer in source.layers if "GlobalAveragePooling" in type(layer).__name__)
    features = keras.Model(score_map.input, score_map.get_layer(pooling.name).output)(scene)  # the pooling is an identity now
    for layer in source.layers[names.index(pooling.name) + 1:]:
        features = layer(features)
    error = float(np.abs(scores - np.asarray(features)).max() / np.abs(np.asarray(features)).max())
    print(f"every location equals the classifier's head on its features: relative error {error:.2g}")
    if error > 1e-5:
        raise SystemExit("the score map differs from the classifier's head")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
