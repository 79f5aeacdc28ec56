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
  trtexec's H2D / GPU compute / D2H latencies (see ``bench_child._device_timings``); with the TensorRT
  backend the pipeline's own device path reports the same split per stage and batch (``device_ms``).

The child is ``python -m tbedge.tools.bench_child --child`` reading its configuration as JSON on stdin
and printing one result line prefixed with :data:`RESULT_MARK`; host facts come from ``host``. The
baseline child is ``python -m tbedge.tools.bench_baseline --child`` (it needs TensorFlow; this module
only names it, it never imports it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import schema
from ..errors import TbedgeError
from ..fsio import atomic_write_text
from ..runtime.bundle import ROLES, default_bundle_path
from .host import host_facts

BENCH_FORMAT = 1
RESULT_MARK = "TBEDGE_BENCH_RESULT "
STATS = ("min", "mean", "median", "p90", "p95", "p99", "max")
BASELINE_MODULE = "tbedge.tools.bench_baseline"
CHILD_MODULE = "tbedge.tools.bench_child"
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


class BenchError(TbedgeError):
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
        from ..inputs import expand_inputs

        files, _ = expand_inputs(list(images))
        if not files:
            raise BenchError("no image files found in " + ", ".join(map(str, images)))
        return files
    import cv2

    from ..runtime.bundle import phantom

    if tmp is None:
        raise BenchError("no images given and no folder for synthetic ones")
    out = []
    for s in range(n_phantoms):
        p = tmp / f"phantom_{s:02d}.png"
        cv2.imwrite(str(p), (phantom(512, s % 4) * 255).astype(np.uint8))
        out.append(p)
    return out


# -- measurement (runs in the child) -------------------------------------------------------
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
                results[c["label"]].append(_spawn(CHILD_MODULE, c, timeout_s))
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
    from ..runtime.bundle import load_bundle

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
        # H2D / GPU compute / D2H medians: per model (runner timings), then per stage of the device path
        for dev, what in (((e.get("model_only") or {}).get("device_ms"), "median ms (H2D, GPU compute, D2H)"),
                          (e.get("device_ms"), "pipeline on the device, median ms per batch")):
            if dev:
                parts = [f"{name}: " + ", ".join(f"{k} {_fmt(v['median'], 3)}" for k, v in d.items() if v)
                         for name, d in dev.items()]
                console.print(escape(f"{e['label']} {what}: " + "; ".join(parts)))
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

