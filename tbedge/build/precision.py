"""fp32 ONNX -> fp16 or int8 Q/DQ ONNX.

int8 comes in two forms quantized from ONE set of activation ranges (calibration/ranges.py):

- ``cpu``: QDQ, uint8 activations (asymmetric) + int8 per-channel symmetric weights in 7 bits
  (U8S8, ``reduce_range``). ONNX Runtime's U8S8 kernels on x86 without VNNI (AVX2, AVX-512 BW)
  add pairs of uint8 x int8 products in a saturating int16; with weights in [-64, 64] a pair
  sums to at most 2 x 255 x 64 = 32640 < 32767, so the same model gives the same integers on every
  x86 class and on ARM (measured: identical outputs on VNNI and emulated AVX2; the full-range form
  drifted 0.97 on AVX2). On VNNI it runs as fast as the full-range form; the session option
  ``session.x64quantprecision`` instead runs U8U8 kernels, as slow as fp32 (docs/cpu-classes.md).
- ``tensorrt``: QDQ, int8 activations and weights, symmetric (zero point 0), per-channel
  weights, per-tensor activations, float bias, one dedicated Q/DQ pair per consumer: what
  TensorRT's explicit quantization accepts (see trt_check.py). ONNX Runtime runs it too, which
  is how its accuracy is gated on a host without a GPU.

Two parts stay in float because they cost nothing and quantizing them costs accuracy: the final
Sigmoid/Softmax producing a graph output, with any reshape or resize next to it (a probability in
1/255 steps would tie scores near the locked threshold), and the in-graph input normalisation ahead of
the first Conv/MatMul (its variance and reciprocal tensors span orders of magnitude; on the lung model
quantizing them tripled the mean mask drift).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import onnx

from ..calibration.ranges import write_ort_cache
from ..fsio import atomic_path

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("cpu", "tensorrt")
FORMS = {
    "cpu": {"activation": "uint8", "weight": "int8", "per_channel": True, "symmetric_activations": False,
            "quantize_bias": True, "dedicated_qdq_pair": False, "reduce_range": True,
            "cpu_classes": ["x86-64-sse", "x86-64-avx2", "x86-64-avx512", "x86-64-vnni", "x86-64-amx", "aarch64"]},
    "tensorrt": {"activation": "int8", "weight": "int8", "per_channel": True, "symmetric_activations": True,
                 "quantize_bias": False, "dedicated_qdq_pair": True, "reduce_range": False},
}
FLOAT_OUTPUT_OPS = {"Sigmoid", "Softmax"}
TAIL_OPS = {"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Resize"}
HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def _save(proto: onnx.ModelProto, out: Path) -> Path:
    with atomic_path(out) as tmp:
        onnx.save(proto, tmp)
    return out


def to_fp16(src: str | Path, out: str | Path) -> Path:
    """fp16 weights and compute, fp32 inputs/outputs (so runners and the manifest spec are unchanged)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per tiny weight clamped to fp16's range: noise
        warnings.simplefilter("ignore", UserWarning)
        proto = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.checker.check_model(proto)
    return _save(proto, Path(out))


def prepare(src: str | Path, out: str | Path) -> Path:
    """ORT's quantization pre-processing (shape inference + graph optimisation).

    Calibration and both int8 forms all start from this one graph, so tensor names match the table.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    tmp = out.with_suffix(".tmp.onnx")
    # Symbolic shape inference needs sympy; our graphs have static shapes apart from the batch.
    quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
    os.replace(tmp, out)
    return out


def float_output_nodes(proto: onnx.ModelProto) -> list[str]:
    """The Sigmoid/Softmax that makes a graph output, with the shape and resize ops between it and the output
    and between it and the last quantized op (the lung model resizes its logits before the Sigmoid: quantizing
    them there, or the probability after, moved a mask pixel by up to 0.05 between CPU classes)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = Counter(i for n in proto.graph.node for i in n.input)
    found = []
    for out in proto.graph.output:
        chain, n = [], producer.get(out.name)
        while n is not None and n.op_type in TAIL_OPS | FLOAT_OUTPUT_OPS:
            chain.append(n)
            n = producer.get(n.input[0]) if consumers[n.input[0]] == 1 else None
        if any(m.op_type in FLOAT_OUTPUT_OPS for m in chain):
            found += [m.name for m in chain]
    return found


def float_prefix_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes with no Conv/ConvTranspose/MatMul/Gemm upstream: the input normalisation."""
    after: set[str] = set()
    prefix = []
    for n in proto.graph.node:  # ONNX graphs are topologically sorted
        if n.op_type in HEAVY_OPS or any(i in after for i in n.input):
            after.update(n.output)
        else:
            prefix.append(n.name)
    return prefix


def quantize(prepared: str | Path, ranges: dict, form: str | dict, out: str | Path) -> Path:
    """Quantize the prepared fp32 model with precomputed ``ranges`` (ORT TensorsData dict).

    ``form``: a name in FORMS, or a dict of the same keys (studies and tests of other encodings)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if isinstance(form, str) and form not in FORMS:
        raise ValueError(f"unknown int8 form {form!r}; choose one of {', '.join(FORMS)}")
    f = FORMS[form] if isinstance(form, str) else form
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    extra = {"ActivationSymmetric": f["symmetric_activations"], "WeightSymmetric": True,
             "QuantizeBias": f["quantize_bias"], "DedicatedQDQPair": f["dedicated_qdq_pair"]}
    src = onnx.load(str(prepared))
    float_nodes = float_output_nodes(src) + float_prefix_nodes(src)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="tbedge-q-") as tmp:
        # quantize_static takes precomputed ranges through its calibration cache: no second calibration.
        cache = write_ort_cache(ranges, Path(tmp) / "ranges.json")
        tmp_out = Path(tmp) / "q.onnx"
        quantize_static(str(prepared), str(tmp_out), calibration_data_reader=None,
                        calibration_cache_path=str(cache), quant_format=QuantFormat.QDQ,
                        per_channel=f["per_channel"], reduce_range=f["reduce_range"],
                        activation_type=qt[f["activation"]], weight_type=qt[f["weight"]],
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=float_nodes,
                        extra_options=extra)
        proto = onnx.load(str(tmp_out))
    onnx.checker.check_model(proto)
    return _save(proto, out)
