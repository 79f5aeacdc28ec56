"""Activation ranges, computed ONCE per model with ONNX Runtime's MinMax calibrator.

Both int8 forms (CPU U8S8 and TensorRT S8S8) are quantized from these same ranges, so the two
engines differ only in how the ranges are encoded, never in what the calibration saw. The
table is ORT's own JSON (``TensorsData.to_dict``) per model, wrapped with the set hash.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..fsio import atomic_write_text

TABLE_FORMAT = "tbedge-calibration-table/1"
METHOD = "MinMax"
# Bounds the calibrator's memory: it keeps every intermediate tensor of this many batches.
MAX_INTERMEDIATE = 4


def quantizable_op_types() -> list[str]:
    """The op types quantize_static calibrates by default (so tensor names line up)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


class _Reader:
    """A CalibrationDataReader over numpy batches (ORT only needs get_next)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self._it = iter([{input_name: np.ascontiguousarray(b, np.float32)} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def __len__(self):  # pragma: no cover - ORT asks only with CalibStridedMinMax
        raise TypeError("length unknown")


def compute_ranges(model: str | Path, batches: Iterable[np.ndarray], input_name: str = "image") -> dict:
    """Run ``batches`` through ``model`` and return the ranges as ORT's TensorsData dict."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="tbedge-calib-") as tmp:
        cal = create_calibrator(Path(model), quantizable_op_types(),
                                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"max_intermediate_outputs": MAX_INTERMEDIATE})
        cal.collect_data(_Reader(input_name, batches))
        td = cal.compute_data()
        del cal
    return json.loads(json.dumps(td.to_dict(), cls=_encoder()))


def _encoder():
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    return CalibrationCacheEncoder


def write_table(path: str | Path, ranges: dict[str, dict], set_sha256: str,
                model_sha256: dict[str, str]) -> Path:
    """Write the calibration table (all models) atomically."""
    path = Path(path)
    table = {"format": TABLE_FORMAT, "method": METHOD, "set_sha256": set_sha256,
             "model_sha256": model_sha256, "ranges": ranges}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_table(path: str | Path) -> dict:
    t = json.loads(Path(path).read_text())
    if t.get("format") != TABLE_FORMAT:
        raise ValueError(f"not a tbedge calibration table: {path}")
    return t


def write_ort_cache(ranges: dict, path: str | Path) -> Path:
    """One model's ranges as the JSON cache quantize_static reads (calibration_cache_path)."""
    atomic_write_text(path, json.dumps({**ranges, "smooth_quant": False}))
    return Path(path)
