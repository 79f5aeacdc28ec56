"""Classifier contract (names, shapes, exact CAM), crop cache and a resumable training smoke run
on a few real crops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tbedge.datasets import discover
from tbedge.schema import CLASS_NAMES

SMALL = {"inception_resnet_v2": 80}  # its valid-padded stem needs >= 75 px; the rest build at 64


@pytest.fixture(scope="module")
def cm(tf_keras):
    from tbedge.train import classifier_models

    return classifier_models


def _cam_check(model, x):
    import keras

    probs, cam = (keras.ops.convert_to_numpy(t) for t in model(x, training=False))
    head = model.get_layer("cam_head")
    logits = keras.ops.convert_to_numpy(keras.Model(model.input, head.output[0])(x, training=False))
    tb = CLASS_NAMES.index("tb")
    np.testing.assert_allclose(cam.mean(axis=(1, 2)) + head.bias.numpy()[tb], logits[:, tb], atol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    return probs, cam


@pytest.mark.parametrize("arch", ["alexnet", "googlenet", "inception_resnet_v2", "edge_irn", "resnet_s", "resnet_s14"])
def test_every_arch_contract(cm, arch):
    s = SMALL.get(arch, 64)
    m = cm.build_classifier(arch, s)
    assert m.input.name == "image" and tuple(m.input.shape) == (None, s, s, 1)
    assert m.output_names == ["probabilities", "cam"]
    assert tuple(m.outputs[0].shape) == (None, 3) and len(m.outputs[1].shape) == 3
    # Give the head a non-zero bias so the "without bias" part of the contract is tested too.
    head = m.get_layer("cam_head")
    head.bias.assign(np.array([0.3, -0.7, 0.2], np.float32))
    x = np.random.default_rng(0).random((2, s, s, 1), dtype=np.float32)
    probs, cam = _cam_check(m, x)
    assert cam.shape[1:] == tuple(m.outputs[1].shape[1:])
    assert any(layer.name == "norm" for layer in m.layers)  # normalises its own input
    bns = [layer for layer in m.layers if "BatchNormalization" in type(layer).__name__]
    assert bns and all(b.momentum == pytest.approx(cm.BN_MOMENTUM) for b in bns)


def test_lung_weighted_head_is_exact_and_ignores_cells_outside_the_lungs(cm):
    """With the lung-weight channel, only lung cells vote and the CAM stays exact (mean + bias = logit)."""
    m = cm.build_classifier(cm.DEFAULT_ARCH, 64, lung_channel=True)
    assert tuple(m.input.shape) == (None, 64, 64, 2)
    m.get_layer("cam_head").bias.assign(np.array([0.3, -0.7, 0.2], np.float32))
    x = np.random.default_rng(3).random((3, 64, 64, 2), dtype=np.float32)
    x[..., 1] = 0
    x[0, 8:56, 0:24, 1] = 1  # a left "lung": inside the left column of the 2 x 2 feature grid
    x[1, ..., 1] = 1  # a fallback crop: every position counts
    x[2, 8:56, 40:64, 1] = 1
    _, cam = _cam_check(m, x)
    assert cam.shape == (3, 2, 2)
    assert np.all(cam[0, :, 1] == 0) and np.all(cam[0, :, 0] != 0)
    assert np.all(cam[1] != 0) and np.all(cam[2, :, 0] == 0)


def test_lung_power_reweights_border_cells_and_keeps_the_cam_exact(cm, tmp_path):
    """``with_lung_power``: same weights, cells vote by (lung fraction) ** p; exact CAM; saved and loaded."""
    import keras

    m = cm.build_classifier(cm.DEFAULT_ARCH, 64, lung_channel=True)
    m.get_layer("cam_head").bias.assign(np.array([0.3, -0.7, 0.2], np.float32))
    x = np.random.default_rng(4).random((3, 64, 64, 2), dtype=np.float32)
    x[..., 1] = 0
    x[0, :, 0:32, 1] = 1  # whole cells only: fractions 0 or 1, so the power changes nothing
    x[1, :, 16:64, 1] = 1  # the left column of cells is half lung
    x[2, ..., 1] = 1
    p1, c1 = _cam_check(m, x)
    m2 = cm.with_lung_power(m, 2)
    p2, c2 = _cam_check(m2, x)
    assert m2.get_layer("cam_head").lung_power == 2.0 and m.get_layer("cam_head").lung_power == 1.0
    np.testing.assert_allclose(p2[[0, 2]], p1[[0, 2]], atol=1e-6)
    assert not np.allclose(p2[1], p1[1], atol=1e-6)
    # Half-lung cells weigh 0.25 against 1 (not 0.5): their share of the CAM falls accordingly.
    share = lambda c: np.abs(c[1, :, 0]).sum() / np.abs(c[1]).sum()  # noqa: E731
    assert share(c2) < share(c1)
    np.testing.assert_allclose(cm.with_lung_power(m, 1).predict(x, verbose=0)[0], p1, atol=1e-6)
    m2.save(tmp_path / "p2.keras")
    back = keras.models.load_model(tmp_path / "p2.keras", compile=False)
    assert back.get_layer("cam_head").lung_power == 2.0
    np.testing.assert_allclose(back.predict(x, verbose=0)[0], p2, atol=1e-6)
    built = cm.build_classifier(cm.DEFAULT_ARCH, 64, lung_channel=True, lung_power=2)
    assert built.get_layer("cam_head").lung_power == 2  # trained with the head it ships with


def test_ensemble_averages_logits_and_keeps_the_cam_exact(cm, tmp_path):
    import keras

    from tbedge.train.predict import load_keras

    ms = [cm.build_classifier(cm.DEFAULT_ARCH, 64, lung_channel=True) for _ in range(2)]
    for m, b in zip(ms, ([0.3, -0.7, 0.2], [0.1, 0.5, -0.2]), strict=True):
        m.get_layer("cam_head").bias.assign(np.array(b, np.float32))
    e = cm.ensemble(ms)
    e.save(tmp_path / "e.keras")
    e = load_keras(tmp_path / "e.keras")
    x = np.random.default_rng(4).random((2, 64, 64, 2), dtype=np.float32)
    x[0, ..., 1] = 0
    x[0, 10:50, 5:30, 1] = 1
    logits = [keras.ops.convert_to_numpy(keras.Model(m.input, m.get_layer("cam_head").output[0])(x)) for m in ms]
    probs, cam = (keras.ops.convert_to_numpy(t) for t in e(x, training=False))
    mean_logit = (logits[0] + logits[1]) / 2
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(keras.ops.softmax(mean_logit)), atol=1e-5)
    tb_bias = (-0.7 + 0.5) / 2
    np.testing.assert_allclose(cam.mean(axis=(1, 2)) + tb_bias, mean_logit[:, 1], atol=1e-4)
    assert cm.describe(e)["params"] == 2 * cm.describe(ms[0])["params"]


def test_default_arch_budget_and_roundtrip(cm, tmp_path):
    import keras

    m = cm.build_classifier(cm.DEFAULT_ARCH, cm.DEFAULT_SIZE)
    d = cm.describe(m)
    assert 0.5e6 <= d["params"] <= 5e6 and d["cam_grid"] == [7, 7]
    m.get_layer("cam_head").bias.assign(np.array([0.1, -0.4, 0.2], np.float32))
    m.save(tmp_path / "m.keras")
    m2 = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).random((1, cm.DEFAULT_SIZE, cm.DEFAULT_SIZE, 1), dtype=np.float32)
    for a, b in zip(m(x, training=False), _cam_check(m2, x), strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), b, atol=1e-5)


def test_mac_count_by_hand(cm):
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 1), name="image")
    f = layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)  # 8*8*9*1*4 = 2304
    f = layers.Conv2D(6, 1, strides=2)(f)  # 4*4*4*6 = 384
    logits, cam = cm.CamHead(name="cam_head")(f)  # 4*4*6*3 = 288
    m = keras.Model(inp, [layers.Activation("softmax", name="probabilities")(logits),
                          layers.Identity(name="cam")(cam)])
    assert cm.count_macs(m) == 2304 + 384 + 288
    up = layers.Conv2DTranspose(2, 2, strides=2)(f)  # 8*8 outputs, one tap each: 8*8*6*2 = 768
    assert cm.count_macs(keras.Model(inp, up)) == 2304 + 384 + 768
    with pytest.raises(ValueError):
        cm.build_classifier("vgg", 64)


@pytest.fixture(scope="module")
def tiny_crops(tf_keras, data_root, tmp_path_factory):
    """A crop cache of 24 real Shenzhen/Montgomery/NIH images, cropped by a tiny random U-Net
    (its masks fail QA, so this also exercises the fallback box)."""
    import keras

    from tbedge.train.crops import build_crop_cache
    from tbedge.train.unet import build_unet

    keras.utils.set_random_seed(0)
    samples = discover(data_root)
    pick = []
    for src in ("shenzhen_normal", "shenzhen_tb", "nih_pneumonia"):
        pick += [s for s in samples if s.source == src][:8]
    out = tmp_path_factory.mktemp("crops") / "crops.npz"
    build_crop_cache(pick, build_unet(256, base=4, depth=2), out, size=64, log=lambda _: None)
    return out


def test_crop_cache_contents(tiny_crops):
    from tbedge.train.crops import load_crops

    c = load_crops(tiny_crops)
    assert c.images.shape == (24, 64, 64) and c.images.dtype == np.uint8
    assert set(c.label) == {"normal", "tb", "other"} and c.images.std() > 5
    assert c.meta["size"] == 64 and c.meta["n"] == 24
    assert c.box.shape == (24, 4) and np.all(c.box[:, 2] > c.box[:, 0])
    assert c.mask.shape == (24, 64, 64) and c.mask.dtype == np.uint8  # lung weights on the crop grid
    parts = c.parts()
    got = np.sort(np.concatenate([parts[k] for k in ("train", "val", "calib", "test")]))
    assert got.tolist() == list(range(24))  # disjoint and complete
    assert {"site_val", "site_test"} <= set(c.parts("shenzhen"))


# config.json stays flat with these keys, in this order (readers: model_prep, scripts/ship.sh...)
CONFIG_KEYS = ["arch", "size", "seed", "fold", "selection", "epochs", "budget_minutes", "batch", "lr", "weight_decay",
               "label_smoothing", "aug_strength", "split_seed", "prep", "nih_weight", "nih_normal_weight",
               "nih_not_tb", "nih_aug_strength", "nih_adversary", "film_look_p", "lung_power", "average_from",
               "mixup_alpha", "train_fraction", "sets", "select_without", "site_balance", "crops", "crops_meta",
               "n_train", "n_select", "class_names", "params", "macs", "gflops", "cam_grid"]


def test_training_smoke_resumes(tiny_crops, tmp_path):
    from dataclasses import replace

    from tbedge.train.classifier import TrainConfig, cosine_lr, train_classifier
    from tbedge.train.classifier_eval import evaluate_classifier

    out = tmp_path / "run"
    cfg = TrainConfig(seed=0, batch=4, max_steps_per_epoch=2, run_eagerly=True, epochs=1)
    s1 = train_classifier(tiny_crops, "resnet_s", out, cfg, log=lambda _: None)
    assert s1["epoch"] == 0 and len(s1["history"]) == 1
    s2 = train_classifier(tiny_crops, "resnet_s", out, replace(cfg, epochs=2), log=lambda _: None)
    assert s2["epoch"] == 1 and [r["epoch"] for r in s2["history"]] == [0, 1]  # continued, not restarted
    assert s2["history"][0] == s1["history"][0]
    assert s2["history"][1]["lr_next"] == pytest.approx(cosine_lr(1e-3, 1.0), rel=1e-5)  # fully annealed
    assert cosine_lr(1e-3, 0.0) == pytest.approx(1e-3) and cosine_lr(1e-3, 0.5) == pytest.approx(0.51e-3)
    for f in ("best.keras", "last.keras", "state.json", "log.csv", "curves.png", "config.json",
              "result.json"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["selection"] == "val" and cfg["arch"] == "resnet_s"
    assert list(cfg) == CONFIG_KEYS and cfg["epochs"] == 2 and cfg["nih_not_tb"] == "none" and cfg["sets"] == "core"
    res = evaluate_classifier(tiny_crops, out / "best.keras", tmp_path / "eval", part="all", threshold=0.5)
    assert res["n"] == 24 and res["threshold_source"] == "given"
    assert sum(map(sum, res["confusion"]["rows_true_cols_pred"])) == 24
    assert (tmp_path / "eval" / "roc.png").is_file() and (tmp_path / "eval" / "predictions.csv").is_file()


def test_masked_training_and_evaluation_use_the_same_inputs(tiny_crops, tmp_path):
    """prep masked_eq: a 2-channel model is trained, and evaluation reads the prep from its run."""
    from tbedge.train.classifier import crop_arrays, train_classifier
    from tbedge.train.classifier_eval import evaluate_classifier
    from tbedge.train.crops import load_crops
    from tbedge.train.predict import load_keras

    out = tmp_path / "m"
    train_classifier(tiny_crops, "resnet_s", out, epochs=1, seed=0, batch=4, max_steps_per_epoch=1,
                     run_eagerly=True, prep="masked_eq", log=lambda _: None)
    assert tuple(load_keras(out / "best.keras").input.shape) == (None, 64, 64, 2)
    res = evaluate_classifier(tiny_crops, out / "best.keras", tmp_path / "e", part="all", threshold=0.5)
    assert res["prep"] == "masked_eq" and res["n"] == 24
    x = crop_arrays(load_crops(tiny_crops), np.arange(24), 64, "masked_eq")
    assert x.shape == (24, 64, 64, 2) and x[..., 1].max() == 255


def test_training_refuses_sets_its_crop_cache_lacks(tiny_crops, tmp_path):
    """--sets all on a cache of the core sets stops before any epoch instead of training on less."""
    from tbedge.train.classifier import train_classifier

    with pytest.raises(ValueError, match="no \\['covid', 'tb_more'\\] films"):
        train_classifier(tiny_crops, "resnet_s", tmp_path / "x", sets="all", run_eagerly=True, log=lambda _: None)
    assert not (tmp_path / "x" / "state.json").exists()


def test_selection_can_leave_sites_out(tiny_crops, tmp_path):
    """--select-without: those sites' val films never choose the epoch (acquisition-confounded sites)."""
    from tbedge.train.classifier import train_classifier
    from tbedge.train.crops import load_crops

    c = load_crops(tiny_crops)
    val = c.parts()["val"]
    assert {"shenzhen", "nih"} <= set(c.site[val])  # the test means something only if both are in val
    train_classifier(tiny_crops, "resnet_s", tmp_path / "s", epochs=1, batch=4, max_steps_per_epoch=1,
                     run_eagerly=True, select_without=("nih",), log=lambda _: None)
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["select_without"] == ["nih"] and cfg["n_select"] == int(np.sum(c.site[val] != "nih"))


