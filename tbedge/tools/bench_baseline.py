"""The naive Keras pipeline ``tbedge bench`` measures itself against.

What a first script would do: per image, decode with OpenCV, resize, ``model.predict`` the lungs,
clean and crop with the same lungs logic as the runtime (:mod:`tbedge.runtime.lungs`), and
``model.predict`` the classifier; one image at a time, TensorFlow as the runtime. It yields
:class:`tbedge.schema.Result` objects with the same stage timings, so the bench measures it with
the same code as the real pipeline. It needs TensorFlow (the [build] extra), hence it lives here.

Child entry: ``python -m tbedge.tools.bench_baseline --child`` (configuration JSON on stdin).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from .. import schema
from ..runtime import lungs as L
from . import bench_child
from .bench import BenchError


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _outputs(model, y) -> dict[str, np.ndarray]:
    if isinstance(y, dict):
        return {k: np.asarray(v) for k, v in y.items()}
    ys = y if isinstance(y, (list, tuple)) else [y]
    return {n: np.asarray(v) for n, v in zip(model.output_names, ys, strict=True)}


class NaiveKerasPipeline:
    """Per-image Keras pipeline (lungs.keras + classifier.keras in ``keras_dir``)."""

    def __init__(self, keras_dir: str | Path, threads: int = 0, class_names=schema.CLASS_NAMES):
        import tensorflow as tf

        if threads:  # must precede the first TensorFlow op
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        from ..build.export import load_keras
        from ..runtime.bundle import model_sidecar

        kd = Path(keras_dir)
        self.lungs = load_keras(kd / "lungs.keras")
        self.classifier = load_keras(kd / "classifier.keras")
        self.lung_size = int(self.lungs.input_shape[1])
        self.cls_size = int(self.classifier.input_shape[1])
        self.crop_prep = model_sidecar(kd / "classifier.keras")["crop_prep"]
        self.class_names = list(class_names)

    def predict_lungs(self, x: np.ndarray) -> np.ndarray:
        return _outputs(self.lungs, self.lungs.predict(x, verbose=0))["mask"]

    def predict_classifier(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return _outputs(self.classifier, self.classifier.predict(x, verbose=0))

    def score(self, path: str | Path) -> schema.Result:
        r = schema.Result(input=str(path), sha256=None, status=schema.STATUS_OK)
        t = time.perf_counter()
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            r.status, r.reason = schema.STATUS_REJECTED, "not_an_image"
            return r
        px = img.astype(np.float32) / 255.0
        r.timing_ms["decode"] = _ms(t)
        t = time.perf_counter()
        x = cv2.resize(px, (self.lung_size, self.lung_size), interpolation=cv2.INTER_AREA)[None, ..., None]
        r.timing_ms["preprocess"] = _ms(t)
        t = time.perf_counter()
        heat = self.predict_lungs(x)[0, ..., 0]
        r.timing_ms["segment"] = _ms(t)
        t = time.perf_counter()
        lr = L.analyse(heat, px.shape)
        crop = L.classifier_input(px, lr, self.cls_size, self.crop_prep)[None]
        r.timing_ms["clean_crop"] = _ms(t)
        t = time.perf_counter()
        out = self.predict_classifier(crop)
        r.timing_ms["classify"] = _ms(t)
        t = time.perf_counter()
        probs = {n: float(v) for n, v in zip(self.class_names, out["probabilities"][0], strict=True)}
        r.class_probabilities = probs
        r.tb_probability = probs["tb"]
        r.tb_score = schema.tb_score(probs["tb"])
        r.timing_ms["postprocess"] = _ms(t)
        return r

    def run(self, paths: Iterable[str | Path]) -> Iterator[schema.Result]:
        for p in paths:
            try:
                yield self.score(p)
            except Exception as e:  # noqa: BLE001 - count it, keep measuring
                yield schema.Result(input=str(p), sha256=None, status=schema.STATUS_ERROR,
                                    reason="error_segment", detail=type(e).__name__)


def run_baseline_child(cfg: dict) -> dict:
    """One round of the baseline (in this process); same result layout as the pipeline child."""
    import tensorflow as tf

    pipe = NaiveKerasPipeline(cfg["keras_dir"], threads=cfg["threads"])
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    res = {"kind": "baseline", "label": cfg["label"], "batch": 1, "threads": cfg["threads"],
           "backend": f"keras {tf.__version__} ({device})",
           "bundle": {"path": cfg["keras_dir"], "precision": {"lungs": "fp32", "classifier": "fp32"}}}
    kept: list[np.ndarray] = []

    def keep(r: schema.Result) -> None:
        if r.status == schema.STATUS_OK and not kept:
            kept.append(cv2.imread(r.input, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0)

    stream = bench_child.StreamMeter(pipe.run, cfg["images"])
    stream.warm(max(1, cfg["warmup"]), on_item=keep)
    if not kept:
        raise BenchError("no warm-up image scored ok in the baseline")
    img = kept[0]
    x_l = cv2.resize(img, (pipe.lung_size, pipe.lung_size), interpolation=cv2.INTER_AREA)[None, ..., None]
    lr = L.analyse(pipe.predict_lungs(x_l)[0, ..., 0], img.shape)
    x_c = L.classifier_input(img, lr, pipe.cls_size, pipe.crop_prep)[None]
    # Its model-only figure: the same per-image predict calls, on pre-made tensors.
    models = bench_child.ModelMeter({"lungs": pipe.predict_lungs, "classifier": pipe.predict_classifier},
                              {"lungs": x_l, "classifier": x_c})
    models.warm()
    e2e, model_only = bench_child.measure_interleaved(stream, models, cfg)
    return bench_child.finish_child_result(res, e2e, model_only)


def main(argv: list[str] | None = None) -> int:
    return bench_child.child_main(argv, run=run_baseline_child)


if __name__ == "__main__":
    sys.exit(main())
