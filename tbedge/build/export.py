"""Keras -> ONNX with tf2onnx: opset 17, named I/O, dynamic batch, parity against Keras.

The export fails (ExportParityError) when ONNX Runtime's outputs on real images differ from
Keras' by more than the tolerance, so a broken conversion never reaches a bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TbedgeError
from ..fsio import atomic_path
from ..train.predict import load_keras  # noqa: F401  (re-exported: scripts call build.export.load_keras)

OPSET = 17
# Max abs difference allowed between Keras and ONNX Runtime outputs on real images. Models normalise
# with train.layers.ImageNorm (row-then-column means): a one-step ReduceMean over 65k pixels in ORT
# gave up to 1e-3 here; now the shipped lung model measures 1.1e-5.
PARITY_ATOL = 1e-4


class ExportParityError(TbedgeError):
    pass


def export_onnx(model, out: str | Path, opset: int = OPSET) -> Path:
    """Convert a Keras model with one input named ``image`` to ONNX at ``out`` (atomic write)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = (None, *model.input_shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    names = list(model.output_names)
    # tf2onnx needs a tf.function whose outputs carry the Keras output names.
    fn = tf.function(lambda x: dict(zip(names, _as_list(model(x, training=False)), strict=True)))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    proto.graph.doc_string = f"tbedge export of {model.name}"
    # With dict outputs tf2onnx names each graph output by its key (in sorted order, so never
    # match them by position).
    got = sorted(o.name for o in proto.graph.output)
    if got != sorted(names):
        raise ExportParityError(f"exported outputs {got} do not carry the Keras names {sorted(names)}")
    onnx.checker.check_model(proto)
    with atomic_path(out) as tmp:
        onnx.save(proto, tmp)
    return out


def _as_list(y):
    if isinstance(y, dict):
        return list(y.values())
    return list(y) if isinstance(y, (list, tuple)) else [y]


def parity(model, onnx_path: str | Path, x: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, float]:
    """Max abs difference per output between Keras and ONNX Runtime on ``x``; raises beyond atol."""
    from ..runtime.runners.onnxruntime import OnnxRuntimeRunner

    ref = dict(zip(model.output_names, _as_list(model.predict(x, verbose=0)), strict=True))
    with OnnxRuntimeRunner(onnx_path) as r:
        got = r.infer({"image": x.astype(np.float32)})
    diffs = {k: float(np.max(np.abs(np.asarray(ref[k]) - got[k]))) for k in ref}
    bad = {k: v for k, v in diffs.items() if v > atol}
    if bad:
        raise ExportParityError(f"ONNX differs from Keras beyond {atol}: {bad}")
    return diffs
