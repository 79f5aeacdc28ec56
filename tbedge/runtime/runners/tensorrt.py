"""TensorRT runner: deserialise a plan, bind device addresses, ``execute_async_v3``.

Written for the TensorRT 10.x / 11.x name-based tensor API (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``); no
bindings API. Memory, streams and copies go through ``tbedge.runtime.gpu.device`` (cuda-python).
TensorRT and cuda-python are imported inside functions only.

UNVERIFIED: this module has not yet run on a TensorRT host (none was available while it was
written). Its pure parts (plan compatibility, profile and batch logic) are unit-tested on CPU;
the rest is exercised by tests/test_tensorrt_runner.py and tools/gpu-check.sh where TensorRT
is installed. See docs/gpu.md.

Two ways to run:

- ``infer(feed)``: the Runner protocol, numpy in and out (H2D, execute, D2H, one stream).
- ``infer_device(inputs, batch, outputs=..., stream=...)``: device addresses in and out, no host
  copies, on the caller's stream, with one execution context per stream (a context runs one
  inference at a time; the device pipeline's two slots enqueue on two streams).
  ``tbedge.runtime.device_path`` chains it for the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..plans import REBUILD_CMD, PlanCompatError, check_plan_compat
from .base import Runner, TensorSpec

# TensorRT DataType names -> numpy (by name, so no TensorRT import is needed to map them).
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
               "BOOL": "bool", "UINT8": "uint8"}


@dataclass(frozen=True)
class Profile:
    """One input's optimisation-profile range (TensorRT get_tensor_profile_shape)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def check_input_shape(name: str, shape: tuple[int, ...], engine_shape: tuple[int, ...],
                      profile: Profile | None) -> None:
    """Reject a feed the plan cannot take: wrong rank, a fixed dimension that differs, or a
    dynamic dimension outside the profile."""
    if len(shape) != len(engine_shape):
        raise ValueError(f"input {name!r}: rank {len(shape)} {tuple(shape)}, the plan expects "
                         f"{tuple(engine_shape)}")
    for i, (got, want) in enumerate(zip(shape, engine_shape, strict=True)):
        if want >= 0 and got != want:
            raise ValueError(f"input {name!r}: dimension {i} is {got}, the plan expects {want} "
                             f"(shape {tuple(engine_shape)})")
        if want < 0 and profile is not None and not profile.min[i] <= got <= profile.max[i]:
            raise ValueError(f"input {name!r}: dimension {i} is {got}, outside the plan's profile "
                             f"[{profile.min[i]}, {profile.max[i]}]")


