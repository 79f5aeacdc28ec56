"""A bundle as a Triton Inference Server model repository (``tbedge export-triton``), and its schema check.

Layout (one version per export; docs/triton.md)::

  MODEL_REPO/tbedge_lungs/config.pbtxt
                         /1/model.onnx | model.plan
                         /tbedge_manifest.json     the bundle's manifest: hashes, threshold, crop prep
            /tbedge_classifier/...

``config.pbtxt`` is written from ``tritonclient``'s own protobuf (``model_config_pb2``), so its
syntax is Triton's; tensor names, dims and types come from the ONNX graph as ONNX Runtime (the
server's onnxruntime backend) reads it; max batch from the manifest's TensorRT profile when plans
are served, else ``--max-batch``. The ``tbedge_*`` parameters carry the served file's sha256 and
the bundle's ONNX sha256: the client (``runtime/runners/triton``) refuses a server whose model is
not its bundle's.

:func:`check_repository` is the schema-level check that stands in for a stock tritonserver, which
cannot run here: each config parses as a ``ModelConfig``, and its names, dims and dtypes, files and
hashes agree with the models beside it. ``tritonclient`` (the ``triton`` extra) is imported lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TbedgeError
from ..fsio import atomic_write_text, fsync_dir, sha256_file
from ..runtime.bundle import ROLES, Bundle, load_bundle
from ..runtime.runners.triton import MODEL_NAMES, P_FORMAT, P_MANIFEST_SHA, P_ONNX_SHA, P_ROLE, P_SHA
from .tensorrt import DEFAULT_MAX_BATCH

MANIFEST_NAME = "tbedge_manifest.json"
FORMATS = ("auto", "onnx", "plan")
DEVICES = ("auto", "cpu", "gpu")
# ONNX Runtime's element types -> Triton's (model_config.proto DataType).
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
                 "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8"}


class TritonExportError(TbedgeError):
    pass


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise TritonExportError("export-triton needs tritonclient: pip install 'tbedge[triton]'") from e
    return model_config_pb2, text_format


def onnx_io(path: Path) -> dict[str, list[tuple[str, str, tuple[int, ...]]]]:
    """{"input"|"output": [(name, TYPE_*, dims without the batch axis; -1 = dynamic)]} of an ONNX
    model, as ONNX Runtime (Triton's onnxruntime backend) sees the graph."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def specs(items):
        out = []
        for i in items:
            dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in i.shape[1:])
            out.append((i.name, ORT_TO_TRITON.get(i.type, i.type), dims))
        return out

    return {"input": specs(s.get_inputs()), "output": specs(s.get_outputs())}


def _max_batch(bundle: Bundle, role: str, fmt: str, max_batch: int | None) -> int:
    prof = (bundle.plan(role) or {}).get("profile") or {}
    if fmt == "plan" and prof.get("max"):
        cap = int(prof["max"][0])  # the plan cannot take more
        if max_batch and max_batch > cap:
            raise TritonExportError(f"--max-batch {max_batch} exceeds the {role} plan's profile maximum {cap}")
        return max_batch or cap
    return max_batch or DEFAULT_MAX_BATCH


def model_config(bundle: Bundle, role: str, fmt: str, device: str, instances: int, max_batch: int,
                 max_queue_delay_us: int, version: int, manifest_sha: str):
    """The ``ModelConfig`` message of one role."""
    mc, _ = _pb()
    io = onnx_io(bundle.model_path(role))
    cfg = mc.ModelConfig(name=MODEL_NAMES[role], max_batch_size=max_batch)
    if fmt == "plan":
        cfg.platform, cfg.backend, cfg.default_model_filename = "tensorrt_plan", "tensorrt", "model.plan"
    else:
        cfg.backend, cfg.default_model_filename = "onnxruntime", "model.onnx"
    for kind, specs in io.items():
        for name, dtype, dims in specs:
            t = (cfg.input if kind == "input" else cfg.output).add()
            t.name, t.data_type = name, mc.DataType.Value(dtype)
            t.dims.extend(dims)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    opt = ((bundle.plan(role) or {}).get("profile") or {}).get("opt")
    if fmt == "plan" and opt and int(opt[0]) < max_batch:
        cfg.dynamic_batching.preferred_batch_size.append(int(opt[0]))  # the batch the plan was tuned for
    group = cfg.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_GPU if device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    group.count = instances
    cfg.version_policy.specific.versions.append(version)
    served = bundle.plan(role)["sha256"] if fmt == "plan" else bundle.entry(role)["sha256"]
    params = {P_SHA: served, P_ONNX_SHA: bundle.entry(role)["sha256"], P_FORMAT: fmt, P_ROLE: role,
              P_MANIFEST_SHA: manifest_sha}
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    return cfg


