"""GpuPreprocessor: native image -> lung-model input, heat -> mask, ROI crop -> classifier input,
CAM -> overlay size, on the GPU, double-buffered.

Each slot owns a stream, a page-locked host arena (the decoder writes straight into it) and a
device arena laid out by :func:`plan.plan_buffers`. While the GPU works on slot N, the CPU decodes
image N+1 into slot N+1's host arena; ``host_image`` waits only for *that* slot's previous work.

    with GpuPreprocessor(max_pixels=4096 * 4096) as gp:
        px = gp.host_image(slot=0, k=0, shape=raw.shape, dtype=raw.dtype); px[:] = raw   # or decode into px
        gp.submit(slot=0, k=0)                    # H2D (pinned) + area resize into lung_input
        lung_ptr = gp.lung_input_ptr(0)           # feed TensorRT directly, or gp.lung_input(0) for ORT
        ...                                       # lung model writes gp.heat_ptr(0)
        mask = gp.mask(0)                         # threshold on the GPU, 64 KB download
        gp.crop(0, 0, box)                        # area crop from the full-res device image
        cls_ptr = gp.cls_input_ptr(0)

Connected-component cleaning stays on the CPU (``lungs.clean`` on the 256x256 mask): it is ~0.1 ms
there, the mask is 64 KB, and a GPU labelling pass would cost more in launches than it saves.

The pipeline (``tbedge.runtime.device_path``) uses the batch entry points: ``stage_batch`` (films in,
H2D, resize), ``download_heat`` / ``host_heat``, ``crop_batch`` (box crop, and for a lung-masked
classifier the mask warp, dilation, feathering, equalisation and blend of masked.py) and
``download_weights`` / ``host_weights``. They wait only at the start of a batch, for the slot's
previous batch; slots grow (``reserve``) to the largest film they have been given.

Verified only on hosts with a GPU (tests/test_cuda_kernels.py, tools/gpu-check.sh).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import device as dv
from . import masked as MK
from .compile import BLEND_SIG, DILATE_SIG, EQUALIZE_SIG, RESIZE_SIG, WARP_SIG
from .plan import (
    LINEAR,
    MAPPED,
    PINNED,
    BufferPlan,
    launch_1d,
    launch_2d,
    pack_tables,
    pixel_type,
    plan_buffers,
    resize_tables,
    sort_size,
    value_map,
)

LUNG_INPUT = 256
HEAT_THRESHOLD = 0.5


@dataclass
class _Staged:
    shape: tuple[int, int]
    dtype: np.dtype
    scale: float
    offset: float


class _Slot:
    def __init__(self, plan: BufferPlan, mapped: bool, max_pixels: int, max_side: int):
        self.plan = plan
        self.max_pixels, self.max_side = max_pixels, max_side
        self.mapped = mapped
        self.host = dv.HostBuffer(plan.host_bytes, mapped=mapped)
        self.dev = dv.DeviceBuffer(plan.device_bytes)
        self.stream = dv.Stream()
        self.released = dv.Event(timing=False)  # end of all work enqueued so far
        self.marks: dict[str, tuple[dv.Event, dv.Event]] = {}
        self.staged: dict[int, _Staged] = {}
        self.released.record(self.stream)

    def hptr(self, region: str) -> int:
        return self.host.ptr + self.plan.host[region].offset

    def dptr(self, region: str) -> int:
        """Device address of a region: in the device arena, or the mapped host arena."""
        if region in self.plan.device:
            return self.dev.ptr + self.plan.device[region].offset
        if self.host.mapped and region in self.plan.host:
            return self.host.device_ptr + self.plan.host[region].offset
        raise KeyError(region)

    def grow(self, plan: BufferPlan, max_pixels: int, max_side: int) -> None:
        """New arenas for a bigger plan, once the slot's work is done; the stream and events stay (an
        engine keeps its execution context for the stream)."""
        self.stream.synchronize()
        self.dev.free()
        self.host.free()
        self.plan, self.max_pixels, self.max_side = plan, max_pixels, max_side
        self.host = dv.HostBuffer(plan.host_bytes, mapped=self.mapped)
        self.dev = dv.DeviceBuffer(plan.device_bytes)
        self.staged.clear()

    def mark(self, stage: str, start: bool) -> None:
        if stage not in self.marks:
            self.marks[stage] = (dv.Event(), dv.Event())
        self.marks[stage][0 if start else 1].record(self.stream)

    def free(self) -> None:
        for a, b in self.marks.values():
            a.destroy()
            b.destroy()
        self.released.destroy()
        self.stream.destroy()
        self.dev.free()
        self.host.free()


class GpuPreprocessor:
    """Holds the device, the compiled kernels and ``n_slots`` buffer slots (2 = double buffering)."""

    def __init__(self, max_pixels: int = 4096 * 5120, max_side: int = 5120, batch: int = 1,
                 itemsize: int = 2, lung_size: int = LUNG_INPUT, cls_size: int = 224, n_slots: int = 2,
                 device: int = 0, memory: str | None = None, crop_prep: str = "box"):
        self.info = dv.init_device(device)
        self.mode = dv.choose_memory_mode(self.info, memory)
        self.batch, self.lung_size, self.cls_size = batch, lung_size, cls_size
        self.max_pixels, self.max_side, self.itemsize = max_pixels, max_side, itemsize
        self.crop_prep = crop_prep  # lungs.CROP_PREPS: "box" crops only; the others add the lung weights
        self.masked = crop_prep != "box"
        self.cls_channels = 2 if self.masked else 1
        self.plan = self._plan(max_pixels, max_side)
        self.module = dv.load_kernels(self.info)
        self.slots = [_Slot(self.plan, self.mode == MAPPED, max_pixels, max_side) for _ in range(n_slots)]
        self._heat_buf: dv.DeviceBuffer | None = None
        self._heat_in: dv.DeviceBuffer | None = None
        self._consts = self._upload_constants() if self.masked else None

    def _plan(self, max_pixels: int, max_side: int) -> BufferPlan:
        return plan_buffers(self.batch, max_pixels, max_side, self.itemsize, self.lung_size, self.cls_size,
                            self.mode, self.cls_channels, self.masked)

    def _upload_constants(self) -> dv.DeviceBuffer:
        """The masked crop's fixed tables, uploaded once: the Gaussian's CSR tables and the disc's rows.
        Also asks this host's OpenCV how warpAffine rounds (masked.warp_rule), once."""
        r = MK.dilate_radius(self.cls_size)
        packed, offs = pack_tables(MK.blur_tables(self.cls_size, r))
        half = MK.disc_rows(r)
        self._radius, self._warp_rule = r, MK.warp_rule(self.cls_size)
        self._blur_offs, self._half_off = offs, packed.nbytes
        buf = dv.DeviceBuffer(packed.nbytes + half.nbytes)
        dv.upload(buf.ptr, np.concatenate([packed, half.view(np.uint8)]))
        return buf

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        for s in self.slots:
            s.stream.synchronize()
            s.free()
        self.slots = []
        for b in (self._heat_buf, self._heat_in, self._consts):
            if b is not None:
                b.free()
        self.module.unload()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _slot(self, slot: int) -> _Slot:
        return self.slots[slot % len(self.slots)]

    def _check_k(self, k: int) -> None:
        if not 0 <= k < self.batch:
            raise IndexError(f"image index {k} outside batch {self.batch}")

    # -- stage 1: native image -> lung input -------------------------------------------------
    def host_image(self, slot: int, k: int, shape: tuple[int, int], dtype) -> np.ndarray:
        """A writable page-locked (H, W) array for image k of the slot; waits for the slot's
        previous work first, so writing never races a pending copy or kernel."""
        self._check_k(k)
        s = self._slot(slot)
        dt = np.dtype(dtype)
        pixel_type(dt)
        h, w = shape
        if h * w * dt.itemsize > s.plan.host[f"image_{k}"].nbytes or max(h, w) > s.max_side:
            raise ValueError(f"image {w}x{h} {dt} exceeds the planned {s.max_pixels} px x "
                             f"{self.itemsize} B (max side {s.max_side})")
        s.released.synchronize()
        return s.host.view(s.plan.host[f"image_{k}"].offset, dt, (h, w))

    def put(self, slot: int, k: int, image: np.ndarray, scale: float | None = None,
            offset: float | None = None) -> None:
        """Copy a decoded (H, W) image into the slot and submit it."""
        self.host_image(slot, k, image.shape, image.dtype)[:] = image
        self.submit(slot, k, image.shape, image.dtype, scale, offset)

    def submit(self, slot: int, k: int, shape: tuple[int, int] | None = None, dtype=None,
               scale: float | None = None, offset: float | None = None) -> None:
        """Enqueue image k (already in host_image) -> float32 [0, 1] (L, L) in lung_input[k].
        Pixel values map as v * scale + offset (default: full range of the dtype -> [0, 1])."""
        self._check_k(k)
        s = self._slot(slot)
        if shape is None or dtype is None:
            raise ValueError("submit needs the shape and dtype passed to host_image")
        dt = np.dtype(dtype)
        if scale is None or offset is None:
            scale, offset = value_map(dt)
        h, w = shape
        s.released.synchronize()  # the host table region may still feed an earlier copy
        st = _Staged((h, w), dt, float(scale), float(offset))
        s.staged[k] = st
        s.mark("h2d", True)
        if self.mode == PINNED:
            dv.copy_h2d(s.dptr(f"image_{k}"), s.hptr(f"image_{k}"), h * w * dt.itemsize, s.stream)
        s.mark("h2d", False)
        s.mark("resize", True)
        out = s.dptr("lung_input") + k * self.lung_size * self.lung_size * 4
        self._resize(s, k, f"lung_tables_{k}", resize_tables((h, w), self.lung_size), out, st)
        s.mark("resize", False)
        s.released.record(s.stream)

    def _resize(self, s: _Slot, k: int, table_region: str, t, out_ptr: int, st: _Staged) -> None:
        offs, nbytes = self._pack(s, table_region, t)
        if self.mode == PINNED:
            dv.copy_h2d(s.dptr(table_region), s.hptr(table_region), nbytes, s.stream)
        self._launch_resize(s, s.dptr(f"image_{k}"), st, t, s.dptr(table_region), offs, out_ptr)

    def _pack(self, s: _Slot, table_region: str, t) -> tuple[dict[str, int], int]:
        """Tables into the slot's host region: (byte offsets, bytes used)."""
        host_tab = s.host.view(s.plan.host[table_region].offset, np.uint8, (s.plan.host[table_region].nbytes,))
        _, offs = pack_tables(t, host_tab)
        return offs, max(offs.values()) + t.y.w.nbytes

    def _launch_resize(self, s: _Slot, src: int, st: _Staged, t, tab: int, offs: dict[str, int],
                       out_ptr: int) -> None:
        dw, dh = t.out_wh
        grid, block = launch_2d(dw, dh)
        self.module.launch(f"tbedge_resize_{pixel_type(st.dtype)}", grid, block, s.stream, RESIZE_SIG,
                           src, st.shape[1], t.box[0], t.box[1],
                           tab + offs["x_start"], tab + offs["x_idx"], tab + offs["x_w"],
                           tab + offs["y_start"], tab + offs["y_idx"], tab + offs["y_w"],
                           out_ptr, dw, dh, st.scale, st.offset)

    def lung_input_ptr(self, slot: int) -> int:
        return self._slot(slot).dptr("lung_input")

    def lung_input(self, slot: int, n: int | None = None) -> np.ndarray:
        """(n, L, L, 1) float32, downloaded (for ONNX Runtime or tests)."""
        s, n = self._slot(slot), n or self.batch
        return dv.download(s.dptr("lung_input"), np.float32, (n, self.lung_size, self.lung_size, 1), s.stream)

    # -- stage 2: heat map -> mask ------------------------------------------------------------
    def heat_ptr(self, slot: int) -> int:
        """Where the lung model should write its (B, L, L, 1) float32 output."""
        return self._slot(slot).dptr("heat")

    def mask(self, slot: int, n: int | None = None, heat: np.ndarray | None = None,
             thr: float = HEAT_THRESHOLD) -> np.ndarray:
        """Threshold the slot's heat map (or ``heat`` uploaded first) -> (n, L, L) uint8 on the host."""
        s, n = self._slot(slot), n or self.batch
        count = n * self.lung_size * self.lung_size
        if heat is not None:
            h = np.ascontiguousarray(heat, np.float32).reshape(-1)
            if h.size != count:
                raise ValueError(f"heat has {h.size} values, expected {count}")
            s.stream.synchronize()
            dv.upload(s.dptr("heat"), h)
        s.mark("threshold", True)
        grid, block = launch_1d(count)
        self.module.launch("tbedge_threshold", grid, block, s.stream, "ppqf", s.dptr("heat"), s.dptr("mask"),
                           count, thr)
        dv.copy_d2h(s.hptr("mask_out"), s.dptr("mask"), count, s.stream)
        s.mark("threshold", False)
        s.released.record(s.stream)
        s.stream.synchronize()
        shape = (n, self.lung_size, self.lung_size)
        return s.host.view(s.plan.host["mask_out"].offset, np.uint8, shape).copy()

    # -- stage 3: ROI crop -> classifier input ------------------------------------------------
    def crop(self, slot: int, k: int, box: tuple[int, int, int, int]) -> None:
        """Enqueue native box (x0, y0, x1, y1 exclusive) of image k -> (S, S) float32 in cls_input[k],
        area when shrinking, linear otherwise (as lungs.crop)."""
        self._check_k(k)
        if self.masked:
            raise RuntimeError("a lung-masked input needs the cleaned mask: use crop_batch")
        s = self._slot(slot)
        st = s.staged.get(k)
        if st is None:
            raise RuntimeError(f"image {k} of slot {slot} was not submitted")
        s.released.synchronize()  # the host table region may still feed an earlier copy
        s.mark("crop", True)
        out = s.dptr("cls_input") + k * self.cls_size * self.cls_size * 4
        self._resize(s, k, f"crop_tables_{k}", resize_tables(st.shape, self.cls_size, box), out, st)
        s.mark("crop", False)
        s.released.record(s.stream)

    def cls_input_ptr(self, slot: int) -> int:
        return self._slot(slot).dptr("cls_input")

    def cls_input(self, slot: int, n: int | None = None) -> np.ndarray:
        s, n = self._slot(slot), n or self.batch
        shape = (n, self.cls_size, self.cls_size, self.cls_channels)
        return dv.download(s.dptr("cls_input"), np.float32, shape, s.stream)

    # -- stage 4: CAM -> overlay size ----------------------------------------------------------
    def resize_heat(self, cam: np.ndarray, out_wh: tuple[int, int], slot: int = 0) -> np.ndarray:
        """Bilinear (cv2 INTER_LINEAR) resize of a small (h, w) float map to out_wh, for overlays."""
        s = self._slot(slot)
        cam = np.ascontiguousarray(cam, np.float32)
        if cam.ndim != 2:
            raise ValueError(f"cam must be (h, w), got {cam.shape}")
        w, h = out_wh
        self._heat_in = _grow(self._heat_in, cam.nbytes)
        self._heat_buf = _grow(self._heat_buf, w * h * 4)
        t = resize_tables(cam.shape, (w, h), mode=LINEAR)
        packed, offs = pack_tables(t)
        tab = _grow(None, packed.nbytes)
        try:
            s.stream.synchronize()
            dv.upload(self._heat_in.ptr, cam)
            dv.upload(tab.ptr, packed)
            grid, block = launch_2d(w, h)
            self.module.launch("tbedge_resize_f32", grid, block, s.stream, RESIZE_SIG,
                               self._heat_in.ptr, cam.shape[1], 0, 0,
                               tab.ptr + offs["x_start"], tab.ptr + offs["x_idx"], tab.ptr + offs["x_w"],
                               tab.ptr + offs["y_start"], tab.ptr + offs["y_idx"], tab.ptr + offs["y_w"],
                               self._heat_buf.ptr, w, h, 1.0, 0.0)
            return dv.download(self._heat_buf.ptr, np.float32, (h, w), s.stream)
        finally:
            s.stream.synchronize()
            tab.free()

    # -- the pipeline's batch entry points -----------------------------------------------------
    def stream(self, slot: int) -> dv.Stream:
        return self._slot(slot).stream

    def mark(self, slot: int, stage: str, start: bool) -> None:
        """Bracket work enqueued on the slot's stream (an engine, a copy) as ``stage`` for ``timings``."""
        self._slot(slot).mark(stage, start)

    def reserve(self, slot: int, max_pixels: int, max_side: int) -> None:
        """Grow the slot to films of ``max_pixels`` (longest side ``max_side``) once its previous work is
        done; the other slot, perhaps in flight, is untouched. Never shrinks."""
        s = self._slot(slot)
        if max_pixels <= s.max_pixels and max_side <= s.max_side:
            return
        px, side = max(max_pixels, s.max_pixels), max(max_side, s.max_side)
        s.grow(self._plan(px, side), px, side)

    def stage_batch(self, slot: int, images: list[np.ndarray]) -> None:
        """Films (H, W) -> lung_input[0..n): each is copied into the slot's page-locked arena, uploaded
        once (pinned mode; mapped mode reads it in place) and resized there (area/linear, as
        lungs.preprocess). Waits only for the slot's previous batch, at the start."""
        if not 0 < len(images) <= self.batch:
            raise ValueError(f"{len(images)} images for a batch of {self.batch}")
        for a in images:
            pixel_type(a.dtype)  # raises for a type the kernels do not read
            if a.dtype.itemsize > self.itemsize:
                raise ValueError(f"{a.dtype} pixels exceed the planned {self.itemsize} bytes")
        self.reserve(slot, max(a.size for a in images), max(max(a.shape) for a in images))
        s = self._slot(slot)
        s.released.synchronize()
        jobs = []
        for k, img in enumerate(images):
            st = _Staged(img.shape, img.dtype, *value_map(img.dtype))
            s.host.view(s.plan.host[f"image_{k}"].offset, img.dtype, img.shape)[:] = img
            t = resize_tables(img.shape, self.lung_size)
            s.staged[k] = st
            jobs.append((k, st, t, *self._pack(s, f"lung_tables_{k}", t)))
        s.mark("h2d", True)
        if self.mode == PINNED:
            for k, st, _, _, nbytes in jobs:
                dv.copy_h2d(s.dptr(f"image_{k}"), s.hptr(f"image_{k}"), st.shape[0] * st.shape[1] * st.dtype.itemsize,
                            s.stream)
                dv.copy_h2d(s.dptr(f"lung_tables_{k}"), s.hptr(f"lung_tables_{k}"), nbytes, s.stream)
        s.mark("h2d", False)
        s.mark("resize", True)
        for k, st, t, offs, _ in jobs:
            out = s.dptr("lung_input") + k * self.lung_size * self.lung_size * 4
            self._launch_resize(s, s.dptr(f"image_{k}"), st, t, s.dptr(f"lung_tables_{k}"), offs, out)
        s.mark("resize", False)
        s.released.record(s.stream)

    def download_heat(self, slot: int, n: int) -> None:
        """Enqueue the lung model's (n, L, L, 1) output -> the slot's host arena (read with host_heat)."""
        self._download(slot, "heat_d2h", "heat", "heat_out", n, self.lung_size)

    def host_heat(self, slot: int, n: int) -> np.ndarray:
        """(n, L, L) float32 copy of the downloaded heat map; waits for the slot's stream first."""
        return self._host_copy(slot, "heat_out", n, self.lung_size)

    def _download(self, slot: int, stage: str, dev: str, host: str, n: int, side: int) -> None:
        """Enqueue (n, side, side) float32 from device region ``dev`` -> host region ``host``, marked ``stage``."""
        s = self._slot(slot)
        s.mark(stage, True)
        dv.copy_d2h(s.hptr(host), s.dptr(dev), n * side * side * 4, s.stream)
        s.mark(stage, False)

    def _host_copy(self, slot: int, host: str, n: int, side: int) -> np.ndarray:
        s = self._slot(slot)
        s.stream.synchronize()
        return s.host.view(s.plan.host[host].offset, np.float32, (n, side, side)).copy()

    def crop_batch(self, slot: int, jobs: list) -> None:
        """Enqueue classifier input k for each ``jobs[k] = (box, mask)``: ``box`` in native pixels,
        ``mask`` the cleaned (L, L) uint8 mask, or None for a fallback box (weights 1, no masking);
        ``jobs[k] = None`` leaves input k alone (an image that failed before this stage). Box crops
        go straight to cls_input; masked preps build the input and the lung weights (masked.py)."""
        s = self._slot(slot)
        L, todo = self.lung_size, []
        for k, job in enumerate(jobs):
            if job is None:
                continue
            box, mask = job
            st = s.staged.get(k)
            if st is None:
                raise RuntimeError(f"image {k} of slot {slot} was not staged")
            t = resize_tables(st.shape, self.cls_size, box)
            has_mask = self.masked and mask is not None
            if has_mask:
                if mask.shape != (L, L):
                    raise ValueError(f"mask {mask.shape} is not the lung model's {L}x{L} grid")
                s.host.view(s.plan.host["clean_mask"].offset + k * L * L, np.uint8, (L, L))[:] = mask
                w = MK.warp_tables(box, mask.shape, st.shape, self.cls_size, self._warp_rule).pack()
                s.host.view(s.plan.host[f"warp_tables_{k}"].offset, np.uint8, (w.nbytes,))[:] = w
            todo.append((k, st, t, *self._pack(s, f"crop_tables_{k}", t), has_mask))
        s.mark("crop_h2d", True)
        if self.mode == PINNED:
            for k, _, _, _, nbytes, has_mask in todo:
                regions = [(f"crop_tables_{k}", 0, nbytes)]
                if has_mask:
                    regions += [("clean_mask", k * L * L, L * L), (f"warp_tables_{k}", 0, 16 * self.cls_size)]
                for r, off, nb in regions:
                    dv.copy_h2d(s.dptr(r) + off, s.hptr(r) + off, nb, s.stream)
        s.mark("crop_h2d", False)
        s.mark("crop", True)
        for k, st, t, offs, _, has_mask in todo:
            self._crop_one(s, k, st, t, offs, has_mask)
        s.mark("crop", False)
        s.released.record(s.stream)

    def _crop_one(self, s: _Slot, k: int, st: _Staged, t, offs: dict[str, int], has_mask: bool) -> None:
        S, L = self.cls_size, self.lung_size
        n = S * S
        image, tables = s.dptr(f"image_{k}"), s.dptr(f"crop_tables_{k}")
        if not self.masked:
            self._launch_resize(s, image, st, t, tables, offs, s.dptr("cls_input") + k * n * 4)
            return
        crop, wraw = s.dptr("crop") + k * n * 4, s.dptr("wraw") + k * n * 4
        self._launch_resize(s, image, st, t, tables, offs, crop)
        if has_mask:  # mask -> crop grid -> dilated -> feathered (raw weights)
            grid, block = launch_2d(S, S)
            tab, warped, dilated = s.dptr(f"warp_tables_{k}"), s.dptr("warped") + k * n, s.dptr("dilated") + k * n
            self.module.launch("tbedge_mask_warp", grid, block, s.stream, WARP_SIG, s.dptr("clean_mask") + k * L * L,
                               L, L, tab, tab + 4 * S, tab + 8 * S, tab + 12 * S, warped, S, S)
            self.module.launch("tbedge_dilate", grid, block, s.stream, DILATE_SIG, warped, dilated, S, S,
                               self._consts.ptr + self._half_off, self._radius)
            blur = MK.blur_tables(S, self._radius)
            self._launch_resize(s, dilated, _Staged((S, S), np.dtype(np.uint8), 1.0, 0.0), blur, self._consts.ptr,
                                self._blur_offs, wraw)
        all_inside = 0 if has_mask else 1  # a fallback box: weights 1, wraw is not read
        one = ((1, 1, 1), (1024, 1, 1))  # one block per crop: the kernels reduce over it
        if self.crop_prep == "masked_eq":
            n2 = sort_size(n)
            eq = s.dptr("eq") + k * n * 4
            self.module.launch("tbedge_equalize", *one, s.stream, EQUALIZE_SIG, crop, wraw, all_inside,
                               s.dptr("sort") + k * n2 * 4, eq, n, n2)
            crop = eq
        self.module.launch("tbedge_mask_blend", *one, s.stream, BLEND_SIG, crop, wraw, all_inside,
                           s.dptr("cls_input") + k * n * 4 * 2, s.dptr("lung_weights") + k * n * 4, n)

    def download_weights(self, slot: int, n: int) -> None:
        """Enqueue the (n, S, S) lung weights of a masked input -> the slot's host arena (overlays)."""
        self._download(slot, "weights_d2h", "lung_weights", "weights_out", n, self.cls_size)

    def host_weights(self, slot: int, n: int) -> np.ndarray:
        return self._host_copy(slot, "weights_out", n, self.cls_size)

    # -- timing ---------------------------------------------------------------------------------
    def timings(self, slot: int, stages=None) -> dict[str, float]:
        """Milliseconds per stage of the slot's last run (waits for the slot); only ``stages`` if given."""
        s = self._slot(slot)
        s.stream.synchronize()
        return {k: round(b.elapsed_ms(a), 4) for k, (a, b) in s.marks.items() if stages is None or k in stages}


def _grow(buf: dv.DeviceBuffer | None, nbytes: int) -> dv.DeviceBuffer:
    if buf is not None and buf.nbytes >= nbytes:
        return buf
    if buf is not None:
        buf.free()
    return dv.DeviceBuffer(nbytes)
