"""Weight averaging within one training run (stochastic weight averaging, SWA).

The epoch-end weights from ``start`` on are averaged into a second model; because averaged
convolutions no longer match any epoch's BatchNorm statistics, those are re-estimated on the
training crops (un-augmented, inference preparation) with a cumulative mean over batches. Flat,
averaged solutions are reported to generalise better to unseen domains (SWA, SWAD); the averaged
model costs nothing at inference. The running sum is checkpointed (``avg.npz``) so a resumed run
continues it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..fsio import atomic_write_bytes


def batchnorm_layers(model) -> list:
    import keras

    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def recompute_batchnorm(model, x_uint8: np.ndarray, batch: int = 32) -> int:
    """Replace every BatchNorm's moving mean/variance by the mean over ``x_uint8``'s batches of
    the batch statistics under the model's current weights; returns the number of batches."""
    if not len(x_uint8):
        raise ValueError("no images to estimate BatchNorm statistics from")
    bns = batchnorm_layers(model)
    saved = [(bn.momentum, bn.trainable) for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, np.float32))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, np.float32))
        bn.trainable = True  # a frozen BatchNorm ignores training=True
    n = 0
    try:
        for i in range(0, len(x_uint8), batch):
            for bn in bns:
                bn.momentum = n / (n + 1)  # running value = mean of the first n+1 batch statistics
            model(x_uint8[i:i + batch].astype(np.float32) / 255.0, training=True)
            n += 1
    finally:
        for bn, (momentum, trainable) in zip(bns, saved, strict=True):
            bn.momentum, bn.trainable = momentum, trainable
    return n


class WeightAverage:
    """Running mean of a model's trainable weights over epochs ``>= start`` (holds the sum)."""

    def __init__(self, path: str | Path, start: int):
        self.path, self.start = Path(path), start
        self.sum: list[np.ndarray] | None = None
        self.count, self.last_epoch = 0, -1
        if self.path.exists():
            z = np.load(self.path)
            self.count, self.last_epoch = int(z["count"]), int(z["last_epoch"])
            self.sum = [z[f"w{i}"] for i in range(int(z["n"]))]

    def update(self, model, epoch: int) -> bool:
        """Add ``model``'s weights after ``epoch``; False (nothing added) before ``start`` or when
        that epoch is already in the sum (a resume that repeats an epoch's evaluation)."""
        if epoch < self.start or epoch <= self.last_epoch:
            return False
        w = [np.array(v.numpy(), np.float64) for v in model.trainable_variables]
        self.sum = w if self.sum is None else [s + x for s, x in zip(self.sum, w, strict=True)]
        self.count, self.last_epoch = self.count + 1, epoch
        buf = io.BytesIO()
        np.savez(buf, count=self.count, last_epoch=self.last_epoch, n=len(self.sum),
                 **{f"w{i}": s for i, s in enumerate(self.sum)})
        atomic_write_bytes(self.path, buf.getvalue())
        return True

    def apply(self, target, bn_inputs: np.ndarray) -> None:
        """Load the average into ``target`` (a model of the same structure) and re-estimate its
        BatchNorm statistics on ``bn_inputs`` (uint8, prepared as at inference)."""
        if not self.count:
            raise ValueError("no epoch has been averaged yet")
        for v, s in zip(target.trainable_variables, self.sum, strict=True):
            v.assign((s / self.count).astype(np.float32))
        recompute_batchnorm(target, bn_inputs)