def export_triton(bundle_dir: str | Path, out: str | Path, fmt: str = "auto", device: str = "auto",
                  instances: int = 1, max_batch: int | None = None, max_queue_delay_us: int = 1000,
                  version: int = 1) -> dict:
    """Write the model repository for ``bundle_dir`` to ``out`` (staged, checked, then swapped in)."""
    if fmt not in FORMATS or device not in DEVICES:
        raise TritonExportError(f"format must be one of {FORMATS} and device one of {DEVICES}")
    if instances < 1 or version < 1 or max_queue_delay_us < 0 or (max_batch is not None and max_batch < 1):
        raise TritonExportError("instances, version and max batch must be at least 1, the queue delay >= 0")
    bundle = load_bundle(bundle_dir)  # verified: a repository is never made from a tampered bundle
    if fmt == "auto":
        fmt = "plan" if bundle.has_plans() else "onnx"
    if fmt == "plan" and not bundle.has_plans():
        raise TritonExportError(f"bundle {bundle.path} has no TensorRT plans; export --format onnx, or build "
                                "plans first (tbedge build-engine --target tensorrt)")
    if device == "auto":
        device = "gpu" if fmt == "plan" else "cpu"
    if fmt == "plan" and device != "gpu":
        raise TritonExportError("TensorRT plans run on a GPU: --device gpu")
    out = Path(out)
    manifest_file = bundle.path / "manifest.json"
    manifest_sha = sha256_file(manifest_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    summary = {"repository": str(out), "bundle": str(bundle.path), "format": fmt, "device": device,
               "version": version, "models": {}}
    try:
        _, text_format = _pb()
        for role in ROLES:
            mb = _max_batch(bundle, role, fmt, max_batch)
            cfg = model_config(bundle, role, fmt, device, instances, mb, max_queue_delay_us, version, manifest_sha)
            d = stage / cfg.name
            (d / str(version)).mkdir(parents=True)
            src = bundle.path / bundle.plan(role)["file"] if fmt == "plan" else bundle.model_path(role)
            shutil.copyfile(src, d / str(version) / cfg.default_model_filename)
            shutil.copyfile(manifest_file, d / MANIFEST_NAME)
            atomic_write_text(d / "config.pbtxt", text_format.MessageToString(cfg))
            summary["models"][cfg.name] = {"role": role, "max_batch": mb, P_SHA: cfg.parameters[P_SHA].string_value}
        problems = check_repository(stage, bundle.path)
        if problems:  # a defect of the exporter, never a user's: say exactly what
            raise TritonExportError("the exported repository fails its own check: " + "; ".join(problems))
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _swap_in(stage: Path, out: Path) -> None:
    """Replace ``out`` with ``stage`` in one rename; ``out`` may only be empty or an earlier export."""
    old = None
    if out.exists():
        if any(out.iterdir()) and not all((out / n / MANIFEST_NAME).is_file() for n in MODEL_NAMES.values()):
            raise TritonExportError(f"{out} exists and is not a tbedge model repository; refusing to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the schema-level check ------------------------------------------------------------------
def read_config(path: Path):
    """Parse one config.pbtxt as Triton's ``ModelConfig``; TritonExportError on a syntax or field error."""
    mc, text_format = _pb()
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), cfg)
    except text_format.ParseError as e:
        raise TritonExportError(f"{path}: not a Triton ModelConfig: {e}") from e
    return cfg


