"""Calibration sets: real images from the ``calib`` split part, preprocessed exactly as at runtime.

A set is a directory with ``tensors.npz`` (``lungs``: (N, 256, 256, 1) lung-model inputs,
``classifier``: (N, S, S, C) inputs as ``lungs.classifier_input`` makes them, prepared per the
classifier's crop prep) and ``manifest.json`` listing the images by content sha256 (never by
name) plus a set hash. The same data, split seed, sizes, crop prep and lung model give the same
hash. The set is derived from patient images, so it is never shipped in a bundle;
only the activation ranges computed from it are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import datasets
from ..errors import TbedgeError
from ..runtime import lungs as L
from ..runtime.bundle import sha256_file
from ..runtime.imaging import load_image

FORMAT = "tbedge-calibration-set/1"
DEFAULT_PER_STRATUM = 16
# Part of every set's hash (set_hash), so the crop's recorded name stays as first written: the function is
# runtime/lungs.py's analyse + classifier_input today (tbedge.edge became tbedge.runtime in issue 22).
PREPROCESSING = {"lungs": {"resize": "area", "range": [0, 1]},
                 "classifier": {"crop": "tbedge.edge.lungs.analyse+crop", "resize": "area", "range": [0, 1]}}


class CalibrationSetError(TbedgeError):
    pass


@dataclass
class CalibrationSet:
    path: Path
    manifest: dict

    @property
    def set_sha256(self) -> str:
        return self.manifest["set_sha256"]

    def tensors(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "tensors.npz") as z:
            arrays = {k: z[k] for k in z.files}
        if tensors_digest(arrays) != self.manifest["tensors_sha256"]:
            raise CalibrationSetError(f"calibration set {self.path}: tensors do not match the manifest hash")
        return arrays

    def batches(self, role: str, batch: int = 4) -> Iterator[np.ndarray]:
        x = self.tensors()[role]
        for i in range(0, len(x), batch):
            yield x[i:i + batch]


def tensors_digest(arrays: dict[str, np.ndarray]) -> str:
    """Hash of array names, dtypes, shapes and bytes (npz files carry zip timestamps, so not those)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def set_hash(manifest: dict) -> str:
    keys = ("format", "split", "items", "sizes", "lungs_model_sha256", "preprocessing", "tensors_sha256")
    return hashlib.sha256(json.dumps({k: manifest[k] for k in keys}, sort_keys=True).encode()).hexdigest()


def select(data_root: str | Path, n_per_stratum: int | None = DEFAULT_PER_STRATUM,
           split_seed: int = 0) -> list[datasets.Sample]:
    """Images of the ``calib`` part, up to ``n_per_stratum`` per (site, label), in a fixed order.

    Disjointness from val and test holds by construction (split by patient); it is asserted here
    on patients and on file content, so a duplicate image under another name is caught too.
    """
    parts = datasets.split(datasets.discover(data_root), seed=split_seed)
    calib = parts["calib"]
    held = {s.patient for p in ("val", "test") for s in parts[p]}
    clash = {s.patient for s in calib} & held
    if clash:
        raise CalibrationSetError(f"{len(clash)} calibration patients are also in val/test")
    strata: dict[tuple, list] = defaultdict(list)
    for s in calib:
        strata[(s.site, str(s.label))].append(s)
    chosen = []
    for key in sorted(strata):
        ss = sorted(strata[key], key=lambda s: (datasets.unit_hash(s.patient, split_seed + 7), str(s.path)))
        chosen += ss if n_per_stratum is None else ss[:n_per_stratum]
    held_content = {sha256_file(s.path) for p in ("val", "test") for s in parts[p]}
    dup = [s for s in chosen if sha256_file(s.path) in held_content]
    if dup:
        raise CalibrationSetError(f"{len(dup)} calibration images have identical copies in val/test")
    return chosen


def make_calibration_set(data_root: str | Path, lungs_model: str | Path, out: str | Path,
                         classifier_size: int, n_per_stratum: int | None = DEFAULT_PER_STRATUM,
                         split_seed: int = 0, threads: int = 0,
                         progress: Callable[[int, int], None] | None = None, prep: str = "box") -> CalibrationSet:
    """Build a calibration set at directory ``out`` from the ``calib`` part of ``data_root``.

    ``lungs_model`` is the fp32 lung ONNX: the classifier's crops come from the real cleaning and
    crop code fed by it, as at runtime, prepared per ``prep`` (the classifier's crop preparation).
    """
    from ..runtime.runners.onnxruntime import OnnxRuntimeRunner

    samples = select(data_root, n_per_stratum, split_seed)
    if not samples:
        raise CalibrationSetError(f"no calibration images under {data_root}")
    lungs_model = Path(lungs_model)
    lung_in, crops, items = [], [], []
    with OnnxRuntimeRunner(lungs_model, threads=threads, name="lungs") as r:
        lung_size = int(r.inputs()[0].shape[1])
        for i in range(0, len(samples), 8):
            chunk = samples[i:i + 8]
            imgs = [load_image(s.path) for s in chunk]
            x = np.stack([L.preprocess(im.pixels, lung_size) for im in imgs])
            heat = r.infer({"image": x})["mask"][..., 0]
            for s, im, xi, h in zip(chunk, imgs, x, heat, strict=True):
                res = L.analyse(h, im.pixels.shape)
                lung_in.append(xi)
                crops.append(L.classifier_input(im.pixels, res, classifier_size, prep))
                items.append({"sha256": im.meta.sha256, "site": s.site, "label": s.label,
                              "lungs_fallback": bool(res.fallback)})
            if progress:
                progress(min(i + 8, len(samples)), len(samples))
    arrays = {"lungs": np.stack(lung_in).astype(np.float32), "classifier": np.stack(crops).astype(np.float32)}
    strata: dict[str, int] = defaultdict(int)
    for it in items:
        strata[f"{it['site']}/{it['label']}"] += 1
    manifest = {"format": FORMAT,
                "split": {"part": "calib", "seed": split_seed, "fractions": datasets.DEFAULT_FRACTIONS,
                          "n_per_stratum": n_per_stratum},
                "items": items, "strata": dict(sorted(strata.items())),
                "sizes": {"lungs": lung_size, "classifier": int(classifier_size)},
                "lungs_model_sha256": sha256_file(lungs_model), "preprocessing": PREPROCESSING,
                "crop_prep": prep,
                "tensors_sha256": tensors_digest(arrays)}
    manifest["set_sha256"] = set_hash(manifest)
    _write_dir(Path(out), arrays, manifest)
    return CalibrationSet(Path(out), manifest)


def _write_dir(out: Path, arrays: dict, manifest: dict) -> None:
    """Write into a sibling temp dir, fsync, then swap it in: never a half-written set."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with open(tmp / "tensors.npz", "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_calibration_set(path: str | Path) -> CalibrationSet:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise CalibrationSetError(f"not a calibration set (no manifest.json): {path}")
    m = json.loads(mf.read_text())
    if m.get("format") != FORMAT:
        raise CalibrationSetError(f"unsupported calibration set format {m.get('format')!r}: {path}")
    if set_hash(m) != m.get("set_sha256"):
        raise CalibrationSetError(f"calibration set manifest {mf} does not match its own hash")
    return CalibrationSet(path, m)
