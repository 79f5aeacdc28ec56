"""What this CPU can do, as the int8 kernels see it.

ONNX Runtime picks its int8 kernels by CPUID at run time. On x86 without VNNI (AVX2 or AVX-512 BW
alone) its U8S8 kernels add pairs of uint8 x int8 products in a saturating 16-bit register, so a
U8S8 model can drift far from fp32 there and nowhere else. Features are read through numpy's own
CPUID probe (what the process really gets, also under an emulator, whose /proc/cpuinfo would show
the host's flags). numpy names neither AVX-VNNI nor AMX: on x86-64 Linux they are read with the CPUID
instruction itself (a few bytes of machine code run through ctypes); only where that cannot run is
/proc/cpuinfo read for them, and then only if it agrees with numpy on AVX-512 (it is not the host's).
"""

from __future__ import annotations

import ctypes
import mmap
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


# cpuid(leaf, subleaf, out): push rbx; eax=leaf; ecx=subleaf; r8=out; cpuid; out[0..3]=eax,ebx,ecx,edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")


def _cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """CPUID as this process executes it (an emulator answers for the CPU it emulates), or None where
    machine code cannot be run here (not x86-64 Linux, or executable memory refused)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not hasattr(mmap, "PROT_EXEC"):
        return None
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    try:
        buf.write(_CPUID_CODE)
        out = (ctypes.c_uint32 * 4)()
        anchor = ctypes.c_char.from_buffer(buf)
        ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(ctypes.addressof(anchor))(
            leaf, subleaf, ctypes.addressof(out))
        del anchor  # the buffer cannot close while exported
        return tuple(out)
    finally:
        buf.close()


def _cpuid_vnni_amx() -> dict[str, bool] | None:
    """AVX-VNNI (leaf 7.1 EAX bit 4) and AMX tiles + int8 (leaf 7.0 EDX bits 24, 25) from CPUID itself."""
    top = _cpuid(0)
    if top is None:
        return None
    if top[0] < 7:
        return {"AVX_VNNI": False, "AMX": False}
    edx7 = _cpuid(7, 0)[3]
    eax71 = _cpuid(7, 1)[0]
    return {"AVX_VNNI": bool(eax71 >> 4 & 1), "AMX": bool(edx7 >> 24 & 1 and edx7 >> 25 & 1)}


def probe() -> CpuInfo:
    """This process's CPU: machine, model name and the features that decide the int8 kernels."""
    machine = platform.machine().lower()
    model, flags = _proc_cpuinfo()
    feats = {k: v for k, v in _numpy_features().items() if v}
    # numpy names neither AVX-VNNI (Alder Lake and later) nor AMX. Both build on AVX2 (AMX on AVX-512 VNNI).
    if feats.get("AVX2"):
        direct = _cpuid_vnni_amx()
        if direct is None:  # cpuinfo instead, unless it disagrees with numpy's CPUID (an emulator's host)
            ours = ("avx512f" in flags) == bool(feats.get("AVX512F"))
            direct = {"AVX_VNNI": ours and "avx_vnni" in flags, "AMX": ours and {"amx_tile", "amx_int8"} <= flags}
        if direct["AVX_VNNI"]:
            feats["AVX_VNNI"] = True
        if direct["AMX"] and feats.get("AVX512VNNI"):
            feats["AMX"] = True
    if machine in ("aarch64", "arm64") and "asimddp" in flags:
        feats["ASIMDDP"] = True
    return CpuInfo(machine, model, feats)
