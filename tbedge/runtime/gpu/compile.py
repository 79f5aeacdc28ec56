"""NVRTC: compile kernels.cu to PTX. Runs without a GPU (NVRTC is a compiler library), which is
how the CPU test suite proves every kernel compiles for Jetson Orin (compute_87) and Hopper
(compute_90). cuda-python is imported inside the functions only."""

from __future__ import annotations

import functools
import re
from importlib import resources

# Kernel name -> argument kinds, one letter per parameter (device.Module.launch packs them):
# p pointer, q int64, i int32, f float32. tests/test_cuda_kernels.py checks these against the PTX.
RESIZE_SIG = "pqiipppppppiiff"  # src, pitch, x0, y0, 6 table arrays, dst, dw, dh, scale, offset
WARP_SIG, DILATE_SIG, EQUALIZE_SIG, BLEND_SIG = "piipppppii", "ppiipi", "ppippii", "ppippi"
SIGNATURES = {"tbedge_resize_u8": RESIZE_SIG, "tbedge_resize_u16": RESIZE_SIG,
              "tbedge_resize_f32": RESIZE_SIG, "tbedge_threshold": "ppqf",
              # lung-masked crops (masked.py): mask, mw, mh, xi, xa, yi, ya, out, dw, dh / src, dst, w, h,
              # half, r / crop, wraw, all_inside, scratch, out, n, n2 / crop, wraw, all_inside, out, wout, n
              "tbedge_mask_warp": WARP_SIG, "tbedge_dilate": DILATE_SIG, "tbedge_equalize": EQUALIZE_SIG,
              "tbedge_mask_blend": BLEND_SIG}
KERNELS = tuple(SIGNATURES)
PTX_PARAM_TYPES = {"p": "u64", "q": "u64", "i": "u32", "f": "f32"}
DEFAULT_ARCH = "compute_87"  # Jetson AGX/Orin NX/Orin Nano (JetPack 6)


class NvrtcError(RuntimeError):
    """Compilation failed; the message carries NVRTC's log."""


def kernel_source() -> str:
    return resources.files(__package__).joinpath("kernels.cu").read_text(encoding="utf-8")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the host
        raise NvrtcError("cuda-python is not installed (pip install 'tbedge[gpu]')") from e
    return nvrtc


def _check(nvrtc, result, what: str, prog=None):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = _log(nvrtc, prog) if prog is not None else ""
        raise NvrtcError(f"NVRTC {what} failed: {err.name}\n{log}".rstrip())
    return rest[0] if len(rest) == 1 else rest


def _log(nvrtc, prog) -> str:
    err, n = nvrtc.nvrtcGetProgramLogSize(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or n <= 1:
        return ""
    buf = b" " * n
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\x00 ").decode(errors="replace")


def ptx_params(ptx: bytes) -> dict[str, list[str]]:
    """Kernel name -> PTX parameter types (u64, u32, f32, ...) for every .entry in the PTX."""
    text = ptx.decode(errors="replace")
    return {m.group(1): re.findall(r"\.param \.(\w+)", m.group(2))
            for m in re.finditer(r"\.entry (\w+)\((.*?)\)", text, re.S)}


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    major, minor = _check(nvrtc, nvrtc.nvrtcVersion(), "version")
    return int(major), int(minor)


def _arch_option(arch: str) -> bytes:
    if not re.fullmatch(r"(compute|sm)_\d{2,3}[af]?", arch):
        raise ValueError(f"arch must look like compute_87 or sm_87, got {arch!r}")
    return f"--gpu-architecture={arch}".encode()


@functools.lru_cache(maxsize=8)
def compile_ptx(arch: str = DEFAULT_ARCH, source: str | None = None, fast: bool = False) -> bytes:
    """Compile the kernels (or ``source``) to PTX for ``arch``; raise NvrtcError with the log on
    any error, and also when the log has a warning (a warning here is a kernel bug).

    ``fast`` allows FMA contraction; off by default so the GPU sums round like the CPU reference
    (the difference is ~1e-7 either way, far inside the 1/255 tolerance)."""
    nvrtc = _nvrtc()
    src = (source if source is not None else kernel_source()).encode()
    prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(src, b"tbedge_kernels.cu", 0, [], []), "create")
    try:
        opts = [_arch_option(arch), b"--std=c++17", b"--use_fast_math" if fast else b"--fmad=false",
                b"--restrict", b"--extra-device-vectorization"]
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log = _log(nvrtc, prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError(f"NVRTC compile for {arch} failed: {err.name}\n{log}".rstrip())
        if "warning" in log.lower():
            raise NvrtcError(f"NVRTC compile for {arch} produced warnings:\n{log}")
        size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "PTX size", prog)
        buf = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "get PTX", prog)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    ptx = buf.rstrip(b"\x00")
    if source is None:
        missing = [k for k in KERNELS if f".entry {k}(".encode() not in ptx]
        if missing:
            raise NvrtcError(f"PTX for {arch} lacks kernels {missing}")
    return ptx
