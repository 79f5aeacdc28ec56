"""Lung-crop cache for classifier training: every image of a data folder -> lung model -> clean
mask -> native box -> S x S uint8 crop, stored once in an .npz with its metadata.

Build the cache from the whole data root: the train/val/calib/test split is recomputed from the
stored metadata with :func:`tbedge.datasets.split`, and it only matches the lung model's split
when every sample is present. Keep caches outside the repository (e.g. /work/main/runs/crops/).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import Sample, discover, loso_folds, split
from ..edge import lungs as L
from ..edge.imaging import load_image
from ..fsio import atomic_path, sha256_file
from ..schema import TbedgeInputError
from .predict import model_predictor


def lung_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A function (B, 256, 256, 1) float [0, 1] -> heat (B, 256, 256) from a .keras or .onnx
    lung model path, or from an in-memory Keras model."""
    fn, _ = model_predictor(model, "mask", "lung model")
    return lambda x: fn(x)[..., 0]


def _atomic_savez(dest: Path, /, **arrays) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def build_crop_cache(data: str | Path | list[Sample], lung_model, out: str | Path, size: int = 224,
                     batch: int = 16, log: Callable[[str], None] = print) -> Path:
    """Crop every sample of ``data`` (a data root or a list of samples) with ``lung_model``
    (.keras / .onnx path or a Keras model) and write ``out`` (.npz, atomically)."""
    samples = discover(data) if isinstance(data, (str, Path)) else list(data)
    out = Path(out)
    n = len(samples)
    crops = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)  # lung weights on the crop grid (0-255)
    boxes = np.zeros((n, 4), np.int32)
    native = np.zeros((n, 2), np.int32)
    fallback = np.zeros(n, bool)
    area = np.zeros(n, np.float32)
    failures = [""] * n
    ok = np.zeros(n, bool)
    predict = lung_predictor(lung_model)
    t0 = time.time()
    for start in range(0, n, batch):
        chunk = range(start, min(n, start + batch))
        imgs, xs = {}, []
        for i in chunk:
            try:
                imgs[i] = load_image(samples[i].path).pixels
            except (TbedgeInputError, OSError) as e:
                log(f"crop cache: skipping sample {i} ({type(e).__name__}: {getattr(e, 'reason', 'io')})")
                continue
            xs.append(L.preprocess(imgs[i]))
        if not imgs:
            continue
        heat = predict(np.stack(xs))
        for h, (i, img) in zip(heat, imgs.items(), strict=True):
            r = L.analyse(h, img.shape)
            crops[i] = np.round(np.clip(L.crop(img, r.box, size), 0, 1) * 255).astype(np.uint8)
            masks[i] = np.round(L.mask_in_crop(r.mask, r.box, img.shape, size) * 255).astype(np.uint8)
            boxes[i], native[i], fallback[i] = r.box, img.shape, r.fallback
            area[i], failures[i], ok[i] = r.qa.area_fraction, ",".join(r.qa.failures), True
        if (start // batch) % 10 == 0:
            log(f"crop cache: {min(n, start + batch)}/{n} ({time.time() - t0:.0f} s)")
    keep = np.flatnonzero(ok)
    meta = {"size": size, "n": int(len(keep)), "skipped": int(n - len(keep)), "created": time.time(),
            "lung_model": str(lung_model) if isinstance(lung_model, (str, Path)) else "in-memory",
            "lung_model_sha256": sha256_file(lung_model) if isinstance(lung_model, (str, Path)) else None,
            "data": str(data) if isinstance(data, (str, Path)) else "samples",
            "fallback": int(fallback[keep].sum())}

    def col(attr):
        return np.array([str(getattr(samples[i], attr) or "") for i in keep])

    _atomic_savez(out, crops=crops[keep], mask=masks[keep], box=boxes[keep], native_shape=native[keep],
                  fallback=fallback[keep],
                  area_fraction=area[keep], qa_failures=np.array([failures[i] for i in keep]),
                  path=col("path"), label=col("label"), site=col("site"), patient=col("patient"),
                  source=col("source"), meta=np.array(json.dumps(meta)))
    log(f"crop cache: {len(keep)} crops ({meta['fallback']} fallback boxes, "
        f"{meta['skipped']} skipped) -> {out}")
    return out


@dataclass
class Crops:
    images: np.ndarray  # (N, S, S) uint8
    path: np.ndarray
    label: np.ndarray  # '' = unlabelled
    site: np.ndarray
    patient: np.ndarray
    source: np.ndarray
    fallback: np.ndarray
    box: np.ndarray
    meta: dict
    mask: np.ndarray | None = None  # (N, S, S) uint8 lung weights; None in caches made before masks

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def samples(self) -> list[Sample]:
        return [Sample(Path(p), lab or None, si, pa, None, so)
                for p, lab, si, pa, so in zip(self.path, self.label, self.site, self.patient, self.source,
                                              strict=True)]

    def parts(self, fold: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Indices per part: train/val/calib/test, or for a LOSO fold (held site name)
        train/val (other sites) and site_val/site_test (held site)."""
        samples = self.samples()
        index = {str(s.path): i for i, s in enumerate(samples)}
        if fold is None:
            groups = split(samples, seed=seed)
        else:
            folds = {f.held_site: f for f in loso_folds(samples, seed=seed)}
            if fold not in folds:
                raise ValueError(f"unknown fold {fold!r}; choose one of {sorted(folds)}")
            f = folds[fold]
            groups = {"train": f.train, "val": f.val, "site_val": f.site_val, "site_test": f.site_test}
        out = {k: np.array(sorted(index[str(s.path)] for s in v), dtype=np.int64) for k, v in groups.items()}
        out["all"] = np.arange(len(samples))
        return out


def load_crops(path: str | Path) -> Crops:
    with np.load(path, allow_pickle=False) as z:
        return Crops(z["crops"], z["path"], z["label"], z["site"], z["patient"], z["source"],
                     z["fallback"], z["box"], json.loads(str(z["meta"])), z["mask"] if "mask" in z else None)