def test_site_class_weights_share_each_class_equally_among_its_sites():
    from tbedge.train.classifier import site_class_weights

    y = np.array([1] * 90 + [1] * 10 + [0] * 30 + [0] * 20 + [2] * 50)  # tb, tb, normal, normal, other
    site = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 30 + ["nih"] * 20 + ["nih"] * 50)
    w = site_class_weights(y, site)
    assert w.mean() == pytest.approx(1.0)
    totals = {(c, s): w[(y == c) & (site == s)].sum() / len(y) for c, s in
              [(1, "a"), (1, "b"), (0, "a"), (0, "nih"), (2, "nih")]}
    assert totals[(1, "a")] == pytest.approx(1 / 6) and totals[(1, "b")] == pytest.approx(1 / 6)
    assert totals[(0, "a")] == pytest.approx(1 / 6) and totals[(2, "nih")] == pytest.approx(1 / 3)
    # site "a": TB and normal now weigh alike although it brings 3x more TB films
    assert totals[(1, "a")] == pytest.approx(totals[(0, "a")])


def test_site_balanced_training_draws_by_weight(tiny_crops, tmp_path):
    from tbedge.train.classifier import TrainConfig, _load_data, train_classifier

    d = _load_data(tiny_crops, TrainConfig(site_balance=True, nih_weight=0.5), log=lambda _: None)
    assert np.all(d.wtr == 1) and d.sample_p.sum() == pytest.approx(1.0)
    share = {c: d.sample_p[d.ytr == c].sum() for c in range(3)}  # normal, tb: Shenzhen; other: NIH at 0.5
    assert share[0] == pytest.approx(share[1]) and share[2] == pytest.approx(share[0] / 2)
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "sb", epochs=1, batch=4, max_steps_per_epoch=2,
                         run_eagerly=True, site_balance=True, log=lambda _: None)
    assert s["epoch"] == 0 and json.loads((tmp_path / "sb" / "config.json").read_text())["site_balance"] is True


