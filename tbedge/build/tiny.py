"""Tiny Keras models with the real models' I/O names, for tests and smoke builds (seconds to export).

``tiny_fp32_bundle()`` exports both once per process and builds an fp32 bundle from them, so test
modules share one TensorFlow export.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

TINY_SIZE = 64


def tiny_classifier(size: int = TINY_SIZE):
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    inp = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = layers.MaxPooling2D()(x)
    f = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    logits = layers.Dense(3)(layers.GlobalAveragePooling2D()(f))
    probs = layers.Softmax(name="probabilities")(logits)
    cam = layers.Reshape((size // 2, size // 2), name="cam")(layers.Conv2D(1, 1, use_bias=False)(f))
    return keras.Model(inp, [probs, cam], name="tiny_classifier")


def tiny_lungs(size: int = TINY_SIZE):
    import keras

    from ..train.unet import build_unet

    keras.utils.set_random_seed(0)
    return build_unet(size, base=4, depth=2, name="tiny_lungs")


@functools.cache
def tiny_keras_files() -> tuple[Path, Path]:
    d = Path(tempfile.mkdtemp(prefix="tbedge-tiny-"))
    atexit.register(shutil.rmtree, d, True)
    lungs, cls = d / "lungs.keras", d / "classifier.keras"
    tiny_lungs().save(lungs)
    tiny_classifier().save(cls)
    return lungs, cls


@functools.cache
def tiny_fp32_bundle() -> Path:
    """Parity runs on real val images when the data folder is there (TBEDGE_DATA or ../shared/data)."""
    from .. import datasets
    from .bundle_writer import build_bundle

    data_root = os.environ.get("TBEDGE_DATA") or datasets.find_data_root()
    lungs, cls = tiny_keras_files()
    out = lungs.parent / "bundle-fp32"
    build_bundle(lungs, cls, out, "fp32", "cpu", threshold={"value": 0.4, "chosen_on": "test"},
                 data_root=data_root)
    return out
