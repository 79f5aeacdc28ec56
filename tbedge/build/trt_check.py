"""Check a Q/DQ ONNX against TensorRT's explicit-quantization rules before it reaches a device.

TensorRT (10.x/11.x, strongly typed networks) takes int8 Q/DQ only: signed int8, zero point 0,
per-tensor scales on activations, per-channel scales only on constant weights along the output
channel axis, and float bias (no int32 bias DequantizeLinear). A strongly typed network inserts no
casts either, so the float inputs of one binary op must share a type (ONNX lets Pow's exponent
differ, e.g. an fp32 constant against an fp16 base after a partial fp16 conversion). A model that
breaks a rule fails late on the device or silently runs slower; this catches it on the build host.

ALLOWED_OPS: what our exported models contain (U-Net: Conv, ConvTranspose, Relu, MaxPool, Concat,
Sigmoid and the in-graph layer norm's ReduceMean/Sub/Mul/Add/Neg/Sqrt/Reciprocal/Reshape;
classifier: pooling, MatMul/Gemm, Softmax, CAM reshapes) plus TensorRT-supported neighbours a
retrained head might add. Anything else must be added here deliberately, after checking
TensorRT's ONNX operator support matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, shape_inference

from ..errors import TbedgeError

ALLOWED_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum",
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softmax", "HardSigmoid",
    "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Sqrt", "Pow", "Exp", "Log", "Abs", "Max", "Min",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "ReduceMean", "ReduceMax", "ReduceSum", "ReduceProd",  # ReduceProd: shape arithmetic of tf2onnx Tensordot
    "BatchNormalization", "LayerNormalization", "InstanceNormalization",
    "Concat", "Split", "Slice", "Pad", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
    "Shape", "Gather", "Expand", "Cast", "Identity", "Constant", "Resize",
    "QuantizeLinear", "DequantizeLinear",
})
# Binary ops whose float inputs a strongly typed network takes only in one type.
SAME_TYPE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
               TensorProto.DOUBLE: "float64"}
# Axis of the output channel in each op's weight input.
WEIGHT_OUT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}


class TrtCheckError(TbedgeError):
    pass


def check(model: str | Path | onnx.ModelProto) -> list[str]:
    """All rule violations found (empty list: TensorRT-ready)."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:  # Constant nodes are initializers in disguise
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits[n.output[0]] = n.attribute[0].t
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems = _mixed_float_types(m, inits)
    for n in g.node:
        where = f"{n.op_type} {n.name!r}"
        if n.op_type not in ALLOWED_OPS or n.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: op {n.domain + '.' if n.domain else ''}{n.op_type} is not on the "
                            "TensorRT allow-list")
            continue
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{where}: no zero point (defaults to uint8; TensorRT needs int8, zero point 0)")
            continue
        zp_t = inits.get(n.input[2])
        sc_t = inits.get(n.input[1])
        if zp_t is None or sc_t is None:
            problems.append(f"{where}: scale and zero point must be constants")
            continue
        x = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and x is not None and numpy_helper.to_array(x).dtype == np.int32:
            problems.append(f"{where}: int32 bias DequantizeLinear (TensorRT wants float bias)")
            continue
        zp = numpy_helper.to_array(zp_t)
        if zp.dtype != np.int8:
            problems.append(f"{where}: {zp.dtype} Q/DQ; TensorRT takes int8 only")
        if np.any(zp != 0):
            problems.append(f"{where}: non-zero zero point (TensorRT quantization is symmetric)")
        scale = numpy_helper.to_array(sc_t)
        if scale.size > 1:
            if x is None:
                problems.append(f"{where}: per-channel scale on an activation (per-tensor only)")
                continue
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            axis = axis % max(1, len(x.dims))
            for c in _weight_consumers(n, consumers):
                want = WEIGHT_OUT_AXIS.get(c.op_type)
                if c.op_type == "Gemm":
                    want = 0 if any(a.name == "transB" and a.i for a in c.attribute) else 1
                if want is None or axis != want or scale.size != x.dims[axis]:
                    problems.append(f"{where}: per-channel axis {axis} is not the output channel of "
                                    f"{c.op_type} {c.name!r}")
    return problems


def _mixed_float_types(m: onnx.ModelProto, consts: dict) -> list[str]:
    """Binary ops fed two different float types (element types from ONNX shape inference)."""
    g = shape_inference.infer_shapes(m).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({k: t.data_type for k, t in consts.items()})
    problems = []
    for n in g.node:
        if n.op_type in SAME_TYPE_OPS:
            floats = {FLOAT_TYPES[t] for t in (types.get(i) for i in n.input if i) if t in FLOAT_TYPES}
            if len(floats) > 1:
                problems.append(f"{n.op_type} {n.name!r}: inputs of types {' and '.join(sorted(floats))}; a "
                                "strongly typed TensorRT network needs one (cast the constant)")
    return problems


def _weight_consumers(qdq, consumers) -> list:
    """The compute ops that take this weight (through a trailing DQ when ``qdq`` is a Q)."""
    out = []
    for c in consumers.get(qdq.output[0], []):
        if c.op_type == "DequantizeLinear":
            out += consumers.get(c.output[0], [])
        else:
            out.append(c)
    return out


def assert_trt_ready(model: str | Path | onnx.ModelProto) -> None:
    problems = check(model)
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise TrtCheckError("not TensorRT-ready: " + "; ".join(problems[:10]) + more)
