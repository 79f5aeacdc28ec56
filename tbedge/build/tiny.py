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


def tiny_classifier(size: int = TINY_SIZE, lung_channel: bool = False):
    """A small classifier with the real contract: in-graph normalisation, ``probabilities`` and an
    exact TB ``cam`` (the head's TB weights applied per position, without the bias). With
    ``lung_channel`` it takes (S, S, 2) inputs and pools over the lungs, as the shipped model."""
    import keras
    from keras import layers

    from ..train.layers import ImageNorm

    keras.utils.set_random_seed(1)
    if lung_channel:
        from ..train.classifier_models import _normalised_input, _with_head

        inp, x, lung = _normalised_input(size, lung_channel=True)
        x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        feat = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        return _with_head(inp, feat, "tiny_classifier", dropout=0.0, lung=lung)
    inp = keras.Input((size, size, 1), name="image")
    x = ImageNorm()(inp)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    feat = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    dense = layers.Dense(3, name="head")
    probs = layers.Activation("softmax", name="probabilities")(dense(layers.GlobalAveragePooling2D()(feat)))
    cam = layers.Conv2D(1, 1, use_bias=False, name="cam_conv")(feat)
    cam = layers.Reshape((size // 4, size // 4), name="cam")(cam)
    model = keras.Model(inp, [probs, cam], name="tiny_classifier")
    w, _ = dense.get_weights()
    model.get_layer("cam_conv").set_weights([w[:, 1].reshape(1, 1, 8, 1)])
    return model


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
    tiny_classifier(lung_channel=True).save(cls)
    # Exercise the whole crop-preparation path (masked + equalised crops, as the shipped model).
    cls.with_suffix(".json").write_text('{"crop_prep": "masked_eq"}')
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
