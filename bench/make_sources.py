"""Make the benchmark's source files (run by bench.py as a subprocess, so its own process stays small).

    python bench/make_sources.py keras3 DIR      vgg16.weights.h5 and vgg16.keras (Keras 3, weights=None)
    python bench/make_sources.py tf_keras DIR    vgg16_weights.h5 (tf_keras save_weights, legacy layout)
    python bench/make_sources.py big DIR GB      big_7x7xC.h5: a ~GB legacy weights-only .h5, huge flatten head
    python bench/make_sources.py torch DIR       vgg16.safetensors and vgg16.pth: torchvision's VGG16 (weights=None)
                                                 state dict, as safetensors and as torch.save writes it
    python bench/make_sources.py apps DIR        <app>.keras (Keras 3 model.save) and <app>_tfk.h5 (tf_keras
                                                 model.save, a whole legacy model) for every APPS model

The big file has the layout tf_keras `save_weights` writes (root `keras_version`, `backend`,
`layer_names`; per layer `weight_names` and datasets at `<layer>/<layer>/kernel:0`), written in
row blocks so this process never holds more than one block.
"""

from __future__ import annotations

import sys
from pathlib import Path

WINDOW = 7  # the big file's Dense sees a 7x7xC window, as VGG16's fc1 sees 7x7x512
UNITS = 4096
BLOCK_ROWS = 1024  # 16 MiB of float32 rows of 4096
# keras.applications models with hundreds of small tensors (GAP head), weights=None
APPS = ("ResNet50", "DenseNet121", "EfficientNetB0", "MobileNetV2")


def app_names(app: str) -> tuple:
    """The two cached sources of one application model: (Keras 3 .keras, tf_keras whole-model .h5)."""
    return f"{app.lower()}.keras", f"{app.lower()}_tfk.h5"


def big_channels(gigabytes: float) -> int:
    """Channels C such that the (7*7*C, 4096) float32 Dense kernel is about `gigabytes` GB."""
    return max(1, round(gigabytes * 1e9 / (WINDOW * WINDOW * UNITS * 4)))


def big_name(gigabytes: float) -> str:
    return f"big_{WINDOW}x{WINDOW}x{big_channels(gigabytes)}.h5"


def make_keras3(folder: Path) -> None:
    import keras

    model = keras.applications.VGG16(weights=None)
    model.save_weights(folder / "vgg16.weights.h5")
    model.save(folder / "vgg16.keras")


def make_tf_keras(folder: Path) -> None:
    import tf_keras

    tf_keras.applications.VGG16(weights=None).save_weights(str(folder / "vgg16_weights.h5"))


def make_torch(folder: Path) -> None:
    import torch
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.vgg16(weights=None).state_dict()
    save_file(state, str(folder / "vgg16.safetensors"))
    torch.save(state, folder / "vgg16.pth")


def make_apps(folder: Path) -> None:
    """Each APPS model saved whole by Keras 3 (`.keras`) and by tf_keras (legacy `.h5`), each in a
    child process of its own so neither Keras shares a process with the other."""
    import subprocess

    for app in APPS:
        for kind in ("app-keras3", "app-tf_keras"):
            subprocess.run([sys.executable, __file__, kind, str(folder), app], check=True)


def make_app(folder: Path, app: str, tf_keras_route: bool) -> None:
    keras3, legacy = app_names(app)
    if tf_keras_route:
        import tf_keras

        getattr(tf_keras.applications, app)(weights=None).save(str(folder / legacy))
    else:
        import keras

        getattr(keras.applications, app)(weights=None).save(folder / keras3)


def make_big(path: Path, gigabytes: float) -> None:
    import h5py
    import numpy as np

    channels = big_channels(gigabytes)
    text = h5py.string_dtype("ascii")  # tf_keras writes its string attributes as variable-length ASCII
    rng = np.random.default_rng(0)
    layers = {
        "input_1": [],
        "conv2d": [("kernel:0", (3, 3, 3, channels)), ("bias:0", (channels,))],
        "max_pooling2d": [],
        "flatten": [],
        "dense": [("kernel:0", (WINDOW * WINDOW * channels, UNITS)), ("bias:0", (UNITS,))],
        "dense_1": [("kernel:0", (UNITS, 10)), ("bias:0", (10,))],
    }
    with h5py.File(path, "w") as f:
        f.attrs.create("backend", "tensorflow", dtype=text)
        f.attrs.create("keras_version", "2.21.0", dtype=text)
        f.attrs.create("layer_names", [name.encode("ascii") for name in layers], dtype=text)
        for name, weights in {**layers, "top_level_model_weights": []}.items():
            group = f.create_group(name)
            names = [f"{name}/{weight}".encode("ascii") for weight, _ in weights]
            if names:
                group.attrs.create("weight_names", names, dtype=text)
            else:  # what tf_keras writes for a layer without weights: an empty float64 array
                group.attrs.create("weight_names", np.zeros(0))
            for weight, shape in weights:
                _write_random(group.create_dataset(f"{name}/{weight}", shape, dtype="float32"), rng)


def _write_random(dataset, rng) -> None:
    """Fill a float32 dataset with small random values, BLOCK_ROWS rows at a time."""
    import numpy as np

    rows = dataset.shape[0]
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(rows, start + BLOCK_ROWS)
        dataset[start:stop] = rng.standard_normal((stop - start, *dataset.shape[1:]), dtype=np.float32) * 0.01


def main(argv: list[str]) -> None:
    kind, folder = argv[0], Path(argv[1])
    if kind == "keras3":
        make_keras3(folder)
    elif kind == "tf_keras":
        make_tf_keras(folder)
    elif kind == "torch":
        make_torch(folder)
    elif kind == "apps":
        make_apps(folder)
    elif kind in ("app-keras3", "app-tf_keras"):
        make_app(folder, argv[2], kind == "app-tf_keras")
    elif kind == "big":
        make_big(folder / big_name(float(argv[2])), float(argv[2]))
    else:
        raise SystemExit(f"unknown source kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