def test_budget_stops_before_overrun(tiny_crops, tmp_path):
    from tbedge.train.classifier import train_classifier

    # A budget smaller than one epoch: the first epoch runs, the second would overrun.
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "b", epochs=5, batch=4, budget_minutes=1e-4,
                         max_steps_per_epoch=1, run_eagerly=True, log=lambda _: None)
    assert s["stopped"] == "budget" and s["epoch"] == 0


def test_cam_exports_to_onnx_as_second_output(cm, tmp_path):
    """The head is part of the graph: tf2onnx keeps both outputs, names and values."""
    import onnxruntime as ort
    import tensorflow as tf
    from conftest import require_module

    tf2onnx = require_module("tf2onnx")
    m = cm.build_classifier(cm.DEFAULT_ARCH, 64)
    m.get_layer("cam_head").bias.assign(np.array([0.1, -0.4, 0.2], np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 64, 64, 1), tf.float32, name="image")])
    def serve(image):
        probs, cam = m(image, training=False)
        return {"probabilities": probs, "cam": cam}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sorted(o.name for o in sess.get_outputs()) == ["cam", "probabilities"]
    x = np.random.default_rng(2).random((2, 64, 64, 1), dtype=np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x}), strict=True))
    want = serve(tf.constant(x))
    for k in ("probabilities", "cam"):
        np.testing.assert_allclose(got[k], want[k].numpy(), atol=1e-4)


