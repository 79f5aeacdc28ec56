"""Lung-crop cache for classifier training: every image of a data folder -> lung model -> clean
mask -> native box -> S x S uint8 crop, stored once in an .npz with its metadata.

Build the cache from the whole data root: the train/val/calib/test split is recomputed from the
stored metadata with :func:`tbedge.datasets.split`, and it only matches the lung model's split
when every sample is present. Keep caches outside the repository (e.g. /work/main/runs/crops/).
Cache every set once (``sets="all"``): training and evaluation pick their sets from the cache
(``Crops.parts(sets=...)``), and the core parts are the same whichever sets the cache holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import (
    CORE_SETS,
    SET_SITES,
    Sample,
    discover,
    excluded_sites,
    loso_folds,
    resolve_sets,
    select_sets,
    split,
)
from ..fsio import atomic_path, sha256_file
from ..runtime import lungs as L
from ..runtime.imaging import load_image
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
                     batch: int = 16, log: Callable[[str], None] = print, sets: str | tuple = "core") -> Path:
    """Crop every sample of ``data`` (a data root, read with ``sets``, or a list of samples) with
    ``lung_model`` (.keras / .onnx path or a Keras model) and write ``out`` (.npz, atomically)."""
    samples = discover(data, sets) if isinstance(data, (str, Path)) else list(data)
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
            "sets": list(resolve_sets(sets)) if isinstance(data, (str, Path)) else None,
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

    def missing_sets(self, sets: str | tuple) -> list[str]:
        """The opt-in sets (tb_more, covid) that ``sets`` asks for and this cache has no film of."""
        present = set(self.site.tolist())
        return sorted(n for n in resolve_sets(sets) if n not in CORE_SETS and not present & set(SET_SITES[n]))

    def left_out(self, sets: str | tuple) -> int:
        """How many films of this cache ``sets`` leaves out."""
        return int(np.isin(self.site, sorted(excluded_sites(sets))).sum())

    def parts(self, fold: str | None = None, seed: int = 0, sets: str | tuple | None = None) -> dict[str, np.ndarray]:
        """Indices per part: train/val/calib/test, or for a LOSO fold (held site name)
        train/val (other sites) and site_val/site_test (held site). ``sets`` ("core", "all", set
        names; None = the whole cache) drops the sites of the known sets it leaves out; the parts
        of the sites kept are the same with or without the others (split is per site and label)."""
        everything = self.samples()
        index = {str(s.path): i for i, s in enumerate(everything)}
        samples = everything if sets is None else select_sets(everything, sets)
        if fold is None:
            groups = split(samples, seed=seed)
        else:
            folds = {f.held_site: f for f in loso_folds(samples, seed=seed)}
            if fold not in folds:
                hint = " (its set is left out: --sets all)" if sets is not None and fold in excluded_sites(sets) else ""
                raise ValueError(f"unknown fold {fold!r}{hint}; choose one of {sorted(folds)}")
            f = folds[fold]
            groups = {"train": f.train, "val": f.val, "site_val": f.site_val, "site_test": f.site_test}
        out = {k: np.array(sorted(index[str(s.path)] for s in v), dtype=np.int64) for k, v in groups.items()}
        out["all"] = np.array(sorted(index[str(s.path)] for s in samples), dtype=np.int64)
        return out


def load_crops(path: str | Path) -> Crops:
    with np.load(path, allow_pickle=False) as z:
        return Crops(z["crops"], z["path"], z["label"], z["site"], z["patient"], z["source"],
                     z["fallback"], z["box"], json.loads(str(z["meta"])), z["mask"] if "mask" in z else None)
