"""Facts about the host a measurement ran on (CPU, GPU, TensorRT, package versions): recorded with every
bench report and shown by ``tbedge doctor``."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .. import __version__


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
    from ..runtime.cpu import probe

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
