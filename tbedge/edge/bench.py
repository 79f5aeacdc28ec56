"""``tbedge bench``: throughput and latency of the whole pipeline, in trtexec's vocabulary.

Each configuration (a bundle x backend, or the naive Keras baseline) runs in its own child process,
because peak RSS is per process and only grows, and a model loaded in one configuration must not
warm caches or fragment memory for the next. Configurations are interleaved in rounds (A, B,
baseline, A, B, baseline, ...) so that load from other processes on a shared machine hits them all
alike; the report gives the median over rounds with the spread (min, quartiles, max).

Per configuration, per round:

- **throughput** (images/s): images scored end to end (read, decode, preprocess, lungs model, mask
  cleaning and crop, classifier, result) divided by the wall time of the measured phase.
- **latency**: end to end (from the moment the pipeline pulls a path to the moment its result comes
  out, queueing included), the service time (sum of the stage times of one image) and each stage
  from ``Result.timing_ms``; min / mean / median / p90 / p95 / p99 / max.
- **model-only throughput**: the two models back to back on pre-made input tensors (real images,
  already preprocessed and cropped) at the same batch size and threads: no decode, crop or I/O.
  This is the ceiling the pipeline can reach; **efficiency** = throughput / model-only throughput.
- **peak RSS** of the child (``getrusage(RUSAGE_SELF).ru_maxrss``).
- For TensorRT runners that expose per-inference ``last_timings_ms`` ({"h2d", "compute", "d2h"}),
  trtexec's H2D / GPU compute / D2H latencies (see :func:`_device_timings`).

The child is ``python -m tbedge.edge.bench --child`` reading its configuration as JSON on stdin
and printing one result line prefixed with :data:`RESULT_MARK`. The baseline child is
``python -m tbedge.build.baseline --child`` (it needs TensorFlow, so it lives under build/; this
module only names it, it never imports it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, schema
from ..fsio import atomic_write_text
from .bundle import ROLES, default_bundle_path

BENCH_FORMAT = 1
RESULT_MARK = "TBEDGE_BENCH_RESULT "
STATS = ("min", "mean", "median", "p90", "p95", "p99", "max")
BASELINE_MODULE = "tbedge.build.baseline"
DEFAULT_KERAS_DIR = Path(__file__).resolve().parents[1] / "models" / "keras"
DEFAULT_DURATION_S = 10.0
# Project targets (issue 7). Reported, never enforced: they hold for the default bundle on the
# reference 2-core CPU box, not for every configuration on every host.
TARGETS = {
    "speedup_vs_baseline": (">=", 5.0),
    "efficiency": (">=", 0.85),
    "throughput_ips": (">=", 20.0),
    "peak_rss_mb": ("<=", 400.0),
}
# Figures whose spread across rounds the report carries (path into a child result).
HEADLINE = {
    "throughput_ips": ("throughput_ips",),
    "model_only_ips": ("model_only", "throughput_ips"),
    "efficiency": ("efficiency",),
    "peak_rss_mb": ("peak_rss_mb",),
    "e2e_median_ms": ("latency_ms", "e2e", "median"),
    "e2e_p99_ms": ("latency_ms", "e2e", "p99"),
}


class BenchError(Exception):
    """A benchmark that cannot run as asked (no such bundle or precision, no images)."""


# -- statistics ----------------------------------------------------------------------------
def latency_stats(values_ms: Sequence[float]) -> dict[str, float] | None:
    """min / mean / median / p90 / p95 / p99 / max of a list of milliseconds (None when empty)."""
    if len(values_ms) == 0:
        return None
    a = np.asarray(values_ms, dtype=np.float64)
    q = np.percentile(a, [0, 50, 90, 95, 99, 100])  # linear interpolation: monotone in q
    return {"min": float(q[0]), "mean": float(a.mean()), "median": float(q[1]), "p90": float(q[2]),
            "p95": float(q[3]), "p99": float(q[4]), "max": float(q[5])}


def _spread(values: Sequence[float]) -> dict[str, float]:
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 25, 50, 75, 100])
    return {"min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]),
            "max": float(q[4]), "n": len(values)}


def median_tree(items: list):
    """Element-wise median of equally shaped JSON trees (numbers -> median; else the first value).

    The median is monotone, so ordered percentiles in every round stay ordered in the summary.
    """
    first = items[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        vals = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(np.median(vals)) if vals else None
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(i, dict) and k in i for i in items)]
        return {k: median_tree([i[k] for i in items]) for k in keys}
    return first


def _get(d: dict, path: tuple):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# -- host facts ----------------------------------------------------------------------------
def _run_text(cmd: list[str], timeout: float = 5.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_facts() -> dict:
    from .cpu import probe

    cpu = probe()  # model name, and the int8 kernel class: a figure means little without it (docs/cpu-classes.md)
    info = _read("/proc/cpuinfo") or ""
    cores = {(m.group(1), m.group(2)) for m in
             re.finditer(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", info, re.DOTALL)}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = os.cpu_count()
    mem = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo") or "")
    return {"model": cpu.model or platform.processor() or platform.machine(),
            "arch": platform.machine(), "class": cpu.cpu_class, "features": cpu.shown_features(),
            "logical_cores": os.cpu_count(), "usable_cores": usable,
            "physical_cores": len(cores) or None,
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "memory_mb": round(int(mem.group(1)) / 1024) if mem else None}


def _gpu_facts() -> dict | None:
    gpus = []
    q = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,"
                   "compute_cap", "--format=csv,noheader,nounits"])
    for line in (q or "").splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 6:
            gpus.append({"name": f[0], "driver": f[1], "memory_mb": f[2], "power_limit_w": f[3],
                         "max_sm_clock_mhz": f[4], "compute_capability": f[5]})
    # Jetson: the power mode (nvpmodel) sets clocks and active cores; numbers mean nothing without it.
    jetson = None
    tegra = _read("/etc/nv_tegra_release")
    if tegra or shutil.which("nvpmodel"):
        jetson = {"l4t": tegra.splitlines()[0] if tegra else None,
                  "model": _read("/proc/device-tree/model"),
                  "power_mode": _run_text(["nvpmodel", "-q"])}
    if not gpus and not jetson:
        return None
    return {"gpus": gpus, "jetson": jetson}


def _tensorrt_version() -> str | None:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs"):
        v = dist_version(dist)
        if v:
            return v
    try:  # JetPack installs TensorRT as a system package without pip metadata
        import tensorrt  # noqa: PLC0415 - lazy by design: the runtime never needs it

        return tensorrt.__version__
    except Exception:  # noqa: BLE001 - absent or broken: both mean "not available"
        return None


def host_facts() -> dict:
    """What a reader needs to compare two benchmark reports: CPU, GPU, power mode, versions, load."""
    import cv2

    ort_version = dist_version("onnxruntime") or dist_version("onnxruntime-gpu")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ort_version = ort_version or ort.__version__
    except ImportError:
        providers = []
    return {
        "os": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_facts(), "gpu": _gpu_facts(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {"tbedge": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
                     "onnxruntime": ort_version, "onnxruntime_providers": providers,
                     "tensorrt": _tensorrt_version(), "tensorflow": dist_version("tensorflow-cpu")
                     or dist_version("tensorflow")},
    }


# -- choosing configurations ---------------------------------------------------------------
def _manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def bundle_precisions(manifest: dict, backend: str = "onnxruntime") -> dict[str, str]:
    """{role: precision} of a bundle's models (TensorRT plans' precision for the tensorrt backend)."""
    plans = manifest.get("plans") or {}
    out = {}
    for role in ROLES:
        p = manifest["models"][role]["precision"]
        if backend == "tensorrt" and plans.get(role, {}).get("precision"):
            p = plans[role]["precision"]
        out[role] = p
    return out


def precision_label(precisions: dict[str, str]) -> str:
    vals = [precisions[r] for r in ROLES]
    return vals[0] if len(set(vals)) == 1 else "/".join(vals)  # lungs/classifier


def resolve_engines(engines: Sequence[str | Path | None] | None, precision: str | None = None,
                    backend: str = "onnxruntime") -> list[Path]:
    """Bundle directories to benchmark.

    ``engines`` are bundle directories (None = the shipped default). ``precision`` (comma-separated,
    e.g. "int8" or "fp32,int8", or "all") picks, for each engine, the bundle with that precision
    among the engine and its sibling directories (so ``--precision int8`` finds the shipped int8
    bundle next to the default one); without it the engines are used as given.
    """
    roots = [Path(e) if e else default_bundle_path() for e in (engines or [None])]
    for r in roots:
        if _manifest(r) is None:
            raise BenchError(f"not a tbedge bundle (no readable manifest.json): {r}")
    if not precision:
        return roots
    wanted = [p.strip().lower() for p in precision.split(",") if p.strip()]
    out: list[Path] = []
    for root in roots:
        siblings = sorted(d for d in root.resolve().parent.iterdir()
                          if d.is_dir() and d.resolve() != root.resolve() and _manifest(d))
        candidates = [root, *siblings]
        for want in wanted:
            hits = []
            for c in candidates:
                prec = bundle_precisions(_manifest(c), backend)
                if want == "all" or want in prec.values() or want == precision_label(prec):
                    uniform = want == "all" or set(prec.values()) == {want}
                    hits.append((not uniform, c))
            if not hits:
                raise BenchError(f"no bundle with precision {want!r} in {root} or next to it "
                                 f"(in {root.resolve().parent})")
            chosen = [c for _, c in hits] if want == "all" else [min(hits, key=lambda h: h[0])[1]]
            out += [c for c in chosen if all(c.resolve() != o.resolve() for o in out)]
    return out


def collect_images(images: Sequence[str | Path] | None, tmp: Path | None = None,
                   n_phantoms: int = 16) -> list[Path]:
    """Image files to cycle through. Without ``images``: synthetic phantoms written into ``tmp``
    (the benchmark runs anywhere; real films give realistic lung masks and crops)."""
    if images:
        from .screen import expand_inputs

        files, _ = expand_inputs(list(images))
        if not files:
            raise BenchError("no image files found in " + ", ".join(map(str, images)))
        return files
    import cv2

    from .bundle import phantom

    if tmp is None:
        raise BenchError("no images given and no folder for synthetic ones")
    out = []
    for s in range(n_phantoms):
        p = tmp / f"phantom_{s:02d}.png"
        cv2.imwrite(str(p), (phantom(512, s % 4) * 255).astype(np.uint8))
        out.append(p)
    return out


# -- measurement (runs in the child) -------------------------------------------------------
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
    from . import lungs as L
    from .pipeline import Pipeline

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
                kept["classifier"].append(s.classifier_input)

        stream = StreamMeter(pipe.run, cfg["images"], result_of=lambda s: s.result)
        stream.warm(max(cfg["warmup"], pipe.batch), on_item=keep)  # >= one full batch of model inputs
        if not kept["lungs"]:
            raise BenchError("no warm-up image scored ok; cannot make the model-only inputs")
        made = {role: np.stack([v[i % len(v)] for i in range(pipe.batch)]) for role, v in kept.items()}
        names = {role: b.entry(role)["input"]["name"] for role in ROLES}
        fns = {role: (lambda x, role=role: pipe.runners[role].infer({names[role]: x})) for role in ROLES}
        models = ModelMeter(fns, made, runners=pipe.runners)
        models.warm()
        e2e, model_only = measure_interleaved(stream, models, cfg)
    return finish_child_result(res, e2e, model_only)


def child_main(argv: list[str] | None = None, run: Callable[[dict], dict] = run_pipeline_child) -> int:
    """``--child``: configuration JSON on stdin -> one ``RESULT_MARK`` line on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--child"]:
        print("usage: python -m tbedge.edge.bench --child < config.json", file=sys.stderr)
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


