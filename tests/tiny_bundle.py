"""A throwaway model bundle for fast tests: a tiny U-Net and a tiny CAM classifier, exported to ONNX.

The models are untrained (seeded), so scores mean nothing; what matters is that they go through the
same export, manifest and runtime path as the real bundle, and that they are fast on a small CPU.
"""

from __future__ import annotations

from pathlib import Path

CLASSIFIER_SIZE = 64
LUNG_SIZE = 256


def _entry(file: Path, name: str, size: int, outputs: list[str], **extra) -> dict:
    from tbedge.edge.bundle import sha256_file

    return {"file": file.name, "sha256": sha256_file(file), "name": name, "version": "0.0-test",
            "precision": "fp32", "backend": "onnx", "derived_from": None, "gate": None,
            "input": {"name": "image", "shape": [None, size, size, 1], "layout": "NHWC", "dtype": "float32"},
            "outputs": outputs, "preprocessing": {"size": size, "resize": "area", "range": "0-1"}, **extra}


def build_tiny_bundle(out: str | Path, threshold: float = 0.34) -> Path:
    """Build the bundle into ``out`` (needs TensorFlow; ~10 s). Returns ``out``."""
    from tbedge.build.export import export_onnx
    from tbedge.build.tiny import tiny_classifier, tiny_lungs
    from tbedge.edge.bundle import write_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lungs = export_onnx(tiny_lungs(LUNG_SIZE), out / "lungs.onnx")
    cls = export_onnx(tiny_classifier(CLASSIFIER_SIZE), out / "classifier.onnx")
    lungs_e = _entry(lungs, "tiny_lungs", LUNG_SIZE, ["mask"])
    cls_e = _entry(cls, "tiny_classifier", CLASSIFIER_SIZE, ["probabilities", "cam"], tb_bias=0.0)
    write_manifest(out, {
        "name": "tiny-test-bundle", "version": "0.0-test", "created": "2000-01-01T00:00:00Z",
        "class_names": ["normal", "tb", "other"],
        "models": {"lungs": lungs_e, "classifier": cls_e}, "plans": {},
        "threshold": {"value": threshold, "on": "tb_probability", "classifier_sha256": cls_e["sha256"],
                      "chosen_on": "none (test bundle)"},
        "calibration": None, "self_test": None, "tools": {}, "override": None,
    })
    return out