def test_nih_loss_weights():
    """NIH films are down-weighted (all, or its no-finding films alone) and the mean weight stays 1."""
    from tbedge.train.classifier import class_index, nih_weights

    site = np.array(["shenzhen", "nih", "nih", "montgomery"])
    y = class_index(np.array(["tb", "normal", "other", "normal"]))
    w = np.ones(4, np.float32)
    assert nih_weights(w, site, y) is w  # weight 1 everywhere: unchanged
    same = nih_weights(w, site, y, 0.5)
    np.testing.assert_allclose(same, np.array([1, 0.5, 0.5, 1]) * 4 / 3)
    only_no_finding = nih_weights(w, site, y, 0.5, nih_normal_weight=0.0)
    np.testing.assert_allclose(only_no_finding, np.array([1, 0, 0.5, 1]) * 4 / 2.5)
    assert only_no_finding.mean() == pytest.approx(1.0)


def test_not_tb_loss_gives_flagged_rows_no_say_on_tb(cm):
    """Flagged rows (NIH) are scored given "not TB": the TB logit does not move their loss; unflagged
    rows get the ordinary label-smoothed cross-entropy."""
    import keras

    loss = cm.NotTbCrossentropy(label_smoothing=0.05, reduction=None)
    ref = keras.losses.CategoricalCrossentropy(label_smoothing=0.05, reduction=None)
    logits = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]], np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    p = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    plain = keras.ops.convert_to_numpy(loss(np.c_[y, [0, 0]], p))
    np.testing.assert_allclose(plain, keras.ops.convert_to_numpy(ref(y, p)), rtol=1e-5)
    flagged = [keras.ops.convert_to_numpy(loss(np.c_[y, [1, 1]], keras.ops.softmax(logits + [0, d, 0])))
               for d in (0.0, 3.0, -3.0)]
    np.testing.assert_allclose(flagged[1], flagged[0], rtol=1e-5)  # TB logit moved: same loss
    np.testing.assert_allclose(flagged[2], flagged[0], rtol=1e-5)
    q = np.exp(logits[:, [0, 2]]) / np.exp(logits[:, [0, 2]]).sum(1, keepdims=True)  # p(class | not TB)
    yc = y[:, [0, 2]] * 0.95 + 0.025
    np.testing.assert_allclose(flagged[0], -(yc * np.log(q)).sum(1), rtol=1e-5)


