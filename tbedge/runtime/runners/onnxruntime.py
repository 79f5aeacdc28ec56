"""ONNX Runtime runner: the embedded default on any CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Runner, TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int8)": "int8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, threads: int = 0, name: str = "",
                 providers: list[str] | None = None, session_config: dict[str, str] | None = None):
        super().__init__(name or (Path(model).name if not isinstance(model, bytes) else "onnx"))
        self.model = model
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.session_config = dict(session_config or {})  # extra ORT session config entries (studies of kernels)
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        # Spinning worker threads steal the cores that decode and crop need on small CPUs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for k, v in self.session_config.items():
            so.add_session_config_entry(k, str(v))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = self.model if isinstance(self.model, bytes) else str(self.model)
        self.session = ort.InferenceSession(src, so, providers=self.providers)

    def _deactivate(self) -> None:
        self.session = None

    def _specs(self, items) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in items]

    def inputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_inputs())

    def outputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_outputs())

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(names, {k: np.ascontiguousarray(v) for k, v in feed.items()})
        return dict(zip(names, outs, strict=True))
