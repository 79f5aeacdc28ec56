"""Thin, explicit wrappers over cuda-python: device query, memory, streams, events, kernels.

Runtime API (``cuda.bindings.runtime``) for memory/streams/events, driver API for loading the
NVRTC output and launching (the runtime has no PTX loader). Both share the device's primary
context, so the pointers and streams mix freely. Everything is imported inside functions so that
``import tbedge.runtime.gpu`` works on a machine without CUDA.

Written against cuda-python 12.6+/13.x; exercised only where a GPU is present
(tests/test_cuda_kernels.py, tools/gpu-check.sh).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .plan import MAPPED, check_nvrtc_driver, memory_mode


class CudaError(RuntimeError):
    pass


def _rt():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise CudaError("cuda-python is not installed (pip install 'tbedge[gpu]')") from e
    return cudart


def _drv():
    from cuda.bindings import driver as cu

    return cu


def check(result, what: str):
    """Unwrap a cuda-python (err, *values) tuple; raise CudaError naming the call on failure."""
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise CudaError(f"{what} failed: {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def gpu_available() -> tuple[bool, str]:
    """(available, reason) without raising: for tests and gpu-check to skip with a stated reason."""
    try:
        cudart = _rt()
    except CudaError as e:
        return False, str(e)
    try:
        err, n = cudart.cudaGetDeviceCount()
    except Exception as e:  # the runtime library itself failed to load
        return False, f"CUDA runtime unavailable: {e}"
    if int(err) != 0:
        return False, f"no usable CUDA device ({getattr(err, 'name', err)})"
    if n == 0:
        return False, "no CUDA device"
    return True, f"{n} CUDA device(s)"


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.7"
    integrated: bool  # shares DRAM with the CPU (Jetson)
    can_map_host_memory: bool
    total_memory: int
    driver_version: int  # e.g. 12060
    runtime_version: int

    @property
    def arch(self) -> str:
        return "compute_" + self.compute_capability.replace(".", "")


def device_info(index: int = 0) -> DeviceInfo:
    cudart = _rt()
    attr = cudart.cudaDeviceAttr

    def get(a):
        return int(check(cudart.cudaDeviceGetAttribute(a, index), f"cudaDeviceGetAttribute({a.name})"))

    props = check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(
        index=index,
        name=name.rstrip("\x00"),
        compute_capability=f"{get(attr.cudaDevAttrComputeCapabilityMajor)}."
                           f"{get(attr.cudaDevAttrComputeCapabilityMinor)}",
        integrated=bool(get(attr.cudaDevAttrIntegrated)),
        can_map_host_memory=bool(get(attr.cudaDevAttrCanMapHostMemory)),
        total_memory=int(props.totalGlobalMem),
        driver_version=int(check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        runtime_version=int(check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    )


def init_device(index: int = 0, want_mapped: bool = True) -> DeviceInfo:
    """Select the device and create its primary context. Asks for host-memory mapping first (it
    must precede context creation; with unified addressing it is implied anyway)."""
    cudart = _rt()
    check(cudart.cudaSetDevice(index), "cudaSetDevice")
    if want_mapped:
        err, = cudart.cudaSetDeviceFlags(cudart.cudaDeviceMapHost)
        # cudaErrorSetOnActiveProcess: a context already exists (e.g. TensorRT made it); fine on UVA.
        if int(err) not in (0, int(cudart.cudaError_t.cudaErrorSetOnActiveProcess)):
            check((err,), "cudaSetDeviceFlags")
    check(cudart.cudaFree(0), "context creation")
    return device_info(index)


# -- memory ---------------------------------------------------------------------------------------
class DeviceBuffer:
    """cudaMalloc'd bytes. ``ptr`` is an int usable as a kernel or TensorRT address."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(_rt().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            check(_rt().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __del__(self):  # best effort; explicit free() is the contract
        try:
            self.free()
        except Exception:
            pass