def test_training_with_nih_not_tb(tiny_crops, tmp_path):
    from tbedge.train.classifier import Experimental, TrainConfig, train_classifier

    cfg = TrainConfig(epochs=1, seed=0, batch=4, max_steps_per_epoch=2, run_eagerly=True,
                      experimental=Experimental(nih_not_tb="all", nih_aug_strength=2.0))
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "n", cfg, log=lambda _: None)
    assert np.isfinite(s["history"][0]["loss"])
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())
    assert cfg["nih_not_tb"] == "all" and cfg["nih_aug_strength"] == 2.0


def test_aug_strengths_scale_only_nih_films():
    from tbedge.train.classifier import aug_strengths

    site = np.array(["nih", "shenzhen", "montgomery", "nih"])
    assert aug_strengths(site, 1.0).tolist() == [1.0, 1.0, 1.0, 1.0]  # default: one strength for all
    assert aug_strengths(site, 1.0, 2.0).tolist() == [2.0, 1.0, 1.0, 2.0]
    assert aug_strengths(site, 0.5, 0.0).tolist() == [0.0, 0.5, 0.5, 0.0]


def test_not_tb_flags():
    from tbedge.train.classifier import class_index, not_tb_flags

    site = np.array(["nih", "nih", "shenzhen", "montgomery"])
    y = class_index(np.array(["normal", "other", "normal", "tb"]))
    assert not_tb_flags(site, y, "none").tolist() == [0, 0, 0, 0]
    assert not_tb_flags(site, y, "all").tolist() == [1, 1, 0, 0]
    assert not_tb_flags(site, y, "no_finding").tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError):
        not_tb_flags(site, y, "yes")


