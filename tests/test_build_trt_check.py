"""TensorRT explicit-quantization checker: rejects each broken rule, accepts our TensorRT form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tbedge.build.trt_check import TrtCheckError, assert_trt_ready, check


def _model(zp_dtype=np.int8, zp=0, act_scale=(0.1,), bias_int32=False, extra_op=None):
    """image -> Q -> DQ -> Conv(DQ(int8 weights, per-channel axis 0)) -> output."""
    inits = [numpy_helper.from_array(np.array(act_scale, np.float32).reshape(-1) if len(act_scale) > 1
                                     else np.array(act_scale[0], np.float32), "s"),
             numpy_helper.from_array(np.array(zp, zp_dtype) if len(act_scale) == 1
                                     else np.full(len(act_scale), zp, zp_dtype), "z"),
             numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "w_q"),
             numpy_helper.from_array(np.full(2, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(2, np.int8), "w_z")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["xq"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq", axis=1),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="wdq", axis=0)]
    conv_in = ["xd", "w"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.zeros(2, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(2, 0.001, np.float32), "b_s"),
                  numpy_helper.from_array(np.zeros(2, np.int32), "b_z")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="bdq", axis=0))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv", pads=[1, 1, 1, 1]))
    out = "y"
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["y"], ["y2"], name="odd"))
        out = "y2"
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])
    g = helper.make_graph(nodes, "t", [image],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_accepts_valid_crafted_model():
    assert check(_model()) == []


@pytest.mark.parametrize("kw, words", [
    ({"zp": 3}, "non-zero zero point"),
    ({"zp_dtype": np.uint8}, "uint8"),
    ({"bias_int32": True}, "int32 bias"),
    ({"act_scale": (0.1, 0.2)}, "per-channel scale on an activation"),
    ({"extra_op": "Det"}, "allow-list"),
])
def test_rejects(kw, words):
    problems = check(_model(**kw))
    assert any(words in p for p in problems), problems
    with pytest.raises(TrtCheckError):
        assert_trt_ready(_model(**kw))


def test_rejects_wrong_weight_axis():
    m = _model()
    for n in m.graph.node:
        if n.name == "wdq":
            n.attribute[0].i = 1
    assert any("output channel" in p for p in check(m))


def test_tensorrt_form_of_exported_model_passes_cpu_form_does_not(int8_forms):
    onnx.checker.check_model(onnx.load(str(int8_forms["tensorrt"])))
    assert check(int8_forms["tensorrt"]) == []
    assert any("uint8" in p for p in check(int8_forms["cpu"]))  # the U8S8 CPU form is not for TensorRT


@pytest.fixture(scope="module")
def int8_forms(tf_keras, tmp_path_factory):
    """Both int8 forms of the tiny exported U-Net, quantized from one set of ranges."""
    from tbedge.build import precision as P
    from tbedge.build.tiny import tiny_fp32_bundle
    from tbedge.calibration.ranges import compute_ranges
    from tbedge.runtime.bundle import load_bundle, phantom

    d = tmp_path_factory.mktemp("forms")
    b = load_bundle(tiny_fp32_bundle())
    prep = P.prepare(b.model_path("lungs"), d / "prep.onnx")
    x = np.stack([phantom(64, s) for s in range(4)])[..., None]
    rng = compute_ranges(prep, [x[:2], x[2:]])
    return {f: P.quantize(prep, rng, f, d / f"{f}.onnx") for f in P.FORMS}


def _pow_model(exponent_type):
    """fp16 base ** constant exponent of ``exponent_type`` (ONNX allows the two to differ)."""
    dtype = {TensorProto.FLOAT16: np.float16, TensorProto.FLOAT: np.float32}[exponent_type]
    g = helper.make_graph(
        [helper.make_node("Pow", ["x", "e"], ["y"], name="pow")], "p",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [numpy_helper.from_array(np.array(2.0, dtype), "e")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)  # valid ONNX either way
    return m


def test_rejects_mixed_float_types_that_a_strongly_typed_network_cannot_take():
    assert any("float16 and float32" in p for p in check(_pow_model(TensorProto.FLOAT)))
    assert check(_pow_model(TensorProto.FLOAT16)) == []


def test_shipped_classifier_fp16_form_has_one_type_per_op(tmp_path):
    """The lung-core head squares lung fractions with Pow: its fp16 conversion must keep Pow in one
    type, or the TensorRT fp16 build fails on the device (not run on a GPU here)."""
    from tbedge.build.precision import to_fp16
    from tbedge.runtime.bundle import default_bundle_path, load_bundle

    src = load_bundle(default_bundle_path().parent / "fp32").model_path("classifier")
    m = onnx.load(str(to_fp16(src, tmp_path / "c16.onnx")))
    assert any(n.op_type == "Pow" for n in m.graph.node)
    assert check(m) == []