class HostBuffer:
    """Page-locked host bytes with a numpy view; ``mapped`` also gives a device pointer to the same
    memory (zero-copy)."""

    def __init__(self, nbytes: int, mapped: bool = False):
        cudart = _rt()
        self.nbytes = int(nbytes)
        self.mapped = mapped
        flags = cudart.cudaHostAllocMapped if mapped else cudart.cudaHostAllocDefault
        self.ptr = int(check(cudart.cudaHostAlloc(max(self.nbytes, 1), flags), f"cudaHostAlloc({nbytes})"))
        self.array = np.ctypeslib.as_array((ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr))
        self.device_ptr = 0
        if mapped:
            dptr = check(cudart.cudaHostGetDevicePointer(self.ptr, 0), "cudaHostGetDevicePointer")
            self.device_ptr = int(dptr)

    def view(self, offset: int, dtype, shape) -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        if offset < 0 or offset + n > self.nbytes:
            raise ValueError(f"view [{offset}, {offset + n}) outside a {self.nbytes}-byte host buffer")
        return self.array[offset:offset + n].view(dt).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            check(_rt().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class Stream:
    def __init__(self):
        cudart = _rt()
        flags = cudart.cudaStreamNonBlocking  # no implicit sync with the legacy default stream
        self.handle = check(cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(_rt().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def wait(self, event: Event) -> None:
        check(_rt().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def destroy(self) -> None:
        if self.handle is not None:
            check(_rt().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class Event:
    def __init__(self, timing: bool = True):
        cudart = _rt()
        flags = cudart.cudaEventDefault if timing else cudart.cudaEventDisableTiming
        self.handle = check(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(_rt().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(_rt().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def done(self) -> bool:
        cudart = _rt()
        err, = cudart.cudaEventQuery(self.handle)
        if int(err) == int(cudart.cudaError_t.cudaErrorNotReady):
            return False
        check((err,), "cudaEventQuery")
        return True

    def elapsed_ms(self, start: Event) -> float:
        return float(check(_rt().cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def destroy(self) -> None:
        if self.handle is not None:
            check(_rt().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


def copy_h2d(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    cudart = _rt()
    check(cudart.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                 stream.handle), "cudaMemcpyAsync H2D")


def copy_d2h(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    cudart = _rt()
    check(cudart.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.handle), "cudaMemcpyAsync D2H")


def download(src_ptr: int, dtype, shape, stream: Stream | None = None) -> np.ndarray:
    """Synchronous copy of a device region into a new numpy array (tests, debugging)."""
    cudart = _rt()
    out = np.empty(shape, dtype)
    if stream is not None:
        stream.synchronize()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaMemcpy(out.ctypes.data, src_ptr, out.nbytes, kind), "cudaMemcpy D2H")
    return out


def upload(dst_ptr: int, arr: np.ndarray) -> None:
    cudart = _rt()
    a = np.ascontiguousarray(arr)
    check(cudart.cudaMemcpy(dst_ptr, a.ctypes.data, a.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
          "cudaMemcpy H2D")


# -- kernels --------------------------------------------------------------------------------------
# Argument kinds for Module.launch: "p" pointer, "i" int32, "q" int64, "f" float32.
_CTYPES = {"p": np.uint64, "i": np.int32, "q": np.int64, "f": np.float32}


class Module:
    """The compiled kernels, loaded into the current context (PTX JIT-compiled by the driver)."""

    def __init__(self, ptx: bytes, names: tuple[str, ...]):
        cu = _drv()
        image = ptx if ptx.endswith(b"\x00") else ptx + b"\x00"  # the loader wants a C string
        self._mod = check(cu.cuModuleLoadData(image), "cuModuleLoadData")
        self.functions = {n: check(cu.cuModuleGetFunction(self._mod, n.encode()), f"cuModuleGetFunction({n})")
                          for n in names}

    def launch(self, name: str, grid, block, stream: Stream, sig: str, *args) -> None:
        """Launch ``name``; ``sig`` gives one kind letter per argument (see _CTYPES) and must be the
        kernel's registered signature (compile.SIGNATURES)."""
        from .compile import SIGNATURES

        if SIGNATURES.get(name) != sig:
            raise ValueError(f"{name}: signature {sig!r} is not the registered {SIGNATURES.get(name)!r}")
        if len(sig) != len(args):
            raise ValueError(f"{name}: signature {sig!r} does not match {len(args)} arguments")
        cu = _drv()
        # Each argument in its own 1-element array; the launch copies them before returning.
        vals = [np.array([a], dtype=_CTYPES[k]) for k, a in zip(sig, args, strict=True)]
        ptrs = np.array([v.ctypes.data for v in vals], dtype=np.uint64)
        check(cu.cuLaunchKernel(self.functions[name], *grid, *block, 0, stream.handle, ptrs.ctypes.data, 0),
              f"cuLaunchKernel({name})")

    def unload(self) -> None:
        if self._mod is not None:
            check(_drv().cuModuleUnload(self._mod), "cuModuleUnload")
            self._mod = None


def load_kernels(info: DeviceInfo) -> Module:
    """Compile kernels.cu for this device with NVRTC and load it."""
    from .compile import KERNELS, compile_ptx, nvrtc_version

    check_nvrtc_driver(nvrtc_version(), info.driver_version)
    return Module(compile_ptx(info.arch), KERNELS)


def choose_memory_mode(info: DeviceInfo, override: str | None = None) -> str:
    return memory_mode(info.integrated, info.can_map_host_memory, override)


__all__ = ["MAPPED", "CudaError", "DeviceBuffer", "DeviceInfo", "Event", "HostBuffer", "Module", "Stream",
           "check", "choose_memory_mode", "copy_d2h", "copy_h2d", "device_info", "download", "gpu_available",
           "init_device", "load_kernels", "upload"]