def test_source_targets_weigh_only_normals_half_each():
    from tbedge.train.classifier import class_index, source_targets

    site = np.array(["nih", "nih", "nih", "shenzhen", "montgomery", "shenzhen", "nih"])
    y = class_index(np.array(["normal", "normal", "other", "normal", "tb", "tb", "normal"]))
    target, w = source_targets(site, y)
    assert target[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 1]
    assert w[[2, 4, 5]].tolist() == [0, 0, 0]  # pneumonia and TB: source is the class there
    normal = y == 0
    assert w[normal & (site == "nih")].sum() == pytest.approx(w[normal & (site != "nih")].sum())
    assert w[normal].mean() == pytest.approx(1.0)


def test_gradient_reversal_is_identity_forward_and_flips_the_gradient(cm):
    import tensorflow as tf

    x = tf.constant([[0.5, -2.0, 3.0]])
    layer = cm.GradientReversal(0.5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, -1.0]]))
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.5, -1.0, 0.5]], atol=1e-6)


def test_source_adversary_leaves_the_classifier_untouched(cm):
    """The training model adds a ``source`` output; stripping it gives back the same probabilities and
    an exact CAM."""
    m = cm.build_classifier("resnet_s", 64, lung_channel=True)
    adv = cm.with_source_adversary(m, 0.5)
    assert list(adv.output_names) == ["probabilities", "cam", "source"]
    x = np.random.default_rng(0).random((2, 64, 64, 2)).astype(np.float32)
    probs, cam, src = adv(x, training=False)
    assert tuple(src.shape) == (2, 1)
    alone = cm.without_source_adversary(adv)
    assert list(alone.output_names) == ["probabilities", "cam"]
    p2, _ = _cam_check(alone, x)
    np.testing.assert_allclose(p2, np.asarray(probs), atol=1e-6)
    assert cm.without_source_adversary(m) is m


