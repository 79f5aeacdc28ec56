"""``tbedge doctor``: what this host is, and what tbedge will do on it. The first command a site runs.

It reports the CPU (and the int8 kernel class it falls in), memory and disk, the inference runtimes
present, every shipped bundle's self-test on this CPU, which bundle and precision ``screen`` will
use (with the fp32 fallback, if that is what happens here) and the end-to-end speed on synthetic
phantoms (no patient film is needed). The JSON form is documented in docs/doctor.md.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..runtime.bundle import BundleError, default_bundle_path, load_bundle, phantom
from ..runtime.cpu import probe
from .host import dist_version

DOCTOR_FORMAT = 1
SPEED_SIZE = 1024  # phantom side in pixels: a downscaled film, decoded and resized like a real one


def _memory() -> dict:
    out = {"total_mb": None, "available_mb": None}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out["total_mb" if key == "MemTotal" else "available_mb"] = int(val.split()[0]) // 1024
    except (OSError, ValueError):
        pass
    return out


def _disk(path: Path) -> dict:
    u = shutil.disk_usage(path)
    return {"path": str(path), "free_mb": u.free // 2**20, "total_mb": u.total // 2**20}


def runtimes() -> dict:
    import onnxruntime as ort

    trt = None
    if importlib.util.find_spec("tensorrt") is not None:  # its version only: importing it costs seconds
        trt = dist_version("tensorrt") or dist_version("tensorrt-cu12") or "installed"
    cuda_ok, cuda_detail = False, "cuda-python not installed"
    if importlib.util.find_spec("cuda") is not None:
        from ..runtime.gpu.device import gpu_available

        cuda_ok, cuda_detail = gpu_available()
    return {"onnxruntime": {"version": ort.__version__, "providers": ort.get_available_providers()},
            "tensorrt": trt, "cuda": {"available": cuda_ok, "detail": cuda_detail,
                                      "cuda_python": dist_version("cuda-python")}}


def shipped_bundles() -> list[Path]:
    root = default_bundle_path().parent
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())


def bundle_check(path: Path, threads: int = 0) -> dict:
    """Load one bundle strictly (no fallback) and run its self-test here."""
    from ..runtime.pipeline import Pipeline

    out: dict = {"path": str(path), "precision": None, "self_test": {"passed": False, "deviation": None,
                                                                      "error": None}}
    try:
        b = load_bundle(path)
        out.update(name=b.manifest.get("name"), version=b.manifest.get("version"),
                   precision=b.entry("lungs")["precision"], cpu_classes=b.manifest.get("cpu_classes"))
        with Pipeline(b, backend="onnxruntime", threads=threads, strict_engine=True) as pipe:
            out["self_test"].update(passed=True, deviation=pipe.self_test_deviation)
    except BundleError as e:
        out["self_test"]["error"] = str(e)
    return out


def speed(n: int = 20, threads: int = 0, engine: Path | None = None) -> tuple[dict, dict]:
    """Which bundle ``screen`` uses here (after any fallback), and its end-to-end img/s on ``n`` phantoms."""
    import cv2

    from ..runtime.pipeline import Pipeline

    with tempfile.TemporaryDirectory(prefix="tbedge-doctor-") as tmp:
        files = []
        for i in range(n):
            p = Path(tmp) / f"phantom_{i:02d}.png"
            cv2.imwrite(str(p), (phantom(SPEED_SIZE, i % 4) * 255).astype(np.uint8))
            files.append(p)
        with Pipeline(engine, threads=threads) as pipe:
            fb = pipe.fallback
            uses = {"bundle": str(pipe.bundle.path), "backend": pipe.backend, "batch": pipe.batch,
                    "precision": pipe.models["lungs"].precision,
                    "fallback": None if fb is None else fb.message()}
            next(pipe.run(files[:1]))  # warm-up: first-run allocations are not throughput
            t0 = time.perf_counter()
            results = [s.result.status for s in pipe.run(files)]
            dt = time.perf_counter() - t0
    return uses, {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2),
                  "all_scored": all(r == "ok" for r in results), "input": f"{SPEED_SIZE}x{SPEED_SIZE} phantoms"}


def doctor(n_phantoms: int = 20, threads: int = 0, engine: Path | None = None,
           progress: Callable[[str], None] | None = None) -> dict:
    say = progress or (lambda _m: None)
    cpu = probe()
    rep: dict = {"format": DOCTOR_FORMAT, "tbedge": __version__, "python": sys.version.split()[0],
                 "platform": platform.platform(),
                 "cpu": {"model": cpu.model, "machine": cpu.machine, "class": cpu.cpu_class,
                         "features": cpu.shown_features(), "u8s8_saturates": cpu.u8s8_saturates,
                         "cores": os.cpu_count()},
                 "memory": _memory(), "disk": _disk(Path.cwd()), "runtimes": runtimes(), "bundles": []}
    for b in shipped_bundles():
        say(f"self-test: {b.name}")
        rep["bundles"].append(bundle_check(b, threads))
    say(f"speed: {n_phantoms} phantoms end to end")
    try:
        rep["screen_uses"], rep["speed"] = speed(n_phantoms, threads, engine)
    except BundleError as e:
        rep["screen_uses"], rep["speed"] = {"error": str(e)}, None
    rep["ok"] = rep["speed"] is not None and rep["speed"]["all_scored"]
    return rep


def render(rep: dict) -> str:
    """The human-readable form of a doctor report."""
    c, m, d, rt = rep["cpu"], rep["memory"], rep["disk"], rep["runtimes"]
    lines = [f"tbedge {rep['tbedge']}  python {rep['python']}  {rep['platform']}",
             f"CPU      {c['model'] or c['machine']} ({c['cores']} cores)",
             f"         class {c['class']}; features {' '.join(c['features']) or '-'}"
             + ("; int8 U8S8 kernels saturate here" if c["u8s8_saturates"] else ""),
             f"memory   {m['available_mb']} MB free of {m['total_mb']} MB",
             f"disk     {d['free_mb']} MB free of {d['total_mb']} MB at {d['path']}",
             f"runtimes onnxruntime {rt['onnxruntime']['version']} ({', '.join(rt['onnxruntime']['providers'])}); "
             f"TensorRT {rt['tensorrt'] or 'not installed'}; CUDA "
             + ("yes: " if rt["cuda"]["available"] else "no: ") + rt["cuda"]["detail"]]
    for b in rep["bundles"]:
        st = b["self_test"]
        res = ("passes (max drift " + ", ".join(f"{k} {v:.3g}" for k, v in st["deviation"].items()) + ")"
               if st["passed"] else f"FAILS: {st['error']}")
        lines.append(f"bundle   {Path(b['path']).name} ({b['precision']}): self-test {res}")
    u, s = rep["screen_uses"], rep["speed"]
    if s is None:
        lines.append(f"screen   cannot start: {u['error']}")
    else:
        lines.append(f"screen   uses {u['bundle']} ({u['precision']}, {u['backend']}, batch {u['batch']})")
        if u["fallback"]:
            lines.append(f"         fallback: {u['fallback']}")
        lines.append(f"speed    {s['images_per_s']} img/s end to end on {s['images']} {s['input']}")
    lines.append("ok" if rep["ok"] else "NOT OK: see above")
    return "\n".join(lines)
