"""Weight averaging within a run (SWA): the running mean, its resume and BatchNorm re-estimation (a
training run with it: tests/test_classifier.py)."""

from __future__ import annotations

import numpy as np
import pytest


def _tiny(keras):
    x = keras.Input((6, 6, 1))
    y = keras.layers.Conv2D(3, 3, padding="same")(x)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(2)(y))


def _set(model, value_of):
    for i, v in enumerate(model.trainable_variables):
        v.assign(np.full(v.shape, value_of(i), np.float32))


def test_weight_average_is_the_mean_of_the_added_epochs_and_resumes(tf_keras, tmp_path):
    import keras

    from tbedge.train.averaging import WeightAverage

    m, path = _tiny(keras), tmp_path / "avg.npz"
    avg = WeightAverage(path, start=2)
    _set(m, lambda i: 1.0 + i)
    assert not avg.update(m, 1)  # before start: not averaged
    assert avg.update(m, 2)
    _set(m, lambda i: 3.0 + i)
    avg = WeightAverage(path, start=2)  # a resumed run reads the running sum back
    assert avg.count == 1 and avg.last_epoch == 2
    assert avg.update(m, 3) and not avg.update(m, 3)  # an epoch evaluated twice counts once
    target = keras.models.clone_model(m)
    bn_in = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 1), dtype=np.uint8)
    avg.apply(target, bn_in)
    for i, v in enumerate(target.trainable_variables):
        np.testing.assert_allclose(v.numpy(), 2.0 + i)
    with pytest.raises(ValueError, match="no epoch"):
        WeightAverage(tmp_path / "empty.npz", start=0).apply(target, bn_in)


def test_batchnorm_statistics_are_re_estimated_as_the_mean_over_batches(tf_keras):
    import keras

    from tbedge.train.averaging import batchnorm_layers, recompute_batchnorm

    x = keras.Input((5, 5, 2))
    model = keras.Model(x, keras.layers.BatchNormalization(momentum=0.9, name="bn")(x))
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(2, 7.0, np.float32))  # stale statistics must not leak in
    bn.trainable = False
    data = np.random.default_rng(1).integers(0, 256, (10, 5, 5, 2), dtype=np.uint8)
    assert batchnorm_layers(model) == [bn]
    assert recompute_batchnorm(model, data, batch=4) == 3  # batches of 4, 4 and 2
    xs = data.astype(np.float32) / 255.0
    chunks = [xs[0:4], xs[4:8], xs[8:10]]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([c.mean((0, 1, 2)) for c in chunks], 0), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([c.var((0, 1, 2)) for c in chunks], 0), atol=1e-6)
    assert bn.momentum == 0.9 and bn.trainable is False  # settings restored
    with pytest.raises(ValueError, match="no images"):
        recompute_batchnorm(model, data[:0])
