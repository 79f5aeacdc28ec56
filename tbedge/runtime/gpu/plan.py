"""Pure, testable parts of the GPU path: resize tables, launch geometry, buffer plans.

Nothing here touches CUDA. The GPU kernels do no coordinate arithmetic of their own: every resize
(area or bilinear) is one kernel that applies per-axis weight tables computed here on the host,
with exactly OpenCV's formulas (``computeResizeAreaTab`` for INTER_AREA, the ``(d + 0.5) * scale
- 0.5`` mapping with edge clamping for INTER_LINEAR). ``resize_reference`` applies the same tables
with the same float32 arithmetic in numpy, so the algorithm is checked against ``cv2.resize`` on
any CPU, and the GPU kernels are checked against ``resize_reference`` / tbedge's CPU path on a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

AREA = "area"
LINEAR = "linear"
ALIGN = 256  # bytes; cudaMalloc alignment, and enough for any vector load the kernels might use
# Pixel formats the resize kernels read; the value is the kernel-name suffix and the numpy dtype.
PIXEL_TYPES = {"u8": np.uint8, "u16": np.uint16, "f32": np.float32}


# -- resize tables --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisTable:
    """Weights for one axis in CSR form: destination d sums w[k] * src[idx[k]] for
    k in range(start[d], start[d + 1])."""

    start: np.ndarray  # int32, (dsize + 1,)
    idx: np.ndarray  # int32, (K,), source indices relative to the crop origin
    w: np.ndarray  # float32, (K,)

    @property
    def dsize(self) -> int:
        return len(self.start) - 1

    @property
    def entries(self) -> int:
        return len(self.idx)

    def dense(self, ssize: int) -> np.ndarray:
        """(dsize, ssize) float32 weight matrix (for the numpy reference and tests)."""
        m = np.zeros((self.dsize, ssize), np.float32)
        rows = np.repeat(np.arange(self.dsize), np.diff(self.start))
        np.add.at(m, (rows, self.idx), self.w)
        return m


def _csr_from_parts(counts: np.ndarray, idx: np.ndarray, w: np.ndarray) -> AxisTable:
    start = np.zeros(len(counts) + 1, np.int32)
    start[1:] = np.cumsum(counts)
    t = AxisTable(start, idx.astype(np.int32), w.astype(np.float32))
    for a in (t.start, t.idx, t.w):
        a.flags.writeable = False  # tables are cached and shared
    return t


@functools.lru_cache(maxsize=64)
def area_axis(ssize: int, dsize: int) -> AxisTable:
    """OpenCV's INTER_AREA weights for shrinking ssize -> dsize (``computeResizeAreaTab``), in
    numpy: per destination an optional partial left cell, whole cells, an optional partial right
    cell, each weight = covered fraction / cell width (rounded to float32 as OpenCV does)."""
    if not 0 < dsize <= ssize:
        raise ValueError(f"area resize needs 0 < dsize <= ssize, got {ssize} -> {dsize}")
    scale = 1.0 / (dsize / ssize)  # cv::resize computes it this way, not as ssize / dsize
    fsx1 = np.arange(dsize, dtype=np.float64) * scale
    fsx2 = fsx1 + scale
    cell = np.minimum(scale, ssize - fsx1)
    sx2 = np.minimum(np.floor(fsx2).astype(np.int64), ssize - 1)
    sx1 = np.minimum(np.ceil(fsx1).astype(np.int64), sx2)
    has_l = (sx1 - fsx1) > 1e-3
    has_r = (fsx2 - sx2) > 1e-3
    n_mid = sx2 - sx1
    counts = has_l.astype(np.int64) + n_mid + has_r
    row_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    idx = np.empty(total, np.int64)
    w = np.empty(total, np.float64)
    # left partial cells
    li = row_start[has_l]
    idx[li] = sx1[has_l] - 1
    w[li] = ((sx1 - fsx1) / cell)[has_l]
    # whole cells: positions row_start + has_l + j for j < n_mid
    rows = np.repeat(np.arange(dsize), n_mid)
    j = np.arange(len(rows)) - np.repeat(np.cumsum(n_mid) - n_mid, n_mid)
    mi = row_start[rows] + has_l[rows] + j
    idx[mi] = sx1[rows] + j
    w[mi] = (1.0 / cell)[rows]
    # right partial cells
    ri = (row_start + counts - 1)[has_r]
    idx[ri] = sx2[has_r]
    w[ri] = (np.minimum(np.minimum(fsx2 - sx2, 1.0), cell) / cell)[has_r]
    return _csr_from_parts(counts, idx, w)


@functools.lru_cache(maxsize=64)
def linear_axis(ssize: int, dsize: int) -> AxisTable:
    """OpenCV's INTER_LINEAR weights (half-pixel centres, clamped at the edges)."""
    if ssize <= 0 or dsize <= 0:
        raise ValueError(f"linear resize needs positive sizes, got {ssize} -> {dsize}")
    scale = 1.0 / (dsize / ssize)
    fx = ((np.arange(dsize, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)  # as OpenCV
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx.astype(np.float32)).astype(np.float32)
    fx[sx < 0] = 0.0
    sx[sx < 0] = 0
    edge = sx >= ssize - 1  # OpenCV copies the edge sample there (weight ONE)
    counts = np.where(edge, 1, 2)
    row_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = np.empty(int(counts.sum()), np.int64)
    w = np.empty(len(idx), np.float32)
    idx[row_start[edge]] = ssize - 1
    w[row_start[edge]] = 1.0
    inner = ~edge
    idx[row_start[inner]] = sx[inner]
    w[row_start[inner]] = np.float32(1.0) - fx[inner]
    idx[row_start[inner] + 1] = sx[inner] + 1
    w[row_start[inner] + 1] = fx[inner]
    return _csr_from_parts(counts, idx, w)


def axis_table(ssize: int, dsize: int, mode: str) -> AxisTable:
    if mode == AREA:
        return area_axis(ssize, dsize)
    if mode == LINEAR:
        return linear_axis(ssize, dsize)
    raise ValueError(f"unknown resize mode {mode!r}")


def resize_mode(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> str:
    """The interpolation tbedge's CPU path (lungs.resize_area) picks: area when shrinking (or equal)
    on both axes, linear otherwise."""
    (sw, sh), (dw, dh) = src_wh, dst_wh
    return AREA if (dw <= sw and dh <= sh) else LINEAR


@dataclass(frozen=True)
class ResizeTables:
    """Both axes of one resize from a box of the source image, plus how to map pixel values."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in source pixels
    x: AxisTable
    y: AxisTable
    mode: str

    @property
    def out_wh(self) -> tuple[int, int]:
        return self.x.dsize, self.y.dsize


def resize_tables(src_shape: tuple[int, int], dst_wh: int | tuple[int, int],
                  box: tuple[int, int, int, int] | None = None, mode: str | None = None) -> ResizeTables:
    """Tables for resizing src[y0:y1, x0:x1] (src_shape = (H, W)) to dst_wh, picking the mode the
    CPU path would pick unless one is given."""
    h, w = src_shape
    dw, dh = (dst_wh, dst_wh) if isinstance(dst_wh, int) else dst_wh
    x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {(x0, y0, x1, y1)} is empty or outside the {w}x{h} image")
    sw, sh = x1 - x0, y1 - y0
    mode = mode or resize_mode((sw, sh), (dw, dh))
    return ResizeTables((x0, y0, x1, y1), axis_table(sw, dw, mode), axis_table(sh, dh, mode), mode)


def _apply_axis(a: np.ndarray, t: AxisTable) -> np.ndarray:
    """out[..., d] = sum over k in [start[d], start[d+1]) of a[..., idx[k]] * w[k], accumulated in
    float32 in table order, one rounding per multiply and per add: the kernel's loop, bit for bit."""
    counts = np.diff(t.start)
    out = np.zeros((*a.shape[:-1], t.dsize), np.float32)
    for j in range(int(counts.max())):
        live = counts > j  # destinations with a j-th entry; the others add nothing (not even +0.0)
        k = t.start[:-1][live] + j
        out[..., live] += a[..., t.idx[k]] * t.w[k]
    return out


def resize_reference(src: np.ndarray, t: ResizeTables, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The resize kernel's arithmetic in numpy: out = (sum_y wy * sum_x wx * src) * scale + offset,
    float32 throughout, horizontal pass first, each sum in table order (as the kernel; OpenCV's
    resizeArea_ and row filters sum in the same order)."""
    x0, y0, x1, y1 = t.box
    s = src[y0:y1, x0:x1].astype(np.float32)
    rows = _apply_axis(s, t.x)  # (sh, dw): horizontal pass
    out = _apply_axis(np.ascontiguousarray(rows.T), t.y).T  # (dh, dw): vertical pass
    return (out * np.float32(scale) + np.float32(offset)).astype(np.float32)


def value_map(dtype: np.dtype | type, bits: int | None = None, invert: bool = False) -> tuple[float, float]:
    """(scale, offset) that turn raw pixels into tbedge's [0, 1] float image (v * scale + offset).

    Integers divide by the full range of their container, as ``imaging.load_image`` does; pass
    ``bits`` for a stored depth below the container (e.g. 12-bit in uint16). ``invert`` maps
    MONOCHROME1 (bright = air) to the bright-bone convention.
    """
    dt = np.dtype(dtype)
    if dt == np.float32:
        full = 1.0
    elif dt in (np.uint8, np.uint16):
        full = float((1 << (bits or dt.itemsize * 8)) - 1)
    else:
        raise ValueError(f"unsupported pixel type {dt} (uint8, uint16 or float32)")
    return (-1.0 / full, 1.0) if invert else (1.0 / full, 0.0)


def pixel_type(dtype: np.dtype | type) -> str:
    dt = np.dtype(dtype)
    for name, t in PIXEL_TYPES.items():
        if dt == np.dtype(t):
            return name
    raise ValueError(f"unsupported pixel type {dt} (uint8, uint16 or float32)")


# -- launch geometry ------------------------------------------------------------------------------
def launch_2d(width: int, height: int, block: tuple[int, int] = (32, 8),
              batch: int = 1) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) covering a width x height image per z-slice; 32-wide blocks keep a warp on
    one output row so its stores coalesce."""
    bx, by = block
    if width <= 0 or height <= 0 or batch <= 0:
        raise ValueError(f"empty launch {width}x{height}x{batch}")
    if bx * by > 1024 or bx <= 0 or by <= 0:
        raise ValueError(f"block {block} exceeds 1024 threads")
    grid = (-(-width // bx), -(-height // by), batch)
    if grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"grid {grid} exceeds CUDA's y/z limit")
    return grid, (bx, by, 1)


def launch_1d(n: int, block: int = 256, max_blocks: int = 65535 * 8) -> tuple[tuple[int, int, int],
                                                                           tuple[int, int, int]]:
    """(grid, block) for an elementwise kernel; capped grid, the kernel strides over the rest."""
    if n <= 0:
        raise ValueError("empty launch")
    return (min(-(-n // block), max_blocks), 1, 1), (block, 1, 1)


# -- memory ---------------------------------------------------------------------------------------
PINNED = "pinned"  # page-locked host staging + explicit H2D copy into device memory
MAPPED = "mapped"  # zero-copy: kernels read page-locked host memory directly (integrated GPUs)


def memory_mode(integrated: bool, can_map_host_memory: bool, override: str | None = None) -> str:
    """On an integrated GPU (Jetson) CPU and GPU share DRAM, so an H2D copy only duplicates the
    image; the resize kernels read each pixel about once, so zero-copy costs nothing there. On a
    discrete GPU mapped memory would cross PCIe on every read: stage and copy instead."""
    if override is not None:
        if override not in (PINNED, MAPPED):
            raise ValueError(f"memory mode must be {PINNED!r} or {MAPPED!r}, got {override!r}")
        if override == MAPPED and not can_map_host_memory:
            raise ValueError("this device cannot map host memory")
        return override
    return MAPPED if (integrated and can_map_host_memory) else PINNED


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Region:
    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass(frozen=True)
class BufferPlan:
    """Byte layout of one pipeline slot. ``host`` lives in page-locked host memory (the decode
    target); ``device`` in device memory. In mapped mode the native images stay in ``host`` and
    the device arena has no copy of them."""

    mode: str
    batch: int
    host: dict[str, Region]
    device: dict[str, Region]

    @property
    def host_bytes(self) -> int:
        return max((r.end for r in self.host.values()), default=0)

    @property
    def device_bytes(self) -> int:
        return max((r.end for r in self.device.values()), default=0)


def max_table_entries(max_side: int, dsize: int) -> int:
    """Upper bound on one axis' CSR entries: area uses <= ssize + 2 * dsize, linear 2 * dsize."""
    return max_side + 2 * dsize


def table_bytes(max_side: int, dsize: int) -> int:
    """Bytes of one packed axis table: start (dsize + 1 int32), idx (int32), w (float32)."""
    k = max_table_entries(max_side, dsize)
    return 4 * (dsize + 1) + 8 * k


def sort_size(n: int) -> int:
    """Power of two >= n: the bitonic sort's scratch length (tbedge_equalize)."""
    return 1 << max(0, int(n - 1).bit_length())


def plan_buffers(batch: int, max_pixels: int, max_side: int, itemsize: int, lung_size: int = 256,
                 cls_size: int = 224, mode: str = PINNED, cls_channels: int = 1, masked: bool = False) -> BufferPlan:
    """Layout for ``batch`` native images of at most ``max_pixels`` pixels (longest side
    ``max_side``) of ``itemsize`` bytes. Every region starts on a 256-byte boundary.

    Host: native images, the lung and crop tables (x then y per image), and download space for the
    mask and the heat map. Device: native images and tables (pinned mode only), the lung-model input
    (B, L, L, 1) float32, the classifier input (B, S, S, C) float32, the lung heat map and the
    thresholded mask (B, L, L) uint8.

    ``masked`` (a lung-masked classifier input, masked.py) adds, per image: the cleaned mask and the
    warp tables (host; device too in pinned mode), the box crop, the warped and dilated masks, the raw
    and clipped lung weights, the equalised crop and the sort scratch (device), and download space
    for the lung weights (host).
    """
    if batch <= 0 or max_pixels <= 0 or max_side <= 0 or itemsize not in (1, 2, 4):
        raise ValueError(f"bad buffer plan request batch={batch} pixels={max_pixels} itemsize={itemsize}")
    if mode not in (PINNED, MAPPED):
        raise ValueError(f"unknown memory mode {mode!r}")
    if max_side * max_side < max_pixels:
        raise ValueError(f"max_side {max_side} cannot hold an image of {max_pixels} pixels")
    if cls_channels not in (1, 2) or (masked and cls_channels != 2):
        raise ValueError(f"cls_channels must be 1 or 2 (2 for a masked input), got {cls_channels}")

    def layout(items: list[tuple[str, int]]) -> dict[str, Region]:
        out, pos = {}, 0
        for name, n in items:
            out[name] = Region(pos, n)
            pos = _align(pos + n)
        return out

    img = _align(max_pixels * itemsize)
    lung_tab = 2 * _align(table_bytes(max_side, lung_size))
    cls_tab = 2 * _align(table_bytes(max_side, cls_size))
    tables = [(f"lung_tables_{i}", lung_tab) for i in range(batch)] + \
             [(f"crop_tables_{i}", cls_tab) for i in range(batch)]
    images = [(f"image_{i}", img) for i in range(batch)]
    lmap, cmap = batch * lung_size * lung_size, batch * cls_size * cls_size
    # The cleaned masks and the warp tables (xi, xa, yi, ya: 4 x S values of 4 bytes) go up per batch.
    staged = [("clean_mask", lmap)] + [(f"warp_tables_{i}", 16 * cls_size) for i in range(batch)] if masked else []
    host = layout(images + tables + staged + [("mask_out", lmap), ("heat_out", 4 * lmap)]
                  + ([("weights_out", 4 * cmap)] if masked else []))
    scratch = [("crop", 4 * cmap), ("warped", cmap), ("dilated", cmap), ("wraw", 4 * cmap), ("eq", 4 * cmap),
               ("lung_weights", 4 * cmap), ("sort", batch * 4 * sort_size(cls_size * cls_size))] if masked else []
    # Mapped mode: kernels read images, tables and staged masks straight from the host arena.
    dev_items = ([] if mode == MAPPED else images + tables + staged) + [
        ("lung_input", lmap * 4),
        ("cls_input", cmap * 4 * cls_channels),
        ("heat", lmap * 4),
        ("mask", lmap),
    ] + scratch
    return BufferPlan(mode, batch, host, layout(dev_items))


def pack_tables(t: ResizeTables, dst: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Pack x and y tables into one byte buffer (for one H2D copy) and return the byte offsets of
    each array: keys x_start, x_idx, x_w, y_start, y_idx, y_w. Arrays are 4-byte aligned."""
    parts = [("x_start", t.x.start), ("x_idx", t.x.idx), ("x_w", t.x.w),
             ("y_start", t.y.start), ("y_idx", t.y.idx), ("y_w", t.y.w)]
    total = sum(a.nbytes for _, a in parts)
    buf = np.empty(total, np.uint8) if dst is None else dst
    if buf.nbytes < total:
        raise ValueError(f"table buffer holds {buf.nbytes} bytes, needs {total}")
    offs, pos = {}, 0
    for name, a in parts:
        buf[pos:pos + a.nbytes] = np.ascontiguousarray(a).view(np.uint8)
        offs[name] = pos
        pos += a.nbytes
    return buf, offs


# -- version checks -------------------------------------------------------------------------------
def check_nvrtc_driver(nvrtc_version: tuple[int, int], driver_version: int) -> None:
    """PTX from a newer NVRTC than the driver cannot be JIT-compiled by that driver
    (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). ``driver_version`` is cudaDriverGetVersion's int
    (e.g. 12060 for 12.6)."""
    drv = (driver_version // 1000, (driver_version % 1000) // 10)
    if tuple(nvrtc_version) > drv:
        raise RuntimeError(
            f"NVRTC {nvrtc_version[0]}.{nvrtc_version[1]} is newer than the CUDA driver "
            f"{drv[0]}.{drv[1]}: its PTX will not load. Install the NVRTC that matches the driver "
            f"(JetPack 6: the system CUDA 12.6 NVRTC with cuda-python 12.6.x).")