def batch_chunks(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most max_batch: a batch larger than the profile runs in chunks."""
    if n < 0 or max_batch <= 0:
        raise ValueError(f"bad batch split n={n} max={max_batch}")
    return [(i, min(n, i + max_batch)) for i in range(0, n, max_batch)]


def resolve_shape(engine_shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """Concrete shape for a dynamic-batch tensor: -1 in dimension 0 becomes ``batch``; any other
    dynamic dimension is an error (tbedge models are dynamic in batch only)."""
    if any(d < 0 for d in engine_shape[1:]):
        raise ValueError(f"only the batch dimension may be dynamic, plan shape {tuple(engine_shape)}")
    return (batch if engine_shape[0] < 0 else engine_shape[0], *engine_shape[1:])


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_meta_for(bundle, role: str) -> dict:
    """The plan entry of a bundle role, with the plan's ONNX source checked against the bundle."""
    meta = bundle.plan(role)
    out = str(bundle.path)
    if not meta:
        raise PlanCompatError(f"bundle {out} has no TensorRT plan for {role}; rebuild with: "
                              + REBUILD_CMD.format(out=out))
    onnx_sha = meta.get("onnx_sha256")
    if onnx_sha and onnx_sha != bundle.entry(role)["sha256"]:
        raise PlanCompatError(f"{role} plan was built from another ONNX model ({onnx_sha[:12]}…); "
                              "rebuild with: " + REBUILD_CMD.format(out=out))
    return meta


# -- the runner (needs TensorRT and a GPU) -----------------------------------------------------
@dataclass
class _IO:
    name: str
    is_input: bool
    shape: tuple[int, ...]  # engine shape, -1 = dynamic
    dtype: str
    profile: Profile | None


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, plan: str | Path | bytes, name: str = "", plan_meta: dict | None = None,
                 device: int = 0, bundle_dir: str = "<dir>"):
        super().__init__(name or (Path(plan).name if not isinstance(plan, bytes) else "plan"))
        self.last_timings_ms: dict[str, float] | None = None
        self.plan = plan
        self.plan_meta = plan_meta
        self.device = device
        self.bundle_dir = bundle_dir
        self.engine = self.context = self.stream = None
        self.io: dict[str, _IO] = {}
        self._bufs: dict = {}
        self._contexts: dict[int, object] = {}  # stream address -> its execution context

    @classmethod
    def from_bundle(cls, bundle, role: str, device: int = 0) -> TensorRTRunner:
        meta = plan_meta_for(bundle, role)
        return cls(bundle.path / meta["file"], name=role, plan_meta=meta, device=device,
                   bundle_dir=str(bundle.path))

    # -- lifecycle ---------------------------------------------------------------------------
    def _activate(self) -> None:
        import tensorrt as trt

        from ..gpu import device as dv

        info = dv.init_device(self.device, want_mapped=False)
        if self.plan_meta is not None:
            check_plan_compat(self.plan_meta, trt.__version__, info.compute_capability, self.bundle_dir)
        data = self.plan if isinstance(self.plan, bytes) else Path(self.plan).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise PlanCompatError(f"TensorRT {trt.__version__} could not deserialise {self.name} (see the "
                                  "log above); rebuild with: " + REBUILD_CMD.format(out=self.bundle_dir))
        self.context = self.engine.create_execution_context()
        self.stream = dv.Stream()
        self.io = {}
        for i in range(self.engine.num_io_tensors):
            n = self.engine.get_tensor_name(i)
            is_in = self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(n))
            trt_dtype = self.engine.get_tensor_dtype(n)
            dtype = _TRT_DTYPES.get(trt_dtype.name)
            if dtype is None:
                raise TypeError(f"{self.name}: tensor {n!r} has unsupported type {trt_dtype}")
            prof = None
            if is_in and any(d < 0 for d in shape):
                mn, op, mx = self.engine.get_tensor_profile_shape(n, 0)
                prof = Profile(tuple(mn), tuple(op), tuple(mx))
            self.io[n] = _IO(n, is_in, shape, dtype, prof)

    def _deactivate(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        for b in self._bufs.values():
            b.free()
        self._bufs = {}
        if self.stream is not None:
            self.stream.destroy()
        self._contexts = {}
        self.context = self.engine = self.stream = None

    # -- metadata ----------------------------------------------------------------------------
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype)
                for t in self.io.values() if t.is_input]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype)
                for t in self.io.values() if not t.is_input]

    @property
    def max_batch(self) -> int:
        caps = [t.profile.max[0] for t in self.io.values() if t.is_input and t.profile is not None]
        fixed = [t.shape[0] for t in self.io.values() if t.is_input and t.shape[0] >= 0]
        return min(caps + fixed) if (caps or fixed) else 1

    # -- device-pointer path -------------------------------------------------------------------
    def _context(self, stream):
        """The execution context for ``stream``: the runner's own for its own stream, else one per
        caller stream, made on first use (contexts share the engine's weights)."""
        if stream is self.stream:
            return self.context
        ctx = self._contexts.get(stream.ptr)
        if ctx is None:
            ctx = self._contexts[stream.ptr] = self.engine.create_execution_context()
        return ctx

    def _buffer(self, name: str, size: int):
        from ..gpu import device as dv

        b = self._bufs.get(name)
        if b is None or b.nbytes < size:
            if b is not None:
                b.free()
            b = self._bufs[name] = dv.DeviceBuffer(size)
        return b

    def infer_device(self, inputs: dict[str, int], batch: int, outputs: dict[str, int] | None = None,
                     stream=None) -> dict[str, tuple[int, tuple[int, ...], str]]:
        """Run on device memory: ``inputs`` maps input names to device addresses holding ``batch``
        items; outputs go to the given addresses or to the runner's own buffers. Returns
        {output: (address, shape, dtype)}. Enqueued on ``stream`` (default: the runner's); nothing
        is synchronised, so the caller can chain the next stage on the same stream."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} is not active")
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the plan's maximum {self.max_batch}; split it "
                             "(batch_chunks) or rebuild with a larger profile")
        outputs = outputs or {}
        stream = stream or self.stream
        ctx = self._context(stream)
        for t in self.io.values():
            if not t.is_input:
                continue
            if t.name not in inputs:
                raise KeyError(f"{self.name}: missing input {t.name!r}")
            shape = resolve_shape(t.shape, batch)
            check_input_shape(t.name, shape, t.shape, t.profile)
            ctx.set_input_shape(t.name, shape)
            ctx.set_tensor_address(t.name, int(inputs[t.name]))
        result = {}
        for t in self.io.values():
            if t.is_input:
                continue
            shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            own = f"out:{t.name}:{stream.ptr}"  # per stream: two streams in flight never share a buffer
            addr = outputs.get(t.name) or self._buffer(own, nbytes(shape, t.dtype)).ptr
            ctx.set_tensor_address(t.name, int(addr))
            result[t.name] = (int(addr), shape, t.dtype)
        if not ctx.execute_async_v3(stream.ptr):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the TensorRT log)")
        return result

    # -- Runner protocol (numpy in and out) ------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..gpu import device as dv

        names_in = [t.name for t in self.io.values() if t.is_input]
        n = int(next(iter(feed.values())).shape[0])
        parts: dict[str, list[np.ndarray]] = {}
        # trtexec's split of one inference: H2D copy, GPU compute, D2H copy (CUDA events on the stream).
        ev = [dv.Event() for _ in range(4)]
        timings = {"h2d": 0.0, "compute": 0.0, "d2h": 0.0}
        for a, b in batch_chunks(n, self.max_batch):
            ptrs, hosts = {}, []
            ev[0].record(self.stream)
            for name in names_in:
                t = self.io[name]
                x = np.ascontiguousarray(feed[name][a:b], dtype=t.dtype)
                check_input_shape(name, x.shape, t.shape, t.profile)
                buf = self._buffer("in:" + name, x.nbytes)
                dv.copy_h2d(buf.ptr, x.ctypes.data, x.nbytes, self.stream)
                hosts.append(x)  # keep alive until the copy has run
                ptrs[name] = buf.ptr
            ev[1].record(self.stream)
            outs = self.infer_device(ptrs, b - a)
            ev[2].record(self.stream)
            got = {}
            for name, (addr, shape, dtype) in outs.items():
                host = np.empty(shape, dtype)
                dv.copy_d2h(host.ctypes.data, addr, host.nbytes, self.stream)
                got[name] = host
            ev[3].record(self.stream)
            self.stream.synchronize()
            timings["h2d"] += ev[1].elapsed_ms(ev[0])
            timings["compute"] += ev[2].elapsed_ms(ev[1])
            timings["d2h"] += ev[3].elapsed_ms(ev[2])
            for name, arr in got.items():
                parts.setdefault(name, []).append(arr)
        for e in ev:
            e.destroy()
        self.last_timings_ms = timings  # read by tbedge bench (model_only.device_ms)
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}


# -- entrypoint helper ---------------------------------------------------------------------------
def plans_ok(bundle_dir: str | Path) -> tuple[bool, str]:
    """Whether a bundle's plans exist, verify, and fit this host's TensorRT and GPU (used by the
    container entrypoint to decide whether to rebuild them)."""
    from ..bundle import ROLES, BundleError, load_bundle

    try:
        b = load_bundle(bundle_dir)
        metas = [plan_meta_for(b, r) for r in ROLES]
        import tensorrt as trt

        from ..gpu import device as dv

        ok, why = dv.gpu_available()
        if not ok:
            return False, why
        cc = dv.device_info(0).compute_capability
        for m in metas:
            check_plan_compat(m, trt.__version__, cc, str(bundle_dir))
    except (BundleError, PlanCompatError, ImportError, OSError, KeyError) as e:
        return False, str(e)
    return True, f"plans fit TensorRT {trt.__version__} on compute capability {cc}"
