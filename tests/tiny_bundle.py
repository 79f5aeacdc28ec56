"""A throwaway model bundle for fast tests: a tiny U-Net (256²) and a tiny single-channel CAM classifier
(64², box crops), built by the real bundle writer (export, parity, manifest, self-test).

The models are untrained (seeded), so scores mean nothing; what matters is that they go through the
same export, manifest and runtime path as the real bundle, and that they are fast on a small CPU.
"""

from __future__ import annotations

from pathlib import Path

CLASSIFIER_SIZE = 64
LUNG_SIZE = 256


def save_tiny_keras(out: str | Path) -> Path:
    """The two tiny models as ``lungs.keras`` and ``classifier.keras`` in ``out`` (needs TensorFlow)."""
    from tbedge.build.tiny import tiny_classifier, tiny_lungs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny_lungs(LUNG_SIZE).save(out / "lungs.keras")
    tiny_classifier(CLASSIFIER_SIZE).save(out / "classifier.keras")
    return out


def tiny_keras_dir(bundle: str | Path) -> Path:
    """Where :func:`build_tiny_bundle` keeps the bundle's two Keras models (beside it)."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}-keras"


def build_tiny_bundle(out: str | Path, threshold: float = 0.34) -> Path:
    """Build the bundle into ``out`` (needs TensorFlow; ~10 s); its Keras models stay in ``tiny_keras_dir(out)``.
    Parity runs on synthetic phantoms, so no data folder is needed. Returns ``out``."""
    from tbedge.build.bundle_writer import build_bundle

    out = Path(out)
    kd = save_tiny_keras(tiny_keras_dir(out))
    build_bundle(kd / "lungs.keras", kd / "classifier.keras", out, "fp32", "cpu",
                 threshold={"value": threshold, "chosen_on": "none (test bundle)"},
                 name="tiny-test-bundle", version="0.0-test")
    return out