def _io_problems(cfg, graph: dict, where: str) -> list[str]:
    mc, _ = _pb()
    out = []
    for kind in ("input", "output"):
        got = [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in getattr(cfg, kind)]
        want = graph[kind]
        if sorted(got) != sorted(want):
            out.append(f"{where}: {kind}s {sorted(got)} do not match the ONNX graph's {sorted(want)}")
    return out


def check_model(model_dir: Path, bundle: Bundle | None = None) -> list[str]:
    """Problems of one model directory (empty when it is sound)."""
    mc, _ = _pb()
    where = str(model_dir / "config.pbtxt")
    try:
        cfg = read_config(model_dir / "config.pbtxt")
    except (TritonExportError, OSError) as e:
        return [str(e)]
    p = []
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    role, fmt = params.get(P_ROLE), params.get(P_FORMAT)
    if cfg.name != model_dir.name or MODEL_NAMES.get(role) != cfg.name:
        p.append(f"{where}: name {cfg.name!r} / role {role!r} do not fit the directory {model_dir.name!r}")
    kind = ("tensorrt_plan", "model.plan") if fmt == "plan" else ("onnxruntime", "model.onnx")
    if (cfg.platform if fmt == "plan" else cfg.backend) != kind[0] or cfg.default_model_filename != kind[1]:
        p.append(f"{where}: format {fmt!r} needs {kind[0]} serving {kind[1]}, not platform {cfg.platform!r} "
                 f"backend {cfg.backend!r} file {cfg.default_model_filename!r}")
    if cfg.max_batch_size < 1 or not cfg.HasField("dynamic_batching"):
        p.append(f"{where}: max_batch_size must be >= 1 with dynamic_batching (clients send batches)")
    if fmt == "plan" and any(g.kind != mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group):
        p.append(f"{where}: a TensorRT plan needs KIND_GPU instance groups")
    versions = list(cfg.version_policy.specific.versions)
    if not versions:
        p.append(f"{where}: no specific version in version_policy")
    for v in versions:
        f = model_dir / str(v) / kind[1]
        if not f.is_file():
            p.append(f"{where}: version {v} has no {kind[1]}")
        elif sha256_file(f) != params.get(P_SHA):
            p.append(f"{f}: sha256 differs from the config's {P_SHA}")
    mf = model_dir / MANIFEST_NAME
    if not mf.is_file() or sha256_file(mf) != params.get(P_MANIFEST_SHA):
        p.append(f"{mf}: missing or not the manifest the config names ({P_MANIFEST_SHA})")
    elif role in ROLES and json.loads(mf.read_text())["models"][role]["sha256"] != params.get(P_ONNX_SHA):
        p.append(f"{mf}: its {role} model is not the config's {P_ONNX_SHA}")
    onnx = _graph_source(model_dir, versions, kind[1], params, bundle, role)
    if onnx is None:
        p.append(f"{where}: no ONNX graph to check the tensors against (give the bundle of this TensorRT plan)")
    else:
        p += _io_problems(cfg, onnx_io(onnx), where)
    return p


def _graph_source(model_dir: Path, versions: list, filename: str, params: dict, bundle: Bundle | None,
                  role: str | None) -> Path | None:
    if filename == "model.onnx" and versions and (model_dir / str(versions[-1]) / filename).is_file():
        return model_dir / str(versions[-1]) / filename
    if bundle is not None and role in ROLES and bundle.entry(role)["sha256"] == params.get(P_ONNX_SHA):
        return bundle.model_path(role)  # a plan's tensors are its source ONNX's
    return None


def check_repository(repo: str | Path, bundle: str | Path | Bundle | None = None) -> list[str]:
    """Schema-level check of a model repository: every tbedge model present and sound (see module doc)."""
    repo = Path(repo)
    b = bundle if isinstance(bundle, Bundle) or bundle is None else load_bundle(bundle)
    problems = []
    for name in MODEL_NAMES.values():
        if not (repo / name).is_dir():
            problems.append(f"{repo}: no model {name}")
            continue
        problems += check_model(repo / name, b)
    return problems
