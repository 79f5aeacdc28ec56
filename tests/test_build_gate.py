"""Accuracy gate maths and its verdict on real val images."""

from __future__ import annotations

import numpy as np
import pytest

from tbedge.build import gate as G


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60), 1)  # ties on purpose
    pos, neg = s[y], s[~y]
    want = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert G.auc(y, s) == pytest.approx(want)
    assert np.isnan(G.auc(np.zeros(5, bool), s[:5]))


def test_paired_bootstrap_and_flips():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    s = y * 0.6 + rng.random(200) * 0.7
    d, ci = G.paired_bootstrap_delta_auc(y, s, s, n_boot=200)
    assert d == 0 and ci == [0.0, 0.0]
    worse = s + rng.normal(0, 0.3, 200)
    d, ci = G.paired_bootstrap_delta_auc(y, s, worse, n_boot=300)
    assert d > 0 and ci[0] <= d <= ci[1]
    ref = np.array([0.2, 0.6, 0.49, 0.51, 0.9])
    new = np.array([0.6, 0.6, 0.51, 0.49, 0.9])
    assert G.threshold_flips([0, 1, 1, 1, 0], ref, new, 0.5) == 2  # only TB-positive films count


@pytest.fixture(scope="module")
def fp32_models(tf_keras):
    from tbedge.build.tiny import tiny_fp32_bundle
    from tbedge.runtime.bundle import load_bundle

    b = load_bundle(tiny_fp32_bundle())
    return {r: b.model_path(r) for r in ("lungs", "classifier")}, b.crop_prep


def test_gate_passes_identical_and_fails_broken(data_root, fp32_models, tmp_path):
    import onnx
    from onnx import numpy_helper

    fp32_models, prep = fp32_models  # the classifier takes lung-masked crops: the gate must make them too

    same = G.evaluate(fp32_models, fp32_models, data_root, 0.4, classifier_size=64, max_images=24, n_boot=50,
                      prep=prep)
    assert same.passed and same.delta_auc == 0 and same.dice_drop == 0 and same.n_masks > 0 and same.n_tb > 0
    h = same.val_histogram  # the reduced build's val scores, for a site's histogram to be held against
    assert sum(h["tb"]) == same.n_tb and sum(h["tb"]) + sum(h["not_tb"]) == same.n_images
    # a lung model that sees no lung at all must fail the Dice gate
    m = onnx.load(str(fp32_models["lungs"]))
    nodes = list(m.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.op_type == "Sigmoid")
    m.graph.initializer.append(numpy_helper.from_array(np.array(-20.0, np.float32), "minus20"))
    shift = onnx.helper.make_node("Add", [nodes[i].input[0], "minus20"], ["shifted"], name="shift")
    nodes[i].input[0] = "shifted"
    del m.graph.node[:]
    m.graph.node.extend(nodes[:i] + [shift] + nodes[i:])
    onnx.save(m, tmp_path / "broken.onnx")
    res = G.evaluate(fp32_models, {**fp32_models, "lungs": tmp_path / "broken.onnx"}, data_root, 0.4,
                     classifier_size=64, max_images=24, n_boot=50, prep=prep)
    assert not res.passed and any("Dice" in f for f in res.failures)
    with pytest.raises(G.GateFailure, match="Dice"):
        raise G.GateFailure(res)

    # Broken only when it scores one film at a time (watch, listen): the batches of 8 alone would pass.
    m = onnx.load(str(fp32_models["lungs"]))
    nodes = list(m.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.op_type == "Sigmoid")
    h = onnx.helper
    m.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "zero"),
                                numpy_helper.from_array(np.array([1], np.int64), "one"),
                                numpy_helper.from_array(np.array(-20.0, np.float32), "minus20")])
    alone = [h.make_node("Shape", [m.graph.input[0].name], ["shp"]),
             h.make_node("Gather", ["shp", "zero"], ["n"]), h.make_node("Equal", ["n", "one"], ["is1"]),
             h.make_node("Cast", ["is1"], ["is1f"], to=onnx.TensorProto.FLOAT),
             h.make_node("Mul", ["is1f", "minus20"], ["shift1"]),
             h.make_node("Add", [nodes[i].input[0], "shift1"], ["shifted1"])]
    nodes[i].input[0] = "shifted1"
    del m.graph.node[:]
    m.graph.node.extend(nodes[:i] + alone + nodes[i:])
    onnx.save(m, tmp_path / "alone.onnx")
    res = G.evaluate(fp32_models, {**fp32_models, "lungs": tmp_path / "alone.onnx"}, data_root, 0.4,
                     classifier_size=64, max_images=24, n_boot=50, prep=prep)
    assert res.dice_drop == 0 and res.batch_1["dice_reduced"] == 0  # batches of 8 as fp32; one at a time, no lungs
    assert not res.passed and res.failures == [f for f in res.failures if "one film at a time" in f]
