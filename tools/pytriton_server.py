"""Serve a model repository written by ``tbedge export-triton`` with PyTriton (a real tritonserver).

A stock tritonserver with the onnxruntime backend cannot be installed without containers, so tests
and benchmarks serve the exported ONNX models through ONNX Runtime inside PyTriton's Python
backend. Everything the clients see comes from the exported repository: model names, versions,
tensor names, dims and dtypes, max batch size, dynamic batching and the ``tbedge_*`` parameters
(the hashes the client checks) are read from each ``config.pbtxt``; the models are the files in
its version directory.

Runs in its own venv (PyTriton needs numpy < 2; pins in tools/pytriton-requirements.txt) with
LD_LIBRARY_PATH holding the interpreter's libpython (tritonserver's Python stub links it). It
imports nothing from tbedge, whose dependencies that venv lacks.

    python tools/pytriton_server.py MODEL_REPO --grpc-port 8001 --http-port 8000 --metrics-port 8002
"""

from __future__ import annotations

import argparse  # a test tool in its own venv, outside the tbedge package and its typer CLI
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.models import model as pytriton_model
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
from tritonclient.grpc import model_config_pb2

DTYPES = {model_config_pb2.TYPE_FP32: np.float32, model_config_pb2.TYPE_FP16: np.float16,
          model_config_pb2.TYPE_INT64: np.int64, model_config_pb2.TYPE_INT32: np.int32,
          model_config_pb2.TYPE_UINT8: np.uint8, model_config_pb2.TYPE_INT8: np.int8}
_PARAMETERS: dict[str, dict[str, str]] = {}


def _with_parameters(original):
    """PyTriton writes its own config.pbtxt; carry the exported ``parameters`` into it, so a client
    reads the same hashes from this server as from a stock tritonserver serving the repository."""

    def patched(self):
        cfg = original(self)
        cfg.backend_parameters.update(_PARAMETERS.get(self.model_name, {}))
        return cfg

    return patched


pytriton_model.Model._get_triton_model_config = _with_parameters(pytriton_model.Model._get_triton_model_config)


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), cfg)
    return cfg


def latest_version(model_dir: Path) -> int:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise SystemExit(f"{model_dir}: no version directory")
    return versions[-1]


def make_infer(session: ort.InferenceSession, outputs: list[str]):
    @batch
    def infer(**inputs):
        outs = session.run(outputs, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
        return dict(zip(outputs, outs, strict=True))

    return infer


def bind_model(triton: Triton, model_dir: Path, threads: int) -> str:
    cfg = read_config(model_dir)
    version = latest_version(model_dir)
    onnx = model_dir / str(version) / (cfg.default_model_filename or "model.onnx")
    if cfg.backend != "onnxruntime" or not onnx.is_file():
        raise SystemExit(f"{model_dir}: only onnxruntime models can be served here (backend {cfg.backend!r})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    count = max(1, sum(g.count or 1 for g in cfg.instance_group)) if cfg.instance_group else 1
    sessions = [ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"]) for _ in range(count)]
    outputs = [o.name for o in cfg.output]
    _PARAMETERS[cfg.name] = {k: v.string_value for k, v in cfg.parameters.items()}
    db = cfg.dynamic_batching
    batcher = DynamicBatcher(max_queue_delay_microseconds=db.max_queue_delay_microseconds,
                             preferred_batch_size=list(db.preferred_batch_size) or None)
    triton.bind(
        model_name=cfg.name,
        model_version=version,
        infer_func=[make_infer(s, outputs) for s in sessions],
        inputs=[Tensor(name=i.name, dtype=DTYPES[i.data_type], shape=tuple(i.dims)) for i in cfg.input],
        outputs=[Tensor(name=o.name, dtype=DTYPES[o.data_type], shape=tuple(o.dims)) for o in cfg.output],
        config=ModelConfig(max_batch_size=cfg.max_batch_size, batcher=batcher),
        strict=True,
    )
    return cfg.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(grpc_address=args.address, grpc_port=args.grpc_port, http_address=args.address,
                          http_port=args.http_port, metrics_port=args.metrics_port, exit_on_error=True,
                          log_verbose=0)
    # PyTriton restricts the statistics endpoint by default; a stock tritonserver does not, and bench reads it.
    security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    with Triton(config=config, security_config=security) as triton:
        names = [bind_model(triton, d, args.threads) for d in sorted(args.repo.iterdir())
                 if (d / "config.pbtxt").is_file()]
        print("serving " + ", ".join(names), flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
