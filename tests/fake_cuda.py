"""A CPU stand-in for ``tbedge.runtime.gpu.device`` (cuda-python), used only because this machine has no GPU.

Only the CUDA calls are replaced; everything above them (GpuPreprocessor, DevicePath, Pipeline, the
runners' ``infer_device``) is the product's code. Memory is host memory at real addresses, so the
pointer arithmetic, region layouts and copies are the real ones, and it is checked: every access must
fall inside one live allocation, a copy must go the direction it claims, and a kernel may touch only
device memory or mapped host memory (never a pinned staging arena). A stream runs each operation
when it is enqueued. A launch checks its signature and grid, then runs the numpy reference of that
kernel (gpu/plan.py, gpu/masked.py) on the memory its arguments point at. The kernels themselves are
checked against the same references on a GPU (tests/test_masked_crop.py).
"""

from __future__ import annotations

import bisect
import ctypes
import time

import numpy as np

from tbedge.runtime.gpu import device as real
from tbedge.runtime.gpu import masked as MK
from tbedge.runtime.gpu import plan as P
from tbedge.runtime.gpu.compile import SIGNATURES


class FakeCudaError(AssertionError):
    pass


class Memory:
    """Live allocations by address: (end, kind) with kind "device", "pinned" or "mapped"."""

    def __init__(self):
        self.starts: list[int] = []
        self.blocks: dict[int, tuple[int, str, np.ndarray]] = {}

    def add(self, nbytes: int, kind: str) -> tuple[int, np.ndarray]:
        arr = np.zeros(max(int(nbytes), 1), np.uint8)
        ptr = arr.ctypes.data
        bisect.insort(self.starts, ptr)
        self.blocks[ptr] = (ptr + arr.nbytes, kind, arr)
        return ptr, arr

    def drop(self, ptr: int) -> None:
        if ptr not in self.blocks:
            raise FakeCudaError(f"free of {ptr:#x}, not an allocation")
        self.starts.remove(ptr)
        del self.blocks[ptr]

    def kind(self, ptr: int, nbytes: int) -> str | None:
        """The kind of the allocation holding [ptr, ptr + nbytes); None when it is no allocation of ours."""
        i = bisect.bisect_right(self.starts, ptr) - 1
        if i < 0:
            return None
        start = self.starts[i]
        end, kind, _ = self.blocks[start]
        if ptr >= end:
            return None
        if ptr + nbytes > end:
            raise FakeCudaError(f"[{ptr:#x}, +{nbytes}) runs {ptr + nbytes - end} bytes past its {kind} allocation")
        return kind

    def array(self, ptr: int, dtype, count: int, kernel: bool = True) -> np.ndarray:
        dt = np.dtype(dtype)
        kind = self.kind(ptr, count * dt.itemsize)
        if kind is None:
            raise FakeCudaError(f"{ptr:#x} is not device memory")
        if kernel and kind == "pinned":
            raise FakeCudaError(f"a kernel reads pinned host memory at {ptr:#x} (not mapped)")
        return np.frombuffer((ctypes.c_uint8 * (count * dt.itemsize)).from_address(ptr), dt)


MEM = Memory()
STATE = {"integrated": False, "launches": []}


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr, self._arr = MEM.add(self.nbytes, "device")

    def free(self) -> None:
        if self.ptr:
            MEM.drop(self.ptr)
            self.ptr = 0


class HostBuffer:
    def __init__(self, nbytes: int, mapped: bool = False):
        self.nbytes, self.mapped = int(nbytes), mapped
        self.ptr, self.array = MEM.add(self.nbytes, "mapped" if mapped else "pinned")
        self.device_ptr = self.ptr if mapped else 0  # unified addressing: one address for both

    view = real.HostBuffer.view

    def free(self) -> None:
        if self.ptr:
            MEM.drop(self.ptr)
            self.ptr, self.array = 0, None


