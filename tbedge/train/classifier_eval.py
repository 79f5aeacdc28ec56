"""``tbedge evaluate classifier``: a trained classifier on a crop cache's part or fold, with its ROC, operating
point and (``--audit``) the acquisition-shortcut audit."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..fsio import atomic_path, atomic_write_text
from ..runtime.bundle import model_sidecar
from ..schema import CLASS_NAMES
from . import metrics as M
from .classifier import TB, crop_arrays
from .classifier_config import EXPERIMENTAL_KEYS, Experimental, TrainConfig, run_config  # noqa: F401 (re-exported)
from .crops import Crops, build_crop_cache, load_crops
from .predict import model_predictor


def _classifier_fn(model_path: str | Path):
    """(run, size): run maps uint8 crops (N, S, S) -> probabilities (N, 3), in batches."""
    fn, size = model_predictor(model_path, "probabilities", "classifier model")

    def run(x, batch=32):
        outs = [fn(x[i:i + batch].astype(np.float32) / 255.0) for i in range(0, len(x), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, len(CLASS_NAMES)), np.float32)

    return run, size


def evaluate_classifier(source: str | Path, model_path: str | Path, out: str | Path,
                        lung_model: str | Path | None = None, threshold: float | None = None,
                        part: str | None = None, fold: str | None = None, split_seed: int = 0,
                        prep: str | None = None, sets: str | tuple = "core", audit: bool = False,
                        log: Callable[[str], None] = print) -> dict:
    """Score ``source`` (a crops .npz, or an image folder cropped with ``lung_model``) with the
    classifier ``model_path`` (.keras or .onnx); write metrics.json, predictions.csv and roc.png
    into ``out`` and return the metrics dict.

    ``part``: 'all', a split part (train/val/calib/test) or, with ``fold``, site_val/site_test;
    default 'test' ('site_test' with a fold) for a crops .npz, 'all' for an image folder. Pass the locked
    ``threshold``; without one it is chosen on this data (reported as 'chosen_here').
    ``prep`` (crop preparation) None: as the model's sidecar (``classifier.json`` beside a shipped
    model), the bundle manifest beside an .onnx or the training run beside it (its config.json) says,
    else "box". ``sets``: the data sets to evaluate, picked from a crops .npz (``Crops.parts``) or
    read from an image folder (``datasets.discover``). ``audit``: also the acquisition-shortcut audit
    of the scored films (``shortcut_audit``) in audit.json, its matched-pair AUCs beside the plain ones.
    """
    prep = prep or model_prep(model_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run, size = _classifier_fn(model_path)
    src = Path(source)
    if src.suffix == ".npz":
        crops = load_crops(src)
    else:
        if lung_model is None:
            raise ValueError("an image folder needs a lung model (lung_model=...) to crop the lungs")
        crops = load_crops(build_crop_cache(src, lung_model, out / "crops.npz", size=size, log=log, sets=sets))
    part = part or ("all" if src.suffix != ".npz" else "site_test" if fold else "test")
    if src.suffix == ".npz" and crops.left_out(sets):
        log(f"sets {sets}: {crops.left_out(sets)} films of this cache left out (--sets all keeps them)")
    parts = crops.parts(fold, seed=split_seed, sets=sets if src.suffix == ".npz" else None)
    if part not in parts:
        raise ValueError(f"unknown part {part!r}; choose one of {sorted(parts)}")
    idx = parts[part]
    probs = run(crop_arrays(crops, idx, size, prep)) if len(idx) else np.zeros((0, 3), np.float32)
    pred = {"probabilities": probs, "label": crops.label[idx], "site": crops.site[idx],
            "source": crops.source[idx], "fallback": crops.fallback[idx]}
    res = M.evaluate(pred, threshold)
    res.update({"model": str(model_path), "source": str(source), "part": part, "fold": fold, "prep": prep})
    y = crops.label[idx] == "tb"
    lab = np.isin(crops.label[idx], CLASS_NAMES)
    if y.any() and (~y[lab]).any():
        curves = {"all": (y[lab], probs[lab, TB])}
        for site in sorted(set(crops.site[idx][lab])):
            m = lab & (crops.site[idx] == site)
            if y[m].any() and (~y[m]).any():
                curves[site] = (y[m], probs[m, TB])
        at = res["at_threshold"]
        M.plot_roc(curves, out / "roc.png", {f"threshold {res['threshold']:.3f}": (1 - at["specificity"],
                                                                                at["sensitivity"])},
                   title=f"TB vs rest: {Path(model_path).name} on {part}")
        res["roc_png"] = str(out / "roc.png")
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "site", "source", "fallback", *[f"p_{c}" for c in CLASS_NAMES]])
        for j, i in enumerate(idx):
            w.writerow([crops.path[i], crops.label[i], crops.site[i], crops.source[i], int(crops.fallback[i]),
                        *[f"{v:.6f}" for v in probs[j]]])
    if audit:
        res["audit"] = _audit(crops, idx, probs[:, TB], res, out, log)
    atomic_write_text(out / "metrics.json", json.dumps(res, indent=1))
    return res


def _audit(crops: Crops, idx: np.ndarray, tb: np.ndarray, res: dict, out: Path, log: Callable[[str], None]) -> dict:
    """Run the shortcut audit on the scored films (read again from their paths), write audit.json,
    put each matched-pair AUC beside its plain AUC in ``res`` and return the audit's summary."""
    from .shortcut_audit import audit_films, summary_lines

    rep = audit_films(crops.path[idx], crops.label[idx], crops.site[idx], tb, log=log)
    rep.update(model=res["model"], part=res["part"], fold=res["fold"])
    atomic_write_text(out / "audit.json", json.dumps(rep, indent=1))
    if rep["pooled"].get("model_matched_auc"):
        res["auc_tb_vs_rest_matched"] = {**rep["pooled"]["model_matched_auc"],
                                         "n_pairs": rep["pooled"]["matching"]["n_pairs"]}
    for site, g in rep["per_site"].items():
        if site in res["per_site"] and "matching" in g:
            res["per_site"][site].update(matched_pair_auc=(g.get("model_matched_auc") or {}).get("auc"),
                                         n_pairs=g["matching"]["n_pairs"], features_auc=g["features_auc"]["auc"])
    return {"json": str(out / "audit.json"), "summary": summary_lines(rep)}


def model_prep(model_path: str | Path) -> str:
    """The crop preparation a classifier was trained with: its sidecar (``classifier.json``), the
    manifest of the bundle it sits in (an .onnx), or its training run's config.json; else "box"."""
    p = Path(model_path)
    if p.with_suffix(".json").is_file():
        return model_sidecar(p)["crop_prep"]
    manifest = p.parent / "manifest.json"
    if p.suffix == ".onnx" and manifest.is_file():
        entry = json.loads(manifest.read_text()).get("models", {}).get("classifier", {})
        if entry.get("file") == p.name:
            return entry.get("preprocessing", {}).get("crop", "box")
    cfg = p.parent / "config.json"
    return json.loads(cfg.read_text()).get("prep", "box") if cfg.exists() else "box"