def test_training_with_source_adversary_ships_the_classifier_alone(tiny_crops, tmp_path):
    from tbedge.train.classifier import train_classifier
    from tbedge.train.predict import load_keras

    kw = dict(epochs=1, seed=0, batch=4, max_steps_per_epoch=2, run_eagerly=True, prep="masked",
              nih_adversary=0.5, log=lambda _: None)
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "a", **kw)
    assert np.isfinite(s["history"][0]["loss"])
    assert list(load_keras(tmp_path / "a" / "best.keras").output_names) == ["probabilities", "cam"]
    assert "source" in load_keras(tmp_path / "a" / "last.keras").output_names  # a resume keeps the adversary
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "a", **{**kw, "epochs": 2})
    assert len(s["history"]) == 2
    assert json.loads((tmp_path / "a" / "config.json").read_text())["nih_adversary"] == 0.5


def test_training_keeps_the_averaged_model_beside_the_plain_one(tiny_crops, tmp_path):
    from tbedge.train.classifier import train_classifier
    from tbedge.train.predict import load_keras

    out = tmp_path / "w"
    kw = dict(seed=0, batch=4, max_steps_per_epoch=2, run_eagerly=True, prep="masked", average_from=0.5,
              log=lambda _: None)
    s = train_classifier(tiny_crops, "resnet_s", out, epochs=2, **kw)  # averaging starts at epoch 1
    assert math.isnan(s["history"][0]["avg_auc"]) and np.isfinite(s["history"][1]["avg_auc"])
    s = train_classifier(tiny_crops, "resnet_s", out, epochs=4, **kw)  # resumed (start now 2: epochs 2, 3 added)
    avg = np.load(out / "avg.npz")
    assert int(avg["count"]) == 3 and int(avg["last_epoch"]) == 3  # epochs 1, 2 and 3
    res = json.loads((out / "result.json").read_text())
    assert res["average_from"] == 0.5
    assert res["avg_best_sel_auc"] == max(r["avg_auc"] for r in s["history"][1:])
    plain, averaged = load_keras(out / "best.keras"), load_keras(out / "avg_best.keras")
    assert list(averaged.output_names) == ["probabilities", "cam"]
    assert not all(np.array_equal(a, b) for a, b in zip(plain.get_weights(), averaged.get_weights(), strict=True))


def test_mixup_blends_images_targets_and_weights_with_one_lam_per_sample():
    from tbedge.train.augment import mixup

    rng = np.random.default_rng(0)
    x = rng.random((8, 4, 4, 2)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0, 2, 1, 0]]
    w = np.linspace(0.5, 2.0, 8).astype(np.float32)
    assert mixup(np.random.default_rng(1), x, y, w, 0.0) == (x, y, w)  # off
    mx, my, mw = mixup(np.random.default_rng(1), x, y, w, 0.4)
    # Recover lam and the partner from the targets, then check the images and weights used the same ones.
    r = np.random.default_rng(1)
    lam, partner = r.beta(0.4, 0.4, size=8).astype(np.float32), r.permutation(8)
    np.testing.assert_allclose(my, lam[:, None] * y + (1 - lam[:, None]) * y[partner], rtol=1e-6)
    np.testing.assert_allclose(mx, lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner],
                               rtol=1e-6)
    np.testing.assert_allclose(mw, lam * w + (1 - lam) * w[partner], rtol=1e-6)
    np.testing.assert_allclose(my.sum(1), 1.0, rtol=1e-6)  # still a distribution over the classes
    assert not np.allclose(mx, x)


