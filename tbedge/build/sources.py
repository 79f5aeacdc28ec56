"""Where a build's models come from (a Keras model exported here, or a bundle's ONNX) and the facts read from
an ONNX graph (its inputs and outputs, the classifier's TB bias)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .. import __version__ as TBEDGE_VERSION
from ..runtime import lungs as L
from ..runtime.bundle import (
    load_bundle,
    model_sidecar,
    phantom_input,
)
from ..runtime.imaging import load_image
from . import gate as G
from .bundle_copy import BuildError

ProgressFn = Callable[[str], None]


@dataclass
class Source:
    """One role's fp32 ONNX and what is known about where it came from."""

    role: str
    onnx: Path
    origin: str  # keras | bundle | onnx
    name: str
    version: str
    parity: dict | None = None
    threshold: dict | None = None  # from a source bundle (classifier only)
    class_names: list[str] | None = None
    tools: dict = field(default_factory=dict)
    crop_prep: str = "box"  # classifier only: how its input is made from the lung crop


def _keras_default_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "models" / "keras"


def tool_versions(with_tf: bool = False) -> dict:
    names = ["onnx", "onnxruntime", "onnxconverter-common"]
    names += ["tf2onnx", "tensorflow", "keras"] if with_tf else []
    out = {"tbedge": TBEDGE_VERSION}
    for n in names:
        try:
            out[n] = _md.version(n)
        except _md.PackageNotFoundError:
            if n == "tensorflow":
                try:
                    out[n] = _md.version("tensorflow-cpu")
                except _md.PackageNotFoundError:
                    pass
    return out


# -- sources ------------------------------------------------------------------------------
def _parity_inputs(role: str, size: int, data_root: Path | None, n: int = 4,
                   prep: str = "box") -> tuple[np.ndarray, str]:
    """Real val images preprocessed as at runtime (centre crop stands in for the lung crop)."""
    if data_root is not None:
        samples = G.gate_samples(data_root)[:n]
        xs = []
        for s in samples:
            px = load_image(s.path).pixels
            xs.append(L.preprocess(px, size) if role == "lungs" else
                      L.stack_input(L.crop(px, L.fallback_box(px.shape), size), None, prep))
        return np.stack(xs).astype(np.float32), f"{len(xs)} real val images"
    ch = 1 if role == "lungs" else L.input_channels(prep)
    return np.stack([phantom_input(size, s, ch) for s in range(n)]), f"{n} synthetic phantoms (no data)"


def source_from_keras(path: Path, role: str, work: Path, data_root: Path | None,
                      progress: ProgressFn | None = None) -> Source:
    from .export import export_onnx, load_keras, parity

    if progress:
        progress(f"export {role}: {path.name} -> ONNX")
    model = load_keras(path)
    out = export_onnx(model, work / f"{role}.fp32.onnx")
    prep = model_sidecar(path)["crop_prep"] if role == "classifier" else "box"
    x, what = _parity_inputs(role, int(model.input_shape[1]), data_root, prep=prep)
    diffs = parity(model, out, x)
    return Source(role, out, "keras", model.name, _version_of(path), {"max_abs": diffs, "on": what},
                  tools=tool_versions(with_tf=True), crop_prep=prep)


def source_from_bundle(path: Path, role: str, work: Path) -> Source:
    b = load_bundle(path)
    e = b.entry(role)
    if e["precision"] != "fp32":
        raise BuildError(f"bundle {path} holds a {e['precision']} {role} model; build from an fp32 bundle "
                         "or from the Keras models")
    dst = work / f"{role}.fp32.onnx"
    shutil.copyfile(b.model_path(role), dst)
    return Source(role, dst, "bundle", e["name"], e["version"], e.get("parity"),
                  dict(b.manifest["threshold"]) if role == "classifier" else None, b.class_names,
                  crop_prep=b.crop_prep)


def resolve_source(src: str | Path, role: str, work: Path, data_root: Path | None,
                   progress: ProgressFn | None = None) -> Source:
    p = Path(src)
    if p.is_dir() and (p / "manifest.json").is_file():
        return source_from_bundle(p, role, work)
    if p.suffix == ".keras" and p.is_file():
        return source_from_keras(p, role, work, data_root, progress)
    if p.suffix == ".onnx" and p.is_file():
        dst = work / f"{role}.fp32.onnx"
        shutil.copyfile(p, dst)
        return Source(role, dst, "onnx", p.stem, _version_of(p), crop_prep=model_sidecar(p)["crop_prep"])
    raise BuildError(f"{role} source {p} is not a .keras model, an .onnx file or a bundle directory")


def _version_of(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).strftime("%Y%m%d")


# -- graph facts --------------------------------------------------------------------------
def io_spec(onnx_path: Path) -> tuple[dict, list[str]]:
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    i = g.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[3] not in (1, 2) or dims[1] != dims[2] or not dims[1]:
        raise BuildError(f"{onnx_path.name}: input {i.name} shape {dims} is not (B, S, S, 1|2)")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
    return {"name": i.name, "shape": dims, "layout": "NHWC", "dtype": dtype}, [o.name for o in g.output]


def read_tb_bias(onnx_path: Path, tb_index: int) -> float | None:
    """The TB logit's bias, traced back from the Softmax behind ``probabilities`` (None if not found)."""
    g = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    n = prod.get("probabilities")
    for _ in range(4):  # Softmax <- (Identity) <- Add(MatMul, bias) | Gemm(.., .., bias)
        if n is None:
            return None
        if n.op_type == "MatMul":  # tf2onnx drops an all-zero Dense bias
            return 0.0
        if n.op_type in ("Add", "Gemm"):
            for name in n.input[1:] if n.op_type == "Add" else n.input[2:3]:
                if name in inits:
                    b = numpy_helper.to_array(inits[name]).ravel()
                    if b.size > tb_index:
                        return float(b[tb_index])
            return None
        n = prod.get(n.input[0])
    return None


