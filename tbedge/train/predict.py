"""One way to turn a model file (.keras or .onnx) or an in-memory Keras model into a function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def load_keras(path: str | Path):
    """Load a tbedge Keras model for inference (registers the classifier's CAM head first)."""
    import keras

    from . import classifier_models  # noqa: F401  (registers CamHead for loading)

    return keras.models.load_model(path, compile=False)


def model_predictor(model, output: str, what: str = "model") -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(fn, input size): fn maps (B, S, S, C) float32 [0, 1] -> the named ``output`` as numpy."""
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
        if p.suffix == ".onnx":
            from ..runtime.runners.onnxruntime import OnnxRuntimeRunner

            runner = OnnxRuntimeRunner(p, name=what)
            runner.activate()
            size = int(runner.inputs()[0].shape[1])
            return (lambda x: runner.infer({"image": x.astype(np.float32)})[output]), size
        model = load_keras(p)
    from keras import ops

    names = list(model.output_names)

    def run(x):
        y = model(x.astype(np.float32), training=False)
        y = dict(zip(names, y, strict=True)) if isinstance(y, (list, tuple)) else {names[0]: y}
        return ops.convert_to_numpy(y[output])

    return run, int(model.input_shape[1])
