"""Keras -> ONNX export: named I/O, dynamic batch, parity on real images (tiny models only)."""

from __future__ import annotations

import numpy as np
import pytest


def test_export_parity_tiny_models(tf_keras, tmp_path, data_root):
    import onnx

    from tbedge.build.export import ExportParityError, export_onnx, parity
    from tbedge.build.sources import _parity_inputs, io_spec
    from tbedge.build.tiny import tiny_classifier, tiny_lungs

    for role, model in (("lungs", tiny_lungs()), ("classifier", tiny_classifier())):
        out = export_onnx(model, tmp_path / f"{role}.onnx")
        g = onnx.load(str(out)).graph
        assert g.input[0].name == "image"
        assert sorted(o.name for o in g.output) == sorted(model.output_names)
        spec, _ = io_spec(out)
        assert spec["shape"][0] is None and spec["shape"][1:] == [64, 64, 1]  # dynamic batch
        x, what = _parity_inputs(role, 64, data_root)
        assert "real" in what
        diffs = parity(model, out, x)
        assert max(diffs.values()) < 1e-4
        with pytest.raises(ExportParityError):  # the check can fail: an impossible tolerance
            parity(model, out, x + np.float32(0.5), atol=-1.0)