def test_training_with_mixup_records_it_and_refuses_not_tb(tiny_crops, tmp_path):
    from tbedge.train.classifier import train_classifier

    kw = dict(epochs=1, seed=0, batch=4, max_steps_per_epoch=2, run_eagerly=True, prep="masked", log=lambda _: None)
    s = train_classifier(tiny_crops, "resnet_s", tmp_path / "m", mixup_alpha=0.4, **kw)
    assert np.isfinite(s["history"][0]["loss"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["mixup_alpha"] == 0.4
    with pytest.raises(ValueError, match="mixup"):
        train_classifier(tiny_crops, "resnet_s", tmp_path / "x", mixup_alpha=0.4, nih_not_tb="all", **kw)


def test_train_subset_keeps_each_site_and_class_share():
    from tbedge.train.classifier import train_subset

    site = np.array(["shenzhen"] * 40 + ["montgomery"] * 20 + ["nih"] * 12)
    label = np.array((["normal", "tb"] * 20) + (["normal"] * 14 + ["tb"] * 6) + ["normal"] * 6 + ["other"] * 6)
    idx = np.arange(100, 172)
    sub = train_subset(idx, site, label, 0.25, seed=3)
    assert set(sub) <= set(idx) and len(set(sub)) == len(sub) and np.all(np.diff(sub) > 0)
    pos = sub - 100
    for s, lab, n in [("shenzhen", "tb", 20), ("montgomery", "tb", 6), ("nih", "other", 6)]:
        assert ((site[pos] == s) & (label[pos] == lab)).sum() == max(1, round(0.25 * n))
    assert np.array_equal(sub, train_subset(idx, site, label, 0.25, seed=3))  # reproducible per seed
    assert not np.array_equal(sub, train_subset(idx, site, label, 0.25, seed=4))
    assert np.array_equal(train_subset(idx, site, label, 1.0, seed=0), idx)
    with pytest.raises(ValueError, match="fraction"):
        train_subset(idx, site, label, 0.0, seed=0)


def test_train_config_takes_the_flat_options_and_keeps_the_rejected_ones_apart():
    """Flat keywords (as before the dataclass) fill TrainConfig; the rejected study levers land in
    ``experimental``; unknown names fail; config.json's option part is flat and complete."""
    from tbedge.train.classifier import Experimental, TrainConfig, run_config

    cfg = TrainConfig.from_options(seed=3, prep="masked", nih_weight=0.3, nih_adversary=0.5, average_from=0.25)
    assert cfg.seed == 3 and cfg.prep == "masked" and cfg.nih_weight == 0.3
    assert cfg.experimental == Experimental(nih_adversary=0.5, average_from=0.25)
    assert cfg.with_options(seed=4).experimental == cfg.experimental  # other options leave it alone
    assert TrainConfig(experimental={"mixup_alpha": 0.4}).experimental.mixup_alpha == 0.4
    with pytest.raises(TypeError, match="nih_adversery"):
        TrainConfig.from_options(nih_adversery=0.5)
    with pytest.raises(TypeError, match="mixup"):
        TrainConfig(experimental={"mixup": 0.4})
    with pytest.raises(ValueError, match="mixup"):
        Experimental(mixup_alpha=0.4, nih_not_tb="all")
    flat = run_config(cfg, "resnet_s", 224, "val")
    assert list(flat) == CONFIG_KEYS[:CONFIG_KEYS.index("crops")]
    assert flat["nih_adversary"] == 0.5 and flat["average_from"] == 0.25 and flat["mixup_alpha"] == 0.0
    # config.json records the size used (here given: 224) and the sites left out of selection as a list
    same = set(flat) & set(cfg.flat()) - {"size", "select_without"}
    assert same and all(cfg.flat()[k] == flat[k] for k in same)
    assert run_config(TrainConfig(sets=("shenzhen_montgomery", "nih")), "a", 64, "val")["sets"] == [
        "shenzhen_montgomery", "nih"]


def test_unet_strided_stem_keeps_io_and_quarters_the_cost(cm):
    from tbedge.train.unet import build_unet

    full, light = build_unet(256, base=12), build_unet(256, base=12, stem=2)
    assert light.input_shape == full.input_shape == (None, 256, 256, 1)
    assert light.output_shape == full.output_shape == (None, 256, 256, 1)
    assert light.layers[-1].name == "mask"  # the ONNX output the runtime reads
    g_full, g_light = 2 * cm.count_macs(full) / 1e9, 2 * cm.count_macs(light) / 1e9
    assert 3.3 < g_full < 3.5  # the 3.39 GFLOP the issue measured, transposed convolutions included
    assert g_light <= 1.0 and g_light < 0.3 * g_full
