"""TB classifier architectures (trained from scratch) with one shared head contract.

Every model: input ``image`` (B, S, S, 1) float32 [0, 1] lung crop (or (B, S, S, 2) with the lung
weights as channel 1, ``lung_channel=True``: then the head pools over the lungs only), normalised
inside the graph (``ImageNorm``, as the lung U-Net); outputs ``probabilities`` (B, 3) softmax over
``CLASS_NAMES`` and ``cam`` (B, h, w), the TB class activation map of the last conv features F:
``cam = F @ W[:, tb]`` without the bias, so ``mean(cam) + b_tb == tb_logit`` exactly. The head is
a layer of the forward graph, so the heat map exports to ONNX as a second output.

Importing this module registers :class:`CamHead` (and the training-only loss
:class:`NotTbCrossentropy` and source-adversary layers); do it before ``keras.models.load_model``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..schema import CLASS_NAMES
from .layers import ImageNorm

TB_INDEX = CLASS_NAMES.index("tb")
BN_MOMENTUM = 0.9  # the Keras default 0.99 lagged the weights and collapsed val AUC here
ARCHS = ("alexnet", "googlenet", "inception_resnet_v2", "edge_irn", "resnet_s", "resnet_s14")
DEFAULT_ARCH = "resnet_s"
DEFAULT_SIZE = 224
LUNG_EPS = 1e-3  # keeps a lung-weighted mean finite on a crop without lung cells


def cell_weights(lung, power: float = 1.0):
    """Lung fractions of the feature cells (B, h, w, 1) -> each cell's vote (B, h, w) =
    fraction ** ``power``, and their sum (B,) + LUNG_EPS: the one weighting every lung-pooled
    reading of the features uses (the CAM head, the source adversary)."""
    w = lung[..., 0]
    if power != 1.0:
        w = ops.power(w, power)
    return w, ops.sum(w, axis=(1, 2)) + LUNG_EPS


@keras.saving.register_keras_serializable(package="tbedge")
class CamHead(layers.Layer):
    """Linear classifier applied at every position of F, then averaged (= GAP + dense).

    Returns (logits (B, n), cam (B, h, w)); cam is the ``cam_class`` score map without bias.
    """

    def __init__(self, n_classes: int = len(CLASS_NAMES), cam_class: int = TB_INDEX, lung_power: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.n_classes = n_classes
        self.cam_class = cam_class
        # Cells vote with weight (lung fraction) ** lung_power: above 1, cells that are mostly lung
        # outweigh border cells, whose centres often lie on the chest wall.
        self.lung_power = lung_power

    def build(self, input_shape):
        c = input_shape[-1]
        self.kernel = self.add_weight(shape=(c, self.n_classes), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.n_classes,), initializer="zeros", name="bias")

    def call(self, f, lung=None):
        scores = ops.matmul(f, self.kernel)  # (B, h, w, n): per-position class evidence
        if lung is None:
            logits = ops.mean(scores, axis=(1, 2)) + self.bias
            return logits, scores[..., self.cam_class]
        # Lung-weighted average instead of the plain mean: only lung positions vote, and the CAM is
        # scaled so that its plain spatial mean + bias is still exactly the TB logit.
        w, denom = cell_weights(lung, self.lung_power)
        logits = ops.sum(scores * w[..., None], axis=(1, 2)) / denom[:, None] + self.bias
        cells = float(f.shape[1] * f.shape[2])
        return logits, scores[..., self.cam_class] * w * (cells / denom)[:, None, None]

    def compute_output_shape(self, f_shape, lung_shape=None):
        return (f_shape[0], self.n_classes), tuple(f_shape[:3])

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "cam_class": self.cam_class,
                "lung_power": self.lung_power}


@keras.saving.register_keras_serializable(package="tbedge")
class NotTbCrossentropy(keras.losses.Loss):
    """Cross-entropy with label smoothing, except on rows flagged by a 4th ``y_true`` column (films
    of a source that never shows TB, i.e. NIH): those are scored by the likelihood of their class
    *given not TB*. They teach normal vs other but carry no gradient to the TB logit, so the
    source's look cannot turn into "not TB"."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "not_tb_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        n, ls = len(CLASS_NAMES), self.label_smoothing
        y, flag = y_true[:, :n], y_true[:, n]
        full = keras.losses.categorical_crossentropy(y, y_pred, label_smoothing=ls)
        # given not TB: the same loss over the other classes (it renormalises their probabilities)
        keep = [i for i in range(n) if i != TB_INDEX]
        cond = keras.losses.categorical_crossentropy(ops.take(y, keep, axis=1), ops.take(y_pred, keep, axis=1),
                                                     label_smoothing=ls)
        return (1 - flag) * full + flag * cond

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tbedge")
class GradientReversal(layers.Layer):
    """Identity forward; the gradient flowing back is multiplied by ``-strength`` (domain-adversarial
    training: the layers below learn to hide what the head above learns to find)."""

    def __init__(self, strength: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.strength = strength

    def call(self, x):
        s = self.strength
        return ops.stop_gradient(x * (1.0 + s)) - s * x  # value x, d/dx = -s

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "strength": self.strength}


