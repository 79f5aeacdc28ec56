"""Small U-Net for lung segmentation. Normalises its own input (per-image layer norm in the graph)."""

from __future__ import annotations


def bce_dice_loss(y, p):
    """Binary cross-entropy + soft Dice per image (module level so checkpoints reload)."""
    import keras

    bce = keras.losses.binary_crossentropy(y, p)
    inter = keras.ops.sum(y * p, axis=(1, 2, 3))
    d = 1 - (2 * inter + 1) / (keras.ops.sum(y, axis=(1, 2, 3)) + keras.ops.sum(p, axis=(1, 2, 3)) + 1)
    return keras.ops.mean(bce, axis=(1, 2)) + d


def build_unet(size: int = 256, base: int = 16, depth: int = 4, stem: int = 1, name: str = "tbedge_lungs"):
    """``stem=2`` runs the U-Net at half resolution behind a strided convolution and resizes the mask
    logits back up (bilinear): a quarter of the FLOPs with the same input and output, since lung
    borders are smooth at 256 px."""
    import keras
    from keras import layers

    from .layers import ImageNorm

    def block(x, f):
        for _ in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation("relu")(x)
        return x

    inp = keras.Input((size, size, 1), name="image")
    # Per-image standardisation inside the graph: every backend gets it and sites with other
    # exposure levels look alike to the network.
    x = ImageNorm(name="norm")(inp)
    if stem > 1:
        x = layers.Conv2D(base, 3, strides=stem, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
    skips = []
    for d in range(depth):
        x = block(x, base * 2**d)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, base * 2**depth)
    for d in reversed(range(depth)):
        x = layers.Conv2DTranspose(base * 2**d, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[d]])
        x = block(x, base * 2**d)
    if stem == 1:
        out = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    else:
        x = layers.Conv2D(1, 1, name="logits")(x)
        x = layers.UpSampling2D(stem, interpolation="bilinear")(x)
        out = layers.Activation("sigmoid", name="mask")(x)
    return keras.Model(inp, out, name=name)
