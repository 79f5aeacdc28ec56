"""The TensorRT backend's memory path: a film goes to the GPU once and only numbers come back.

    film (host) -> page-locked slot arena --H2D once (mapped: none)--> resize to the lung input
      -> lungs engine -> heat map --D2H (L x L float32)--> clean, QA and box on the host (lungs.analyse)
      -> cleaned mask + tables --H2D--> box crop [-> mask warp, dilation, feathering, equalisation,
         blend: the lung-masked input, gpu/masked.py] -> classifier engine
      --D2H--> probabilities, CAM and the lung weights (overlays)

Mask cleaning stays on the host, and the one download between the models is the lung model's heat
map (256 KB for 256 x 256): QA needs heat values under the *cleaned* mask (confidence) and the
uncertain band, so a thresholded 64 KB mask would need a second round trip before the crop box is
known; cleaning itself (connected components, hole filling, open/close, ~0.1-0.3 ms on the CPU for
256 x 256) has no cheap exact GPU form. Only the cleaned mask (64 KB) goes back up.

Two slots (``GpuPreprocessor``), each with its own stream, arenas and TensorRT execution contexts:
``Pipeline`` stages batch n + 1 in one slot (host copy, upload, resize, lungs engine, cleaning on the
host) while the GPU runs batch n's classifier in the other, and decoding runs in its thread pool
throughout (stream waits release the GIL).

Each runner's ``infer_device`` binds device addresses (TensorRT: ``set_tensor_address``); runners
without device binding do a host round trip there (``Runner.infer_device``), which is how the path is
checked on a GPU without TensorRT and, with CUDA itself replaced by a CPU stand-in, in the tests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Pipeline stage -> trtexec's words -> the CUDA-event brackets (GpuPreprocessor.mark) that make it.
DEVICE_STAGES = {
    "preprocess": {"h2d": ("h2d",), "compute": ("resize",)},
    "segment": {"compute": ("lungs",), "d2h": ("heat_d2h",)},
    "clean_crop": {"h2d": ("crop_h2d",), "compute": ("crop",)},
    "classify": {"compute": ("classifier",), "d2h": ("out_d2h",)},
}
INITIAL_PIXELS = 1024 * 1024  # slots grow to the largest film they are given


@dataclass
class DeviceBatch:
    """One batch in flight in one slot."""

    slot: int
    n: int
    classified: bool = False
    shapes: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)


class _Outputs:
    """A slot's classifier outputs: device buffers the engine writes and page-locked host copies."""

    def __init__(self, specs, batch: int):
        from .gpu import device as dv

        self.per_item: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for s in specs:
            dims = tuple(s.shape[1:])
            if not all(isinstance(d, int) and d > 0 for d in dims):
                raise ValueError(f"classifier output {s.name!r} has dynamic dimensions {s.shape}")
            self.per_item[s.name] = (dims, np.dtype(s.dtype))
        size = {k: batch * int(np.prod(d)) * t.itemsize for k, (d, t) in self.per_item.items()}
        self.dev = {k: dv.DeviceBuffer(n) for k, n in size.items()}
        self.host = {k: dv.HostBuffer(n) for k, n in size.items()}

    def free(self) -> None:
        for b in (*self.dev.values(), *self.host.values()):
            b.free()


