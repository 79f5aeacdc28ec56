"""ONNX (fp32 / fp16 / int8 Q/DQ) -> TensorRT plan, for TensorRT 10.x (JetPack 6: 10.3) and 11.x.

The network is STRONGLY TYPED: precisions come from the ONNX itself (fp16 tensors, Q/DQ nodes),
never from builder flags; TensorRT 11 removed the FP16/INT8 flags and 10.x deprecates them. The
explicit-batch flag exists only up to 10.x (implied since), so it is set only where it exists.
Status: the configuration logic below is unit-tested with a fake ``trt`` module; building a real
plan is UNVERIFIED until a TensorRT host runs it (see docs/build-engine.md).

``tensorrt`` and ``cuda`` are imported inside functions only: this module must import on any host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TbedgeError
from ..fsio import atomic_write_bytes

DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32
DEFAULT_WORKSPACE = 1 << 30


class TensorRTBuildError(TbedgeError):
    pass


@dataclass(frozen=True)
class Profile:
    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt) -> int:
    """STRONGLY_TYPED always; EXPLICIT_BATCH only where the enum still has it (<= 10.x)."""
    f = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(f.STRONGLY_TYPED)
    if trt_major(trt) < 11 and hasattr(f, "EXPLICIT_BATCH"):
        flags |= 1 << int(f.EXPLICIT_BATCH)
    return flags


def profile_for(input_name: str, shape: list | tuple, opt_batch: int = DEFAULT_OPT_BATCH,
                max_batch: int = DEFAULT_MAX_BATCH) -> Profile:
    """Optimisation profile over the batch axis from the manifest's input spec (other dims static)."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    rest = tuple(shape[1:])
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise TensorRTBuildError(f"input {input_name!r} has a dynamic non-batch dimension {tuple(shape)}; "
                                 "only the batch may vary")
    return Profile(input_name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))


def plan_filename(role: str, precision: str, compute_capability: str) -> str:
    return f"{role}.{precision}.sm{str(compute_capability).replace('.', '')}.plan"


def device_info() -> dict:
    """GPU name, compute capability and CUDA runtime version via cuda-python (lazily imported)."""
    from cuda.bindings import runtime as cudart

    err, dev = cudart.cudaGetDevice()
    if int(err) != 0:
        raise TensorRTBuildError(f"no CUDA device: {err}")
    err, props = cudart.cudaGetDeviceProperties(dev)
    err2, rt = cudart.cudaRuntimeGetVersion()
    name = props.name
    name = name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}",
            "cuda_version": f"{rt // 1000}.{(rt % 1000) // 10}" if int(err2) == 0 else "unknown"}


def plan_metadata(trt, device: dict, plan_file: str, plan_sha256: str, onnx_sha256: str,
                  precision: str, profile: Profile) -> dict:
    """The manifest's ``plans[role]`` entry (check_plan_device compares trt_version and capability)."""
    return {"file": plan_file, "sha256": plan_sha256, "trt_version": str(trt.__version__),
            "cuda_version": device["cuda_version"], "gpu_name": device["gpu_name"],
            "compute_capability": device["compute_capability"], "onnx_sha256": onnx_sha256,
            "precision": precision, "strongly_typed": True,
            "profile": {"input": profile.input_name, "min": list(profile.min), "opt": list(profile.opt),
                        "max": list(profile.max)}}


def build_plan(onnx_path: str | Path, out: str | Path, profile: Profile,
               timing_cache: str | Path | None = None, workspace: int = DEFAULT_WORKSPACE, trt=None) -> Path:
    """Parse ``onnx_path`` into a strongly typed network, build and serialise the plan to ``out``.

    ``trt`` is the tensorrt module (imported here when None; tests pass a fake one).
    """
    if trt is None:
        try:
            import tensorrt as trt  # noqa: PLC0415
        except ImportError as e:
            raise TensorRTBuildError("TensorRT is not installed on this host: build plans on the target "
                                     "device (JetPack ships it) or pip install tensorrt") from e
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errs[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    prof = builder.create_optimization_profile()
    prof.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(prof)
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {onnx_path}")
    out = Path(out)
    atomic_write_bytes(out, bytes(serialized))
    if cache is not None:
        atomic_write_bytes(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    return out


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True