# -- orchestration (parent) ----------------------------------------------------------------
def _spawn(module: str, cfg: dict, timeout_s: float) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the child imports this same tbedge
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        p = subprocess.run([sys.executable, "-m", module, "--child"], input=json.dumps(cfg),
                           capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"label": cfg["label"], "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (p.stderr or "").strip().splitlines()[-5:]
    return {"label": cfg["label"],
            "error": f"child exited {p.returncode} without a result: " + " | ".join(tail)}


def summarise(label: str, kind: str, rounds: list[dict]) -> dict:
    """Median over the rounds that succeeded, the spread of the headline figures, and the raw rounds."""
    ok = [r for r in rounds if "error" not in r]
    out: dict = {"label": label, "kind": kind, "rounds_ok": len(ok), "rounds": rounds}
    if not ok:
        out["error"] = rounds[-1].get("error", "no round succeeded") if rounds else "not run"
        return out
    med = median_tree(ok)
    med.pop("label", None)
    med.pop("kind", None)
    out.update(med)
    spread = {}
    for key, path in HEADLINE.items():
        vals = [v for r in ok if (v := _get(r, path)) is not None]
        if vals:
            spread[key] = _spread(vals)
    out["spread"] = spread
    out["model_only_ips"] = _get(med, ("model_only", "throughput_ips"))
    return out


def check_targets(entry: dict) -> dict:
    out = {}
    for name, (op, target) in TARGETS.items():
        v = entry.get(name)
        if v is None:
            continue
        out[name] = {"target": f"{op} {target:g}", "measured": v,
                     "met": bool(v >= target if op == ">=" else v <= target)}
    return out


def bench(images: Sequence[str | Path] | None = None, engines: Sequence[str | Path | None] | None = None,
          backend: str = "auto", precision: str | None = None, batch: int = 8, threads: int = 0,
          duration_s: float | None = None, iterations: int | None = None, warmup: int = 16,
          rounds: int = 3, json_path: str | Path | None = None,
          progress: Callable[[str], None] | None = None, baseline: bool = True,
          keras_dir: str | Path | None = None, slices: int = 4, timeout_s: float = 900.0) -> dict:
    """Benchmark bundles (and the naive Keras baseline) on ``images``; returns the report dict.

    ``engines``: bundle dirs (None entries = the shipped default); ``precision`` selects sibling
    bundles (see :func:`resolve_engines`). ``duration_s`` / ``iterations``: minimum length of each
    measured phase (default 10 s); ``warmup``: images scored before measuring. ``rounds``: each
    configuration runs once per round in its own process, interleaved; inside a run, the e2e and
    model-only phases alternate in ``slices`` slices. ``progress(label)`` is
    called after every child run (``rounds * (len(resolve_engines(...)) + baseline)`` calls).
    ``keras_dir`` holds lungs.keras and classifier.keras for the baseline (default: shipped).
    """
    if duration_s is None and iterations is None:
        duration_s = DEFAULT_DURATION_S
    if rounds < 1:
        raise BenchError("rounds must be at least 1")
    bundles = resolve_engines(engines, precision, "tensorrt" if backend == "tensorrt" else "onnxruntime")
    host = host_facts()
    with tempfile.TemporaryDirectory(prefix="tbedge-bench-") as tmp:
        files = [str(p) for p in collect_images(images, Path(tmp))]
        common = {"batch": int(batch), "threads": int(threads), "images": files, "warmup": int(warmup),
                  "iterations": iterations, "duration_s": duration_s, "backend": backend, "slices": int(slices)}
        configs, seen = [], Counter()
        for bp in bundles:
            prec = bundle_precisions(_manifest(bp), "tensorrt" if backend == "tensorrt" else "onnxruntime")
            label = f"{bp.name} {precision_label(prec)}"
            seen[label] += 1
            if seen[label] > 1:
                label += f" #{seen[label]}"
            configs.append({**common, "kind": "pipeline", "label": label, "bundle": str(bp)})
        base_cfg, base_skip = None, None
        if baseline:
            base_skip = baseline_unavailable(keras_dir)
            if base_skip is None:
                kd = Path(keras_dir) if keras_dir else DEFAULT_KERAS_DIR
                base_cfg = {**common, "kind": "baseline", "label": "keras baseline", "batch": 1,
                            "keras_dir": str(kd)}
        results: dict[str, list[dict]] = {c["label"]: [] for c in configs}
        base_rounds: list[dict] = []
        for _ in range(rounds):
            for c in configs:
                results[c["label"]].append(_spawn("tbedge.edge.bench", c, timeout_s))
                if progress:
                    progress(c["label"])
            if base_cfg:
                base_rounds.append(_spawn(BASELINE_MODULE, base_cfg, timeout_s))
                if progress:
                    progress(base_cfg["label"])
    report = {
        "bench_format": BENCH_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host,
        # Image names are not recorded: public-set names are patient-level IDs.
        "settings": {"images": len(files), "image_source": _describe_source(images),
                     "backend": backend, "precision": precision, "batch": batch, "threads": threads,
                     "duration_s": duration_s, "iterations": iterations, "warmup": warmup, "rounds": rounds,
                     "slices": slices},
        "configs": [summarise(c["label"], "pipeline", results[c["label"]]) for c in configs],
    }
    if base_cfg:
        report["baseline"] = summarise(base_cfg["label"], "baseline", base_rounds)
    else:
        report["baseline"] = {"skipped": base_skip or "disabled (--no-baseline)"}
    report["host"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for c, cfg in zip(report["configs"], configs, strict=True):
        if cfg.get("backend") in ("tensorrt", "auto") and (t := trtexec_compare(cfg["bundle"], batch)):
            c["trtexec"] = t
    base_ips = report["baseline"].get("throughput_ips")
    for c in report["configs"]:
        if c.get("throughput_ips") is not None and base_ips:
            c["speedup_vs_baseline"] = c["throughput_ips"] / base_ips
        c["targets"] = check_targets(c) if "error" not in c else {}
    if json_path:
        write_json_atomic(json_path, report)
    return report


def _describe_source(images: Sequence[str | Path] | None) -> dict | str:
    """Folders by name, single files only counted (file names are patient IDs in many sets)."""
    if not images:
        return "phantoms"
    folders = [str(i) for i in images if Path(i).is_dir()]
    return {"folders": folders, "other_arguments": len(images) - len(folders)}


def baseline_unavailable(keras_dir: str | Path | None) -> str | None:
    """Why the Keras baseline cannot run here, or None when it can."""
    from importlib.util import find_spec

    if find_spec("tensorflow") is None or find_spec("keras") is None:
        return "TensorFlow/Keras not installed (pip install 'tbedge[build]')"
    kd = Path(keras_dir) if keras_dir else DEFAULT_KERAS_DIR
    missing = [n for n in ("lungs.keras", "classifier.keras") if not (kd / n).is_file()]
    if missing:
        return f"Keras models not found in {kd}: {', '.join(missing)}"
    return None


def write_json_atomic(path: str | Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default))


# -- trtexec on the same plans ------------------------------------------------------------------
_TRTEXEC_THROUGHPUT = re.compile(r"Throughput:\s*([\d.]+)\s*qps")
_TRTEXEC_STAT = re.compile(r"(H2D Latency|GPU Compute Time|D2H Latency|Latency):\s*min = ([\d.]+) ms, "
                           r"max = ([\d.]+) ms, mean = ([\d.]+) ms, median = ([\d.]+) ms")


def parse_trtexec(text: str) -> dict:
    """trtexec's performance summary -> {throughput_qps, h2d/compute/d2h/latency: {min,max,mean,median}}."""
    out: dict = {}
    if m := _TRTEXEC_THROUGHPUT.search(text):
        out["throughput_qps"] = float(m.group(1))
    names = {"H2D Latency": "h2d_ms", "GPU Compute Time": "compute_ms", "D2H Latency": "d2h_ms",
             "Latency": "latency_ms"}
    for m in _TRTEXEC_STAT.finditer(text):
        out[names[m.group(1)]] = dict(zip(("min", "max", "mean", "median"), map(float, m.groups()[1:]),
                                          strict=True))
    return out


def trtexec_compare(bundle_dir: str | Path, batch: int, timeout_s: float = 300) -> dict | None:
    """Run ``trtexec --loadEngine`` on the bundle's plans (when trtexec is on the PATH) at the same
    batch, so tbedge's model-only figures can be read against NVIDIA's own tool."""
    exe = shutil.which("trtexec")
    if not exe:
        return None
    from .bundle import load_bundle

    b = load_bundle(bundle_dir)
    if not b.has_plans():
        return None
    res = {}
    for role in ("lungs", "classifier"):
        size, name = b.input_size(role), b.entry(role)["input"]["name"]
        shape = f"{batch}x{size}x{size}x{b.input_channels(role)}"
        cmd = [exe, f"--loadEngine={b.path / b.plan(role)['file']}", f"--shapes={name}:{shape}"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            res[role] = parse_trtexec(r.stdout) if r.returncode == 0 else {"error": r.stdout[-500:]}
        except (OSError, subprocess.TimeoutExpired) as e:
            res[role] = {"error": type(e).__name__}
    return res


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- terminal table ------------------------------------------------------------------------
def _fmt(v, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def _rng(entry: dict, key: str, nd: int = 1) -> str:
    s = (entry.get("spread") or {}).get(key)
    main = _fmt(entry.get(key) if key in entry else (s or {}).get("median"), nd)
    return f"{main}\n[{_fmt(s['min'], nd)}-{_fmt(s['max'], nd)}]" if s and s["n"] > 1 else main


def print_report(report: dict, console=None) -> None:
    """Rich tables: one row per configuration (+ baseline), then per-stage latency, then host."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    s = report["settings"]
    rows = list(report["configs"])
    base = report.get("baseline") or {}
    if "skipped" not in base:
        rows.append(base)
    t = Table(title=escape(f"tbedge bench: {s['images']} images, batch {s['batch']}, threads "
                           f"{s['threads'] or 'all'}; median of {s['rounds']} rounds [min-max]"))
    t.add_column("configuration", no_wrap=True)
    # e2e latency: ms from path pulled to result out, queueing included.
    for col in ("img/s e2e", "img/s models", "effic.", "e2e p50/p99 ms", "peak RSS MB", "x base"):
        t.add_column(col, justify="right")
    for e in rows:
        name = escape(f"{e['label']}\n{e.get('backend', '')}")
        if "error" in e:
            t.add_row(name, f"[red]error: {escape(e['error'][:70])}[/red]", *["-"] * 5)
            continue
        lat = (e.get("latency_ms") or {}).get("e2e") or {}
        sp = e.get("speedup_vs_baseline")
        t.add_row(name, *(escape(c) for c in (
            _rng(e, "throughput_ips"), _rng(e, "model_only_ips"), _rng(e, "efficiency", 2),
            f"{_fmt(lat.get('median'))} / {_fmt(lat.get('p99'))}", _rng(e, "peak_rss_mb", 0),
            f"{sp:.1f}x" if sp else "-")))
    console.print(t)
    st = Table(title="per-image stage latency, ms: mean, p95, p99 (segment/classify: share of the batch)")
    st.add_column("configuration", no_wrap=True)
    for stage in (*schema.STAGES, "service"):
        st.add_column(stage.replace("_", " "), justify="right")
    for e in rows:
        if "error" in e:
            continue
        lat = e.get("latency_ms") or {}
        cells = []
        for stage in (*schema.STAGES, "service"):
            v = lat.get("service") if stage == "service" else (lat.get("stages") or {}).get(stage)
            cells.append(f"{_fmt(v['mean'])}\n{_fmt(v['p95'])}\n{_fmt(v['p99'])}" if v else "-")
        st.add_row(escape(e["label"]), *cells)
    console.print(st)
    for e in rows:
        dev = (e.get("model_only") or {}).get("device_ms")
        if dev:
            parts = [f"{role}: " + ", ".join(f"{k} {_fmt(v['median'], 3)}" for k, v in d.items() if v)
                     for role, d in dev.items()]
            console.print(escape(f"{e['label']} median ms (H2D, GPU compute, D2H): " + "; ".join(parts)))
    if "skipped" in base:
        console.print(escape(f"baseline skipped: {base['skipped']}"))
    h = report["host"]
    cpu, v = h["cpu"], h["versions"]
    gpu = h.get("gpu") or {}
    gpus = ", ".join(g["name"] for g in gpu.get("gpus", [])) or "none"
    pm = ((gpu.get("jetson") or {}).get("power_mode") or "").splitlines()
    console.print(escape(f"host: {cpu['model']} ({cpu['usable_cores']} usable cores), GPU {gpus}"
                         + (f", power mode {pm[0]}" if pm else "")
                         + f"; onnxruntime {v['onnxruntime']}, TensorRT {v['tensorrt'] or '-'}; load avg "
                         f"{_fmt((h.get('loadavg_at_start') or [None])[0], 2)} -> "
                         f"{_fmt((h.get('loadavg_at_end') or [None])[0], 2)}"))
    missed = [f"{e['label']}: {k} {t_['measured']:.3g} (target {t_['target']})"
              for e in report["configs"] for k, t_ in (e.get("targets") or {}).items() if not t_["met"]]
    if missed:
        console.print(escape("targets missed: " + "; ".join(missed)))


if __name__ == "__main__":
    sys.exit(child_main())