class DevicePath:
    """The GPU side of ``Pipeline`` for one bundle: ``submit`` -> ``heats`` -> ``classify`` -> ``collect``."""

    def __init__(self, bundle, runners: dict, batch: int, memory: str | None = None, device: int = 0):
        from .gpu.preprocess import GpuPreprocessor

        self.runners, self.batch = runners, batch
        self.lung_in = bundle.entry("lungs")["input"]["name"]
        self.lung_out = bundle.entry("lungs").get("outputs", ["mask"])[0]
        self.classify_on = "classifier" in runners
        prep = bundle.crop_prep if self.classify_on else "box"
        cls_size = bundle.input_size("classifier") if self.classify_on else 224
        self.gp = GpuPreprocessor(max_pixels=INITIAL_PIXELS, max_side=1024, batch=batch, itemsize=4,
                                  lung_size=bundle.input_size("lungs"), cls_size=cls_size, n_slots=2,
                                  device=device, memory=memory, crop_prep=prep)
        self.outs: list[_Outputs] = []
        try:
            for role, r in runners.items():  # the kernels write the inputs and read the heat map as float32
                io = r.inputs() + (r.outputs() if role == "lungs" else [])
                bad = [f"{t.name} {t.dtype}" for t in io if t.dtype != "float32"]
                if bad:
                    raise ValueError(f"the {role} engine takes {', '.join(bad)}; the device path feeds float32")
            if self.classify_on:
                self.cls_in = bundle.entry("classifier")["input"]["name"]
                if bundle.input_channels("classifier") != self.gp.cls_channels:
                    raise ValueError(f"the classifier takes {bundle.input_channels('classifier')} channels, "
                                     f"crop prep {prep!r} makes {self.gp.cls_channels}")
                self.outs = [_Outputs(runners["classifier"].outputs(), batch) for _ in self.gp.slots]
        except BaseException:
            self.close()
            raise
        self.timings: deque[dict] = deque(maxlen=4096)  # per batch: {stage: {h2d|compute|d2h: ms}}

    def close(self) -> None:
        for o in self.outs:
            o.free()
        self.outs = []
        if self.gp is not None:
            self.gp.close()
            self.gp = None

    # -- one batch ---------------------------------------------------------------------------------
    def submit(self, slot: int, images: list[np.ndarray]) -> DeviceBatch:
        """Films (float32 (H, W)) -> slot: upload, resize, lungs engine, heat download, all enqueued."""
        gp, n = self.gp, len(images)
        gp.stage_batch(slot, images)
        gp.mark(slot, "lungs", True)
        self.runners["lungs"].infer_device({self.lung_in: gp.lung_input_ptr(slot)}, n,
                                           outputs={self.lung_out: gp.heat_ptr(slot)}, stream=gp.stream(slot))
        gp.mark(slot, "lungs", False)
        gp.download_heat(slot, n)
        return DeviceBatch(slot % len(gp.slots), n)

    def heats(self, b: DeviceBatch) -> np.ndarray:
        """(n, L, L) heat maps on the host (waits for them)."""
        return self.gp.host_heat(b.slot, b.n)

    def crop(self, b: DeviceBatch, jobs: list) -> None:
        """Enqueue the classifier inputs: ``jobs[k] = (box, cleaned mask or None for a fallback box)``,
        or None for an image that failed on the host."""
        self.gp.crop_batch(b.slot, jobs)

    def classify(self, b: DeviceBatch) -> None:
        """Enqueue the classifier engine on the slot's inputs and the downloads of its outputs."""
        gp, out, stream = self.gp, self.outs[b.slot], self.gp.stream(b.slot)
        from .gpu import device as dv

        gp.mark(b.slot, "classifier", True)
        got = self.runners["classifier"].infer_device({self.cls_in: gp.cls_input_ptr(b.slot)}, b.n,
                                                      outputs={k: v.ptr for k, v in out.dev.items()}, stream=stream)
        gp.mark(b.slot, "classifier", False)
        gp.mark(b.slot, "out_d2h", True)
        for name, (addr, shape, dtype) in got.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            dv.copy_d2h(out.host[name].ptr, addr, nbytes, stream)
            b.shapes[name] = (tuple(shape), dtype)
        if gp.masked:
            gp.download_weights(b.slot, b.n)
        gp.mark(b.slot, "out_d2h", False)
        b.classified = True

    def collect(self, b: DeviceBatch) -> list[dict[str, np.ndarray]] | None:
        """Wait for the batch; per image {output name: array, "lung_weights": (S, S) or absent}, or None
        when it was not classified. Records the batch's device times."""
        gp = self.gp
        gp.stream(b.slot).synchronize()
        self._record(b)
        if not b.classified:
            return None
        out = self.outs[b.slot]
        arrays = {k: out.host[k].view(0, dt, shape).copy() for k, (shape, dt) in b.shapes.items()}
        if gp.masked:
            arrays["lung_weights"] = gp.host_weights(b.slot, b.n)
        return [{k: v[i] for k, v in arrays.items()} for i in range(b.n)]

    def _record(self, b: DeviceBatch) -> None:
        ran = {"h2d", "resize", "lungs", "heat_d2h"} | (
            {"crop_h2d", "crop", "classifier", "out_d2h"} if b.classified else set())
        t = self.gp.timings(b.slot, ran)
        rec = {}
        for stage, kinds in DEVICE_STAGES.items():
            got = {kind: sum(t[m] for m in marks if m in t) for kind, marks in kinds.items()
                   if any(m in t for m in marks)}
            if got:
                rec[stage] = got
        self.timings.append(rec)


def summarise(timings) -> dict[str, dict[str, list[float]]]:
    """Per-batch device times -> {stage: {h2d|compute|d2h: [ms per batch]}} (for tbedge bench)."""
    out: dict[str, dict[str, list[float]]] = {}
    for t in timings:
        for stage, kinds in t.items():
            for kind, ms in kinds.items():
                out.setdefault(stage, {}).setdefault(kind, []).append(ms)
    return out