class Stream:
    _next = 1

    def __init__(self):
        self.handle = Stream._next
        Stream._next += 1

    @property
    def ptr(self) -> int:
        return self.handle

    def synchronize(self) -> None:
        pass

    def wait(self, event) -> None:
        pass

    def destroy(self) -> None:
        self.handle = None


class Event:
    def __init__(self, timing: bool = True):
        self.t = None

    def record(self, stream: Stream) -> None:
        if stream.handle is None:
            raise FakeCudaError("record on a destroyed stream")
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def done(self) -> bool:
        return True

    def elapsed_ms(self, start: Event) -> float:
        return (self.t - start.t) * 1e3

    def destroy(self) -> None:
        pass


def _host_side(ptr: int, nbytes: int) -> None:
    if MEM.kind(ptr, nbytes) == "device":
        raise FakeCudaError(f"host side of a copy is device memory at {ptr:#x}")


def copy_h2d(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    _host_side(src_ptr, nbytes)
    MEM.array(dst_ptr, np.uint8, nbytes)  # must be device (or mapped) memory
    ctypes.memmove(dst_ptr, src_ptr, nbytes)


def copy_d2h(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    _host_side(dst_ptr, nbytes)
    MEM.array(src_ptr, np.uint8, nbytes)
    ctypes.memmove(dst_ptr, src_ptr, nbytes)


def download(src_ptr: int, dtype, shape, stream: Stream | None = None) -> np.ndarray:
    n = int(np.prod(shape))
    return MEM.array(src_ptr, dtype, n).reshape(shape).copy()


def upload(dst_ptr: int, arr: np.ndarray) -> None:
    a = np.ascontiguousarray(arr)
    MEM.array(dst_ptr, a.dtype, a.size)[:] = a.ravel()


def gpu_available() -> tuple[bool, str]:
    return True, "CPU stand-in for CUDA (tests/fake_cuda.py)"


def device_info(index: int = 0) -> real.DeviceInfo:
    return real.DeviceInfo(index, "fake", "8.7" if STATE["integrated"] else "9.0", STATE["integrated"], True,
                           8 << 30, 12060, 12060)


def init_device(index: int = 0, want_mapped: bool = True) -> real.DeviceInfo:
    return device_info(index)


# -- kernels: the numpy references on the memory the arguments point at ----------------------------------
def _covers(name, grid, block, w, h=1, z=1):
    if grid[0] * block[0] < w or grid[1] * block[1] < h or grid[2] * block[2] < z:
        raise FakeCudaError(f"{name}: launch {grid} x {block} does not cover {w} x {h} x {z}")


def _axis(xs_ptr, xi_ptr, xw_ptr, n):
    start = MEM.array(xs_ptr, np.int32, n + 1).copy()
    k = int(start[-1])
    return P.AxisTable(start, MEM.array(xi_ptr, np.int32, k).copy(), MEM.array(xw_ptr, np.float32, k).copy())


def _resize(name, grid, block, a):
    src, pitch, x0, y0, xs, xi, xw, ys, yi, yw, dst, dw, dh, scale, offset = a
    _covers(name, grid, block, dw, dh)
    tx, ty = _axis(xs, xi, xw, dw), _axis(ys, yi, yw, dh)
    rows, cols = y0 + int(ty.idx.max()) + 1, x0 + int(tx.idx.max()) + 1
    dt = P.PIXEL_TYPES[name.rsplit("_", 1)[1]]
    img = MEM.array(src, dt, (rows - 1) * pitch + cols)
    img = np.lib.stride_tricks.as_strided(img, (rows, cols), (pitch * img.itemsize, img.itemsize))
    t = P.ResizeTables((x0, y0, cols, rows), tx, ty, "tables")
    MEM.array(dst, np.float32, dw * dh)[:] = P.resize_reference(img, t, scale, offset).ravel()


def _mask_warp(name, grid, block, a):
    mask, mw, mh, xi, xa, yi, ya, out, dw, dh = a
    _covers(name, grid, block, dw, dh)
    t = MK.WarpTables(*(MEM.array(p, dt, n).copy() for p, dt, n in
                        ((xi, np.int32, dw), (xa, np.float32, dw), (yi, np.int32, dh), (ya, np.float32, dh))))
    m = MEM.array(mask, np.uint8, mw * mh).reshape(mh, mw)
    MEM.array(out, np.uint8, dw * dh)[:] = MK.warp_reference(m, t).ravel()


def _dilate(name, grid, block, a):
    src, dst, w, h, half, r = a
    _covers(name, grid, block, w, h)
    m = MEM.array(src, np.uint8, w * h).reshape(h, w)
    MEM.array(dst, np.uint8, w * h)[:] = MK.dilate_reference(m, MEM.array(half, np.int32, 2 * r + 1)).ravel()


def _one_block(name, grid, block):
    if tuple(grid) != (1, 1, 1) or block[0] & (block[0] - 1) or block[0] > 1024:
        raise FakeCudaError(f"{name}: one block of a power of two <= 1024 threads, got {grid} x {block}")


def _weights(wraw, n, all_inside):
    return np.ones(n, np.float32) if all_inside else MEM.array(wraw, np.float32, n).copy()


def _equalize(name, grid, block, a):
    crop, wraw, all_inside, scratch, out, n, n2 = a
    _one_block(name, grid, block)
    if n2 < n or n2 & (n2 - 1):
        raise FakeCudaError(f"{name}: sort length {n2} for {n} values")
    MEM.array(scratch, np.float32, n2)  # the sort's scratch must be there
    c = MEM.array(crop, np.float32, n).copy()
    MEM.array(out, np.float32, n)[:] = MK.equalize_reference(c, _weights(wraw, n, all_inside), bool(all_inside))


def _blend(name, grid, block, a):
    crop, wraw, all_inside, out, wout, n = a
    _one_block(name, grid, block)
    c = MEM.array(crop, np.float32, n).copy()
    x = MK.blend_reference(c, _weights(wraw, n, all_inside), bool(all_inside))
    MEM.array(out, np.float32, 2 * n)[:] = x.ravel()
    MEM.array(wout, np.float32, n)[:] = x[..., 1]


def _threshold(name, grid, block, a):
    heat, mask, n, thr = a
    MEM.array(mask, np.uint8, n)[:] = (MEM.array(heat, np.float32, n) >= np.float32(thr)).astype(np.uint8)


KERNELS = {"tbedge_resize_u8": _resize, "tbedge_resize_u16": _resize, "tbedge_resize_f32": _resize,
           "tbedge_mask_warp": _mask_warp, "tbedge_dilate": _dilate, "tbedge_equalize": _equalize,
           "tbedge_mask_blend": _blend, "tbedge_threshold": _threshold}


class Module:
    def __init__(self, names=tuple(SIGNATURES)):
        self.functions = {n: n for n in names}

    def launch(self, name: str, grid, block, stream: Stream, sig: str, *args) -> None:
        if SIGNATURES.get(name) != sig or len(sig) != len(args):
            raise FakeCudaError(f"{name}: signature {sig!r} with {len(args)} arguments, "
                                f"registered {SIGNATURES.get(name)!r}")
        if stream.handle is None:
            raise FakeCudaError(f"{name} launched on a destroyed stream")
        STATE["launches"].append(name)
        vals = tuple(int(a) if k in "pqi" else float(a) for k, a in zip(sig, args, strict=True))
        KERNELS[name](name, grid, block, vals)

    def unload(self) -> None:
        pass


def load_kernels(info) -> Module:
    return Module()


def install(monkeypatch, integrated: bool = False) -> dict:
    """Replace the CUDA layer (tbedge.runtime.gpu.device) for one test; returns the state (launches)."""
    STATE.update(integrated=integrated, launches=[])
    for name in ("DeviceBuffer", "HostBuffer", "Stream", "Event", "copy_h2d", "copy_d2h", "download", "upload",
                 "gpu_available", "device_info", "init_device", "load_kernels"):
        monkeypatch.setattr(real, name, globals()[name])
    return STATE
