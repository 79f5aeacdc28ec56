"""The measuring side of ``tbedge bench``: one configuration in its own process (docs/bench.md).

``python -m tbedge.tools.bench_child --child`` reads its configuration as JSON on stdin and prints one
result line prefixed with ``bench.RESULT_MARK``. The Keras baseline child (``bench_baseline``) reuses the
meters here.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import schema
from ..runtime.bundle import ROLES
from .bench import RESULT_MARK, BenchError, bundle_precisions, latency_stats


def slice_budgets(iterations: int | None, duration_s: float | None, slices: int,
                  batch: int = 1) -> list[tuple[int | None, float | None]]:
    """Split the measured phase into ``slices`` (images, seconds) budgets.

    The e2e and model-only phases alternate slice by slice, so a change of load from other processes
    during the run hits both alike and their ratio (efficiency) stays meaningful. Image budgets are
    rounded up to whole batches (at least one), so every slice runs full batches.
    """
    n = max(1, int(slices))
    if iterations is not None:
        per = max(batch, math.ceil(math.ceil(iterations / n) / batch) * batch)
        n = max(1, min(n, math.ceil(iterations / per)))
    it = None if iterations is None else per
    return [(it, None if duration_s is None else duration_s / n)] * n


def _go_on(done: int, t_start: float, iterations: int | None, duration_s: float | None) -> bool:
    # trtexec semantics: at least ``iterations`` and at least ``duration_s`` (None: no such bound).
    return ((iterations is not None and done < iterations)
            or (duration_s is not None and time.perf_counter() - t_start < duration_s))


class StreamMeter:
    """End-to-end figures of ``process`` (paths -> items, in input order) over ``images`` cycled.

    ``result_of`` maps an item to its Result. Latency of an image runs from the moment ``process``
    pulls its path to the moment its item comes out, so it includes queueing behind the batch.
    """

    def __init__(self, process: Callable[[Iterable[str]], Iterable], images: Sequence[str | Path],
                 result_of: Callable[[object], schema.Result] = lambda x: x):
        if not images:
            raise BenchError("no images to measure")
        self.process, self.images, self.result_of = process, [str(i) for i in images], result_of
        self.cursor = 0
        self.wall = 0.0
        self.e2e: list[float] = []
        self.service: list[float] = []
        self.stages: dict[str, list[float]] = {st: [] for st in schema.STAGES}
        self.status: Counter = Counter()

    def _next_path(self) -> str:
        p = self.images[self.cursor % len(self.images)]
        self.cursor += 1
        return p

    def warm(self, n: int, on_item: Callable[[object], None] | None = None) -> None:
        for item in self.process(self._next_path() for _ in range(max(0, n))):
            if on_item:
                on_item(item)

    def run(self, iterations: int | None, duration_s: float | None) -> None:
        if iterations is None and duration_s is None:
            raise ValueError("give iterations or duration_s")
        pulled: list[float] = []
        t_start = time.perf_counter()

        def feed():
            while _go_on(len(pulled), t_start, iterations, duration_s):
                pulled.append(time.perf_counter())
                yield self._next_path()

        for k, item in enumerate(self.process(feed())):
            r = self.result_of(item)
            self.e2e.append((time.perf_counter() - pulled[k]) * 1e3)
            self.status[r.status if r.status == schema.STATUS_OK else f"{r.status}:{r.reason}"] += 1
            if r.status != schema.STATUS_OK:
                continue
            for st in schema.STAGES:
                if st in r.timing_ms:
                    self.stages[st].append(r.timing_ms[st])
            self.service.append(sum(r.timing_ms.get(st, 0.0) for st in schema.STAGES))
        self.wall += time.perf_counter() - t_start

    def summary(self) -> dict:
        n = len(self.e2e)
        return {"images": n, "wall_s": self.wall, "throughput_ips": n / self.wall if self.wall > 0 else 0.0,
                "status_counts": dict(self.status),
                "latency_ms": {"e2e": latency_stats(self.e2e), "service": latency_stats(self.service),
                               "stages": {st: latency_stats(v) for st, v in self.stages.items()}}}


def _device_timings(runner) -> dict[str, float] | None:
    """Hook for TensorRT: trtexec-style H2D / GPU compute / D2H of the runner's last inference.

    A runner that measures them (CUDA events around each copy and the enqueue) exposes
    ``last_timings_ms = {"h2d": ms, "compute": ms, "d2h": ms}``; ONNX Runtime runners do not.
    """
    t = getattr(runner, "last_timings_ms", None)
    if not isinstance(t, dict):
        return None
    return {k: float(t[k]) for k in ("h2d", "compute", "d2h") if k in t}


class ModelMeter:
    """The models back to back on pre-made batches: {role: fn(x)} in order, one batch per role.

    ``runners`` ({role: Runner}) are only read for device timings (:func:`_device_timings`).
    Budgets count images, as in :class:`StreamMeter`.
    """

    def __init__(self, models: dict[str, Callable[[np.ndarray], object]], inputs: dict[str, np.ndarray],
                 runners: dict | None = None):
        self.models, self.inputs, self.runners = models, inputs, runners or {}
        self.batch = len(next(iter(inputs.values())))
        self.per: dict[str, list[float]] = {role: [] for role in models}
        self.both: list[float] = []
        self.dev: dict[str, dict[str, list[float]]] = {role: {} for role in models}
        self.images = 0
        self.wall = 0.0

    def warm(self, batches: int = 2) -> None:
        for _ in range(batches):
            for role, fn in self.models.items():
                fn(self.inputs[role])

    def run(self, iterations: int | None, duration_s: float | None) -> None:
        done = 0
        t_start = time.perf_counter()
        while _go_on(done, t_start, iterations, duration_s):
            t0 = time.perf_counter()
            for role, fn in self.models.items():
                t1 = time.perf_counter()
                fn(self.inputs[role])
                self.per[role].append((time.perf_counter() - t1) * 1e3)
                for k, v in (_device_timings(self.runners.get(role)) or {}).items():
                    self.dev[role].setdefault(k, []).append(v)
            self.both.append((time.perf_counter() - t0) * 1e3)
            done += self.batch
        self.images += done
        self.wall += time.perf_counter() - t_start

    def summary(self) -> dict:
        gpu = {role: {k: latency_stats(v) for k, v in d.items()} for role, d in self.dev.items() if d}
        return {"batch": self.batch, "images": self.images, "wall_s": self.wall,
                "throughput_ips": self.images / self.wall if self.wall > 0 else 0.0,
                "latency_ms": {"per_batch": latency_stats(self.both),
                               **{r: latency_stats(v) for r, v in self.per.items()}},
                "device_ms": gpu or None}


def measure_interleaved(stream: StreamMeter, models: ModelMeter, cfg: dict) -> tuple[dict, dict]:
    """Alternate e2e and model-only slices (see :func:`slice_budgets`); return both summaries."""
    for it, dur in slice_budgets(cfg["iterations"], cfg["duration_s"], cfg.get("slices", 4), models.batch):
        stream.run(it, dur)
        models.run(it, dur)
    return stream.summary(), models.summary()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # bytes on macOS, KiB on Linux


def finish_child_result(res: dict, stream: dict, model_only: dict) -> dict:
    res.update(stream)
    res["model_only"] = model_only
    mo = model_only["throughput_ips"]
    res["efficiency"] = stream["throughput_ips"] / mo if mo > 0 else None
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def run_pipeline_child(cfg: dict) -> dict:
    """One configuration of the real pipeline (in this process); returns the child result."""
    from ..runtime import lungs as L
    from ..runtime.pipeline import Pipeline

    res = {"kind": "pipeline", "label": cfg["label"], "batch": cfg["batch"], "threads": cfg["threads"]}
    # Strict: a benchmark measures the engine it names, never the fp32 fallback in its place.
    with Pipeline(cfg["bundle"], backend=cfg["backend"], batch=cfg["batch"], threads=cfg["threads"],
                  strict_engine=True) as pipe:
        b = pipe.bundle
        res.update(backend=pipe.backend, self_test_deviation=pipe.self_test_deviation,
                   bundle={"path": str(b.path), "name": b.manifest.get("name"),
                           "version": b.manifest.get("version"),
                           "precision": bundle_precisions(b.manifest, pipe.backend)})
        sizes = {role: b.input_size(role) for role in ROLES}
        kept: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}

        def keep(s) -> None:
            # Model-only inputs: real films preprocessed and cropped exactly as the pipeline did.
            # Only the small tensors are kept, so warm-up does not inflate peak RSS with images.
            ok = s.result.status == schema.STATUS_OK and s.lungs is not None
            if ok and len(kept["lungs"]) < pipe.batch:
                kept["lungs"].append(L.preprocess(s.image.pixels, sizes["lungs"]))
                x = s.classifier_input  # None on the device path: its input never left the GPU; make it here
                kept["classifier"].append(x if x is not None else
                                          L.classifier_input(s.image.pixels, s.lungs, sizes["classifier"], b.crop_prep))

        stream = StreamMeter(pipe.run, cfg["images"], result_of=lambda s: s.result)
        stream.warm(max(cfg["warmup"], pipe.batch), on_item=keep)  # >= one full batch of model inputs
        if not kept["lungs"]:
            raise BenchError("no warm-up image scored ok; cannot make the model-only inputs")
        made = {role: np.stack([v[i % len(v)] for i in range(pipe.batch)]) for role, v in kept.items()}
        names = {role: b.entry(role)["input"]["name"] for role in ROLES}
        fns = {role: (lambda x, role=role: pipe.runners[role].infer({names[role]: x})) for role in ROLES}
        models = ModelMeter(fns, made, runners=pipe.runners)
        models.warm()
        if pipe.device is not None:
            pipe.device.timings.clear()  # the measured phase only
        e2e, model_only = measure_interleaved(stream, models, cfg)
        res["device_ms"] = pipeline_device_ms(pipe)
    return finish_child_result(res, e2e, model_only)


def pipeline_device_ms(pipe) -> dict | None:
    """The device path's H2D / GPU compute / D2H per pipeline stage, per batch (trtexec's split, from
    CUDA events on the slot streams); None on the host path."""
    if getattr(pipe, "device", None) is None:
        return None
    from ..runtime.device_path import summarise

    got = summarise(pipe.device.timings)
    return {stage: {k: latency_stats(v) for k, v in kinds.items()} for stage, kinds in got.items()} or None


def child_main(argv: list[str] | None = None, run: Callable[[dict], dict] = run_pipeline_child) -> int:
    """``--child``: configuration JSON on stdin -> one ``RESULT_MARK`` line on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--child"]:
        print("usage: python -m tbedge.tools.bench_child --child < config.json", file=sys.stderr)
        return 2
    cfg = json.loads(sys.stdin.read())
    try:
        out = run(cfg)
    except Exception as e:  # noqa: BLE001 - the parent records the failure and goes on
        import traceback

        traceback.print_exc()
        out = {"label": cfg.get("label"), "error": f"{type(e).__name__}: {e}"[:500]}
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(child_main())
