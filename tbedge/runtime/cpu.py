"""What this CPU can do, as the int8 kernels see it.

ONNX Runtime picks its int8 kernels by CPUID at run time. On x86 without VNNI (AVX2 or AVX-512 BW
alone) its U8S8 kernels add pairs of uint8 x int8 products in a saturating 16-bit register, so a
U8S8 model can drift far from fp32 there and nowhere else. Features are read through numpy's own
CPUID probe (what the process really gets, also under an emulator, whose /proc/cpuinfo would show
the host's flags); /proc/cpuinfo is read only for flags numpy does not name (AVX-VNNI, AMX).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

# Classes a bundle's manifest names (``cpu_classes``): the int8 kernel families of ONNX Runtime.
CLASSES = ("x86-64-sse", "x86-64-avx2", "x86-64-avx512", "x86-64-vnni", "x86-64-amx", "aarch64", "other")
_SHOWN = ("SSE41", "AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX_VNNI", "AMX",
          "NEON", "ASIMD", "ASIMDDP", "SVE")


@dataclass(frozen=True)
class CpuInfo:
    machine: str
    model: str
    features: dict[str, bool] = field(default_factory=dict)

    @property
    def cpu_class(self) -> str:
        f = self.features
        if self.machine in ("x86_64", "amd64"):
            if f.get("AMX"):
                return "x86-64-amx"
            if f.get("AVX512VNNI") or f.get("AVX_VNNI"):
                return "x86-64-vnni"
            if f.get("AVX512BW"):
                return "x86-64-avx512"
            return "x86-64-avx2" if f.get("AVX2") else "x86-64-sse"
        if self.machine in ("aarch64", "arm64"):
            return "aarch64"
        return "other"

    @property
    def u8s8_saturates(self) -> bool:
        """True where ONNX Runtime's U8S8 int8 kernels saturate (x86 without VNNI or AMX)."""
        return self.cpu_class in ("x86-64-sse", "x86-64-avx2", "x86-64-avx512")

    def shown_features(self) -> list[str]:
        return [k for k in _SHOWN if self.features.get(k)]

    def describe(self) -> str:
        return f"{self.model or self.machine} [{self.cpu_class}: {' '.join(self.shown_features()) or 'baseline'}]"


def _proc_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    first: dict[str, str] = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        first.setdefault(key.strip(), val.strip())
    # x86 names the CPU in "model name" ("model" is a number there); ARM and others in "Model" or "Hardware".
    model = next((first[k] for k in ("model name", "Model", "Hardware", "cpu model") if first.get(k)), "")
    return model, set((first.get("flags") or first.get("Features") or "").split())


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return dict(feats)


def probe() -> CpuInfo:
    """This process's CPU: machine, model name and the features that decide the int8 kernels."""
    machine = platform.machine().lower()
    model, flags = _proc_cpuinfo()
    feats = {k: v for k, v in _numpy_features().items() if v}
    # numpy names neither AVX-VNNI (Alder Lake and later) nor AMX; trust cpuinfo only for those, and
    # only where numpy's own CPUID shows the AVX2 they build on (under an emulator cpuinfo is the host's).
    if feats.get("AVX2"):
        if "avx_vnni" in flags:
            feats["AVX_VNNI"] = True
        if {"amx_tile", "amx_int8"} <= flags and feats.get("AVX512VNNI"):
            feats["AMX"] = True
    if machine in ("aarch64", "arm64") and "asimddp" in flags:
        feats["ASIMDDP"] = True
    return CpuInfo(machine, model, feats)
