"""The one Runner protocol every inference backend implements.

A runner holds a loaded model (a resource), so it is a context manager: ``activate`` on enter,
``deactivate`` on exit. ``infer`` takes and returns plain dicts of numpy arrays keyed by the
model's tensor names; nothing backend-specific leaks out. Modelled on Polygraphy's runners.
``infer_device`` is the same on device memory (the TensorRT pipeline keeps films on the GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


class RunnerUnavailable(RuntimeError):
    """The backend as a whole cannot answer (a model server gone, after the runner's own retries).

    Not the inputs' fault: the pipeline fails the whole batch with it at once instead of retrying its
    items one by one, and every film of the batch gets its stage's ``error_*`` result."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # None or a string for dynamic dimensions
    dtype: str  # numpy dtype name


class Runner:
    """Base class: subclasses implement ``_activate``, ``_deactivate`` and ``_infer``."""

    backend = "base"

    def __init__(self, name: str = ""):
        self.name = name
        self.is_active = False
        self.last_inference_ms: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
        return False

    # -- inference -------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} is not active (use it as a context manager)")
        missing = {s.name for s in self.inputs()} - set(feed)
        if missing:
            raise KeyError(f"runner {self.name!r} missing inputs: {sorted(missing)}")
        t0 = time.perf_counter()
        out = self._infer(feed)
        self.last_inference_ms = (time.perf_counter() - t0) * 1e3
        return out

    def infer_device(self, inputs: dict[str, int], batch: int, outputs: dict[str, int] | None = None,
                     stream=None) -> dict[str, tuple[int, tuple[int, ...], str]]:
        """Device memory in and out: ``inputs`` maps input names to device addresses holding ``batch``
        items, ``outputs`` output names to addresses with room for theirs; returns {output: (address,
        shape, dtype)}, enqueued on ``stream`` (a ``gpu.device.Stream``).

        Runners that bind device memory (TensorRT) override this and never leave the device. This
        default is a host round trip through :meth:`infer` (wait, download, infer, upload): correct
        wherever CUDA runs, without the zero-copy benefit. It lets the device pipeline run with a CPU
        runner on a GPU host without TensorRT (tools/gpu-check.sh) and in tests."""
        from ..gpu import device as dv  # lazy: CPU-only hosts never load CUDA

        if not outputs:
            raise ValueError(f"runner {self.name!r}: a host round trip needs the output addresses")
        feed = {s.name: dv.download(inputs[s.name], s.dtype, (batch, *s.shape[1:]), stream) for s in self.inputs()}
        out = {k: np.ascontiguousarray(v) for k, v in self.infer(feed).items() if k in outputs}
        for k, v in out.items():
            if stream is None:
                dv.upload(outputs[k], v)
            else:
                dv.copy_h2d(outputs[k], v.ctypes.data, v.nbytes, stream)
        if stream is not None:
            stream.synchronize()  # the host arrays must outlive their copies
        return {k: (outputs[k], tuple(v.shape), v.dtype.name) for k, v in out.items()}

    def inputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def outputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