@keras.saving.register_keras_serializable(package="tbedge")
class LungPool(layers.Layer):
    """Lung-weighted spatial mean of F (B, h, w, c) -> (B, c), cells weighted as by the CAM head
    (``cell_weights``): what the lung-pooled head's logits are linear in. Without lung weights, the
    plain mean."""

    def __init__(self, lung_power: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.lung_power = lung_power

    def call(self, f, lung=None):
        if lung is None:
            return ops.mean(f, axis=(1, 2))
        w, denom = cell_weights(lung, self.lung_power)
        return ops.sum(f * w[..., None], axis=(1, 2)) / denom[:, None]

    def compute_output_shape(self, f_shape, lung_shape=None):
        return (f_shape[0], f_shape[-1])

    def get_config(self):
        return {**super().get_config(), "lung_power": self.lung_power}


SOURCE_OUTPUT = "source"


def with_source_adversary(model: keras.Model, strength: float, width: int = 64) -> keras.Model:
    """Training-only model: ``model``'s outputs plus ``source`` (B, 1), the logit of "this film comes
    from NIH", read from the pooled backbone features through a :class:`GradientReversal`. Trained on
    normal films only, it makes the backbone hide the NIH look from the TB head; the shipped model is
    :func:`without_source_adversary`."""
    feats = model.get_layer("head_dropout").input
    lung = model.get_layer("lung_cells").output if any(lay.name == "lung_cells" for lay in model.layers) else None
    pool = LungPool(model.get_layer("cam_head").lung_power, name="source_pool")
    x = pool(feats) if lung is None else pool(feats, lung)
    x = GradientReversal(strength, name="source_reversal")(x)
    x = layers.Dense(width, activation="relu", name="source_hidden")(x)
    src = layers.Dense(1, name=SOURCE_OUTPUT, dtype="float32")(x)
    return keras.Model(model.input, [*model.outputs, src], name=model.name)


def without_source_adversary(model: keras.Model) -> keras.Model:
    """The classifier alone (``probabilities``, ``cam``): drops a training-only ``source`` head."""
    if SOURCE_OUTPUT not in model.output_names:
        return model
    return keras.Model(model.input, [model.get_layer("probabilities").output, model.get_layer("cam").output],
                       name=model.name)


# -- building blocks ------------------------------------------------------------------------
def _conv(x, f, k, s=1, act=True, name=None, padding="same", dilation=1):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = layers.Conv2D(f, (kh, kw), strides=s, padding=padding, use_bias=False, dilation_rate=dilation,
                      name=None if name is None else name + "_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3,
                                  name=None if name is None else name + "_bn")(x)
    return layers.Activation("relu", name=None if name is None else name + "_relu")(x) if act else x


@keras.saving.register_keras_serializable(package="tbedge")
class ChannelSlice(layers.Layer):
    """Channels [start, stop) of an NHWC tensor (the lung-weight input rides as channel 1)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def _normalised_input(size: int, lung_channel: bool = False):
    """(input, normalised image, lung weights or None). With ``lung_channel`` the input is
    (S, S, 2): the prepared crop and the lung weights on the crop grid (``lungs.classifier_input``)."""
    inp = keras.Input((size, size, 2 if lung_channel else 1), name="image")
    img = ChannelSlice(0, 1, name="crop")(inp) if lung_channel else inp
    lung = ChannelSlice(1, 2, name="lung_weights")(inp) if lung_channel else None
    # Per-image standardisation in the graph: every backend gets it, and sites with other
    # exposure levels look alike to the network.
    x = ImageNorm(name="norm")(img)
    return inp, x, lung


def _with_head(inp, features, name: str, dropout: float = 0.2, lung=None, lung_power: float = 1.0):
    x = layers.Dropout(dropout, name="head_dropout")(features) if dropout else features
    if lung is not None:
        pool = int(inp.shape[1]) // int(features.shape[1])
        if pool * int(features.shape[1]) != int(inp.shape[1]) or features.shape[1] != features.shape[2]:
            raise ValueError(f"lung weights need a feature grid that divides the input ({features.shape})")
        lung = layers.AveragePooling2D(pool, name="lung_cells")(lung)
        logits, cam = CamHead(lung_power=lung_power, name="cam_head")(x, lung)
    else:
        logits, cam = CamHead(name="cam_head")(x)
    probs = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    cam = layers.Identity(name="cam", dtype="float32")(cam)
    return keras.Model(inp, [probs, cam], name=name)


# -- AlexNet (BN variant, FC layers replaced by the GAP head as in the CAM paper) ----------
def _alexnet(x):
    x = _conv(x, 96, 11, 4, name="c1")
    x = layers.MaxPooling2D(3, 2)(x)
    x = _conv(x, 256, 5, name="c2")
    x = layers.MaxPooling2D(3, 2)(x)
    x = _conv(x, 384, 3, name="c3")
    x = _conv(x, 384, 3, name="c4")
    return _conv(x, 256, 3, name="c5")  # no pool5: keep 13x13 for the heat map


# -- GoogLeNet / Inception v1 (BN, no auxiliary heads) --------------------------------------
def _inception(x, c1, c3r, c3, c5r, c5, pp, name):
    b1 = _conv(x, c1, 1, name=name + "_1x1")
    b3 = _conv(_conv(x, c3r, 1, name=name + "_3r"), c3, 3, name=name + "_3x3")
    b5 = _conv(_conv(x, c5r, 1, name=name + "_5r"), c5, 5, name=name + "_5x5")
    bp = _conv(layers.MaxPooling2D(3, 1, padding="same")(x), pp, 1, name=name + "_pp")
    return layers.Concatenate(name=name)([b1, b3, b5, bp])


def _googlenet(x):
    x = _conv(x, 64, 7, 2, name="stem1")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _conv(x, 64, 1, name="stem2")
    x = _conv(x, 192, 3, name="stem3")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _inception(x, 64, 96, 128, 16, 32, 32, "i3a")
    x = _inception(x, 128, 128, 192, 32, 96, 64, "i3b")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _inception(x, 192, 96, 208, 16, 48, 64, "i4a")
    x = _inception(x, 160, 112, 224, 24, 64, 64, "i4b")
    x = _inception(x, 128, 128, 256, 24, 64, 64, "i4c")
    x = _inception(x, 112, 144, 288, 32, 64, 64, "i4d")
    x = _inception(x, 256, 160, 320, 32, 128, 128, "i4e")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _inception(x, 256, 160, 320, 32, 128, 128, "i5a")
    return _inception(x, 384, 192, 384, 48, 128, 128, "i5b")


# -- Inception-ResNet-v2 (keras.applications body, from scratch) ----------------------------
def _inception_resnet_v2(x, inp_size):
    body = keras.applications.InceptionResNetV2(weights=None, include_top=False, input_tensor=x,
                                                input_shape=(inp_size, inp_size, 1))
    for layer in body.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return body.output


# -- edge Inception-ResNet: 2/3/2 repeats instead of 10/20/10, narrower, and one more
#    reduction block (a cheap stride-2 stem + Reduction-0 replace IRv2's costly stem) ----------
def _residual(x, branches, scale, name):
    mixed = layers.Concatenate(name=name + "_mixed")(branches) if len(branches) > 1 else branches[0]
    up = layers.Conv2D(x.shape[-1], 1, name=name + "_up")(mixed)
    up = layers.Rescaling(scale, name=name + "_scale")(up)  # residual scaling as in IRv2
    return layers.Activation("relu", name=name + "_out")(layers.Add(name=name + "_add")([x, up]))


def _edge_irn(x):
    x = _conv(x, 32, 3, 2, name="stem1")
    x = _conv(x, 32, 3, name="stem2")
    x = _conv(x, 64, 3, 2, name="stem3")
    x = layers.Concatenate(name="red0")([layers.MaxPooling2D(3, 2, padding="same")(x),
                                         _conv(x, 64, 3, 2, name="red0_c")])  # 128 @ /8
    for i in range(2):
        n = f"b35_{i}"
        x = _residual(x, [_conv(x, 32, 1, name=n + "_a"),
                          _conv(_conv(x, 32, 1, name=n + "_b1"), 32, 3, name=n + "_b2"),
                          _conv(_conv(_conv(x, 32, 1, name=n + "_c1"), 48, 3, name=n + "_c2"), 64, 3,
                                name=n + "_c3")], 0.17, n)
    x = layers.Concatenate(name="redA")([
        layers.MaxPooling2D(3, 2, padding="same")(x), _conv(x, 128, 3, 2, name="redA_a"),
        _conv(_conv(_conv(x, 96, 1, name="redA_b1"), 96, 3, name="redA_b2"), 128, 3, 2, name="redA_b3")])
    for i in range(3):  # 384 @ /16
        n = f"b17_{i}"
        x = _residual(x, [_conv(x, 96, 1, name=n + "_a"),
                          _conv(_conv(_conv(x, 64, 1, name=n + "_b1"), 80, (1, 7), name=n + "_b2"),
                                96, (7, 1), name=n + "_b3")], 0.1, n)
    x = layers.Concatenate(name="redB")([
        layers.MaxPooling2D(3, 2, padding="same")(x),
        _conv(_conv(x, 128, 1, name="redB_a1"), 192, 3, 2, name="redB_a2"),
        _conv(_conv(_conv(x, 128, 1, name="redB_b1"), 160, 3, name="redB_b2"), 192, 3, 2, name="redB_b3")])
    for i in range(2):  # 768 @ /32
        n = f"b8_{i}"
        x = _residual(x, [_conv(x, 128, 1, name=n + "_a"),
                          _conv(_conv(_conv(x, 128, 1, name=n + "_b1"), 160, (1, 3), name=n + "_b2"),
                                192, (3, 1), name=n + "_b3")], 0.2, n)
    return x


# -- resnet_s: a small ResNet (basic blocks 1/2/2/2, widths 32/64/128/192), ~1.9 M params.
#    Plain 3x3 convs + BN + ReLU: fast on CPUs, fuse cleanly in TensorRT and quantise well. ----
def _basic(x, f, s, name, dilation=1):
    y = _conv(x, f, 3, s, name=name + "_a", dilation=dilation)
    y = _conv(y, f, 3, act=False, name=name + "_b", dilation=dilation)
    if s != 1 or x.shape[-1] != f:
        x = _conv(x, f, 1, s, act=False, name=name + "_proj")
    return layers.Activation("relu", name=name + "_out")(layers.Add(name=name + "_add")([x, y]))


def _resnet_s(x, last_stride: int = 2):
    x = _conv(x, 16, 3, 2, name="stem1")
    x = _conv(x, 32, 3, 2, name="stem2")  # /4
    x = _basic(x, 32, 1, "s1b1")
    for stage, (f, n) in enumerate([(64, 2), (128, 2), (192, 2)], start=2):
        for b in range(n):
            last = stage == 4
            x = _basic(x, f, (last_stride if last else 2) if b == 0 else 1, f"s{stage}b{b + 1}",
                       dilation=2 if last and last_stride == 1 else 1)  # a stride given up: keep the field
    return x


def _resnet_s14(x):
    """resnet_s with its last stage at stride 1 (dilated): a 14 x 14 CAM at 224 px, finer heat map."""
    return _resnet_s(x, last_stride=1)


def build_classifier(arch: str = DEFAULT_ARCH, size: int = DEFAULT_SIZE, dropout: float = 0.2,
                     lung_channel: bool = False, lung_power: float = 1.0) -> keras.Model:
    """Build an untrained classifier ``arch`` (one of ARCHS) for S x S lung crops; with
    ``lung_channel`` it also takes the lung weights and pools only over the lungs, each cell
    weighted by (lung fraction) ** ``lung_power``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")
    if arch == "inception_resnet_v2" and size < 75:
        raise ValueError("inception_resnet_v2 needs crops of at least 75 px")
    inp, x, lung = _normalised_input(size, lung_channel)
    if arch == "inception_resnet_v2":
        feats = _inception_resnet_v2(x, size)
    else:
        body = {"alexnet": _alexnet, "googlenet": _googlenet, "edge_irn": _edge_irn, "resnet_s": _resnet_s,
                "resnet_s14": _resnet_s14}
        feats = body[arch](x)
    return _with_head(inp, feats, f"tbedge_{arch}", dropout, lung, lung_power)


def ensemble(members: list[keras.Model], name: str = "tbedge_ensemble") -> keras.Model:
    """One model averaging the members' logits and TB CAMs (same input). The heat map stays exact:
    mean(cam) + mean of the members' TB biases = the ensemble's TB logit."""
    inp = keras.Input(tuple(members[0].input.shape[1:]), name="image")
    logits, cams = [], []
    for i, m in enumerate(members):
        sub = keras.Model(m.input, [m.get_layer("cam_head").output[0], m.get_layer("cam").output],
                          name=f"member_{i}")
        lo, ca = sub(inp)
        logits.append(lo)
        cams.append(ca)
    probs = layers.Activation("softmax", name="probabilities", dtype="float32")(
        layers.Average(name="ensemble_logits")(logits))
    cam = layers.Identity(name="cam", dtype="float32")(layers.Average(name="ensemble_cam")(cams))
    return keras.Model(inp, [probs, cam], name=name)


def with_lung_power(model: keras.Model, power: float) -> keras.Model:
    """The same trained model whose CAM head pools over cells with weight (lung fraction) ** power."""
    cfg = model.get_config()
    heads = [lyr for lyr in cfg["layers"] if lyr["class_name"].endswith("CamHead")]
    if len(heads) != 1:
        raise ValueError(f"expected one CAM head, found {len(heads)}")
    heads[0]["config"]["lung_power"] = float(power)
    out = keras.Model.from_config(cfg)
    out.set_weights(model.get_weights())
    return out


# -- cost accounting ------------------------------------------------------------------------
def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (convolutions, transposed ones, dense layers and the head).

    Counted from layer shapes; BN, pooling, adds and activations are left out (they are a few
    percent and fuse away on the edge runtimes). FLOPs ~= 2 x MACs.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose, layers.DepthwiseConv2D, layers.Dense, CamHead)):
            out = layer.output[0] if isinstance(layer, CamHead) else layer.output
            inp = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
            cin = int(inp.shape[-1])
            if isinstance(layer, layers.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                total += int(out.shape[1]) * int(out.shape[2]) * kh * kw * int(out.shape[-1])
            elif isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
                kh, kw = layer.kernel_size
                # a transposed convolution reaches each output pixel with kernel / stride-area taps
                taps = kh * kw // (layer.strides[0] * layer.strides[1] if isinstance(layer, layers.Conv2DTranspose)
                                   else 1)
                total += (int(out.shape[1]) * int(out.shape[2]) * taps * cin // getattr(layer, "groups", 1)
                          * int(out.shape[-1]))
            elif isinstance(layer, CamHead):
                total += int(inp.shape[1]) * int(inp.shape[2]) * cin * layer.n_classes
            else:
                total += cin * int(out.shape[-1])
    return total


def describe(model: keras.Model) -> dict:
    """Parameters, MACs/FLOPs and the CAM grid of a built classifier."""
    macs = count_macs(model)
    cam = model.get_layer("cam").output
    return {"params": int(model.count_params()), "macs": macs, "gflops": round(2 * macs / 1e9, 3),
            "cam_grid": [int(cam.shape[1]), int(cam.shape[2])]}
