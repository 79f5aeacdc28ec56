"""Calibration sets: calib part only (disjoint from val/test), deterministic hash, ranges computed once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tbedge import datasets
from tbedge.calibration import sets as S


def test_selection_is_calib_only_and_disjoint(data_root):
    chosen = S.select(data_root, n_per_stratum=2)
    parts = datasets.split(datasets.discover(data_root))
    calib = {s.path for s in parts["calib"]}
    held = {s.patient for p in ("val", "test") for s in parts[p]}
    assert chosen and all(s.path in calib for s in chosen)
    assert not {s.patient for s in chosen} & held
    assert len({(s.site, s.label) for s in chosen}) >= 5  # stratified: every site and label present
    assert [s.path for s in S.select(data_root, n_per_stratum=2)] == [s.path for s in chosen]


@pytest.fixture(scope="module")
def lung_onnx(tf_keras):
    from tbedge.build.tiny import tiny_fp32_bundle
    from tbedge.runtime.bundle import load_bundle

    return load_bundle(tiny_fp32_bundle()).model_path("lungs")


def test_set_is_deterministic_and_tamper_evident(data_root, lung_onnx, tmp_path):
    a = S.make_calibration_set(data_root, lung_onnx, tmp_path / "a", 64, n_per_stratum=1)
    b = S.make_calibration_set(data_root, lung_onnx, tmp_path / "b", 64, n_per_stratum=1)
    assert a.set_sha256 == b.set_sha256 and len(a.set_sha256) == 64
    items = a.manifest["items"]
    assert all(len(it["sha256"]) == 64 and "path" not in it for it in items)  # content hashes, no names
    t = a.tensors()
    assert t["lungs"].shape == (len(items), 64, 64, 1) and t["classifier"].shape == (len(items), 64, 64, 1)
    assert 0.0 <= t["classifier"].min() and t["classifier"].max() <= 1.0
    # another split seed changes the images, so the hash
    c = S.make_calibration_set(data_root, lung_onnx, tmp_path / "c", 64, n_per_stratum=1, split_seed=3)
    assert c.set_sha256 != a.set_sha256
    # tampering: edited manifest, or edited tensors
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    m["items"][0]["label"] = "tb" if m["items"][0]["label"] != "tb" else "normal"
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(S.CalibrationSetError):
        S.load_calibration_set(tmp_path / "a")
    arrays = dict(b.tensors())
    arrays["lungs"] = arrays["lungs"] + np.float32(0.01)
    np.savez(tmp_path / "b" / "tensors.npz", **arrays)
    with pytest.raises(S.CalibrationSetError):
        S.load_calibration_set(tmp_path / "b").tensors()


def test_ranges_once_two_forms(lung_onnx, tmp_path):
    """One table feeds both int8 forms; the forms differ only in how they encode it."""
    import onnx
    from onnx import numpy_helper

    from tbedge.build import precision as P
    from tbedge.calibration.ranges import compute_ranges, read_table, write_table
    from tbedge.runtime.bundle import phantom

    prep = P.prepare(lung_onnx, tmp_path / "prep.onnx")
    x = np.stack([phantom(64, s) for s in range(4)])[..., None]
    rng = compute_ranges(prep, [x[:2], x[2:]])
    assert rng == compute_ranges(prep, [x[:2], x[2:]])  # deterministic
    write_table(tmp_path / "cal.json", {"lungs": rng}, "f" * 64, {"lungs": "0" * 64})
    rng = read_table(tmp_path / "cal.json")["ranges"]["lungs"]
    zps = {}
    for form in P.FORMS:
        m = onnx.load(str(P.quantize(prep, rng, form, tmp_path / f"{form}.onnx")))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        zps[form] = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert {z.dtype for z in zps["cpu"]} == {np.dtype(np.uint8)}
    assert {z.dtype for z in zps["tensorrt"]} == {np.dtype(np.int8)}
    assert all(np.all(z == 0) for z in zps["tensorrt"])


def _resized_sigmoid_graph(path):
    """image -> Conv 3x3 -> Conv 1x1 (logits) -> Transpose -> Resize x2 -> Sigmoid -> Reshape -> mask: the lung
    model's tail since the stride-2 stem."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32), "w2")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    shape = numpy_helper.from_array(np.array([-1, 16, 16, 1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["f"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["logits"], name="logits"),
             helper.make_node("Transpose", ["logits"], ["t"], name="transpose", perm=[0, 1, 2, 3]),
             helper.make_node("Resize", ["t", "", "scales"], ["up"], name="resize", mode="linear"),
             helper.make_node("Sigmoid", ["up"], ["p"], name="sigmoid"),
             helper.make_node("Reshape", ["p", "shape"], ["mask"], name="reshape")]
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, 16, 16, 1])],
                          [w1, w2, scales, shape])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_keeps_the_probability_tail_in_float(tmp_path):
    """The Sigmoid and the resize/reshape around it stay float: quantized there, the lung mask moved by up to 0.05
    between CPU classes (emulated SSE4 self-test) and in 1/255 steps."""
    import onnx

    from tbedge.build import precision as P
    from tbedge.calibration.ranges import compute_ranges

    src = _resized_sigmoid_graph(tmp_path / "m.onnx")
    assert P.float_output_nodes(onnx.load(str(src))) == ["reshape", "sigmoid", "resize", "transpose"]
    prep = P.prepare(src, tmp_path / "prep.onnx")
    x = np.random.default_rng(1).random((4, 1, 8, 8), np.float32)
    q = onnx.load(str(P.quantize(prep, compute_ranges(prep, [x]), "cpu", tmp_path / "q.onnx")))
    producer = {o: n for n in q.graph.node for o in n.output}
    n, tail = producer["mask"], []
    while n.op_type != "DequantizeLinear":
        tail.append(n.op_type)
        n = producer[n.input[0]]
    assert tail == ["Reshape", "Sigmoid", "Resize", "Transpose"]  # float from the logits' DQ to the output
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # the convolutions are still int8
