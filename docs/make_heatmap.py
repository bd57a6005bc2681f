"""Make docs/heatmap.png: the README's workflow, run for real, end to end.

1. Train a small Keras 3 classifier (conv + Flatten + Dense head) to tell 24x24 patches that
   hold a bright cross from patches that do not, and save it as classifier.keras.
2. `weightport convert classifier.keras -o fcn.keras` (the command line, as a user runs it).
3. `keras.models.load_model("fcn.keras")`, run it on a 96x160 scene with several crosses,
   and draw the "cross" score map over the scene.

Usage: python docs/make_heatmap.py [--out docs/heatmap.png] (needs the `keras` and `docs` extras).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PATCH = 24


def cross(size: int = 9) -> np.ndarray:
    shape = np.zeros((size, size), "float32")
    shape[size // 2, :] = shape[:, size // 2] = 1.0
    return shape


def patches(rng: np.random.Generator, count: int) -> tuple:
    """Noise patches, half of them with a cross somewhere inside."""
    x = rng.normal(0.0, 0.3, size=(count, PATCH, PATCH, 1)).astype("float32")
    y = rng.integers(0, 2, size=count)
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, PATCH - 11, size=2)
        x[i, r:r + 9, c:c + 9, 0] += cross()
    return x, y


def classifier() -> keras.Model:
    return keras.Sequential([
        keras.Input((PATCH, PATCH, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2, activation="softmax"),
    ])


def scene(rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(0.0, 0.3, size=(96, 160)).astype("float32")
    for r, c in ((12, 20), (60, 45), (30, 110), (70, 130)):
        image[r:r + 9, c:c + 9] += cross()
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "heatmap.png")
    out = parser.parse_args().out
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = classifier()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = patches(rng, 4000)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    accuracy = model.evaluate(*patches(rng, 500), verbose=0)[1]
    with tempfile.TemporaryDirectory() as folder:
        source, fcn_path = Path(folder) / "classifier.keras", Path(folder) / "fcn.keras"
        model.save(source)
        subprocess.run([sys.executable, "-m", "weightport", "convert", str(source), "-o", str(fcn_path)], check=True, stdout=subprocess.DEVNULL)
        fcn = keras.models.load_model(fcn_path)
    image = scene(rng)
    scores = np.asarray(fcn(image[None, :, :, None]))[0, :, :, 1]
    stride = 4  # two 2x2 poolings; each score covers a 24x24 window
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.imshow(image, cmap="gray")
    extent = (PATCH / 2 - stride / 2, PATCH / 2 + stride * (scores.shape[1] - 0.5),
              PATCH / 2 + stride * (scores.shape[0] - 0.5), PATCH / 2 - stride / 2)
    shown = ax.imshow(scores, cmap="inferno", alpha=0.55, extent=extent, vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, label='P("cross") of the 24x24 window centred here')
    ax.set_title(f"fcn.keras on a 96x160 scene: {scores.shape[0]}x{scores.shape[1]} score map\n"
                 f"(from classifier.keras, 24x24 patches, accuracy {accuracy:.2f})")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}: score map {scores.shape}, max {scores.max():.2f}")


if __name__ == "__main__":
    main()
