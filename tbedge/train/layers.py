"""Layers shared by the tbedge models (registered, so saved models reload)."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="tbedge")
class ImageNorm(layers.Layer):
    """Per-image standardisation (x - mean) / sqrt(var + eps) over H, W and C.

    Same function as ``LayerNormalization(axis=[1, 2, 3], center=False, scale=False)``, but the
    mean and variance are reduced one axis at a time: ONNX Runtime sums a one-step ReduceMean
    over 65 536 pixels sequentially in float32, which moved the mean by 2e-5 and the lung model's
    output by up to 1e-3; row-then-column reductions keep the ONNX export within 1e-5 of Keras.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    @staticmethod
    def _mean(x):
        for axis in (1, 2, 3):
            x = ops.mean(x, axis=axis, keepdims=True)
        return x

    def call(self, x):
        mean = self._mean(x)
        d = x - mean
        return d / ops.sqrt(self._mean(d * d) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def upgrade_norm(model: keras.Model) -> keras.Model:
    """The same model with every whole-image ``LayerNormalization`` (models saved before
    :class:`ImageNorm`) replaced by ImageNorm; other layers and all weights are kept."""

    def clone(layer):
        if isinstance(layer, layers.LayerNormalization) and tuple(layer.axis) == (1, 2, 3) \
                and not layer.center and not layer.scale:
            return ImageNorm(epsilon=layer.epsilon, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new
