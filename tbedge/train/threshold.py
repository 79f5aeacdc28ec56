"""Lock the operating threshold on out-of-site validation predictions (site-val of each fold).

Thresholds from internal validation do not transfer: score distributions shift between sites.
So the threshold is chosen on predictions of fold models for the site each never saw, to reach
the target sensitivity with the best specificity there.

Fold models put their scores on scales up to ~20x apart even when they rank alike, so a
probability does not carry from one model to another. ``transfer_threshold`` carries it as a
*quantile* instead: each fold model's own out-of-site threshold is located among its scores on a
reference set that every model scores (the NIH films of the val part: every model trains on NIH,
none holds it out, none tests on it), and the mean of those quantiles is read off the target
model's scores on the same films. Between fold models it halves the sensitivity error of raw
transfer; onto the full-data model it fails (that model scores NIH films far lower), so the
shipped threshold is the pooled one (research/classifier-study.md, fourth round).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..fsio import atomic_write_text
from .metrics import TARGET_SENSITIVITY, sens_spec, threshold_at_sensitivity


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """predictions.csv -> (is_tb, p_tb, site)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([r["label"] == "tb" for r in rows]), np.array([float(r["p_tb"]) for r in rows]),
            np.array([r["site"] for r in rows]))


def lock_threshold(predictions: list[str | Path], target: float = TARGET_SENSITIVITY) -> dict:
    ys, ss, sites = zip(*(read_predictions(p) for p in predictions), strict=True)
    y, s, site = np.concatenate(ys), np.concatenate(ss), np.concatenate(sites)
    thr = threshold_at_sensitivity(y, s, target)
    per_site = {}
    for name in sorted(set(site)):
        m = site == name
        if y[m].any():
            per_site[name] = {"optimum": threshold_at_sensitivity(y[m], s[m], target),
                              "at_locked": sens_spec(y[m], s[m], thr)}
    return {"value": thr, "on": "tb_probability", "target_sensitivity": target,
            "chosen_on": "out-of-site site_val predictions: " + ", ".join(str(p) for p in predictions),
            "pooled": sens_spec(y, s, thr), "per_site": per_site}


REFERENCE_SITE = "nih"


def reference_scores(path: str | Path) -> np.ndarray:
    """p_tb of the reference films in a val predictions.csv."""
    _, s, site = read_predictions(path)
    ref = s[site == REFERENCE_SITE]
    if not len(ref):
        raise ValueError(f"{path}: no {REFERENCE_SITE} films to serve as the reference")
    return ref


def quantile_of(ref: np.ndarray, t: float) -> float:
    """Where ``t`` falls among the reference scores (mid-rank for ties), in [0, 1]."""
    return float((ref < t).mean() + 0.5 * (ref == t).mean())


def transfer_threshold(folds: list[tuple[str | Path, str | Path]], target_val: str | Path,
                       target: float = TARGET_SENSITIVITY) -> dict:
    """``folds``: (site_val predictions, val predictions) of each fold model; ``target_val``: the
    shipped model's val predictions. The threshold is the mean fold quantile of the reference
    scores, read off the shipped model's reference scores (module docstring)."""
    fits = []  # per fold: site_val labels, scores and site; its reference scores; its own threshold
    for site_val, val in folds:
        y, s, site = read_predictions(site_val)
        fits.append((y, s, str(site[0]), reference_scores(val), threshold_at_sensitivity(y, s, target)))
    q = float(np.mean([quantile_of(ref, own) for *_, ref, own in fits]))
    value = float(np.quantile(reference_scores(target_val), q))
    per_fold = {str(site_val): {"site": site, "optimum": own, "quantile": quantile_of(ref, own),
                                # each fold model at the same quantile of its own reference scores
                                "at_quantile": sens_spec(y, s, float(np.quantile(ref, q)))}
                for (site_val, _), (y, s, site, ref, own) in zip(folds, fits, strict=True)}
    return {"value": value, "on": "tb_probability", "target_sensitivity": target,
            "chosen_on": "quantile of the reference (NIH val) scores at which out-of-site site_val "
                         "predictions reach the target; folds: " + ", ".join(str(a) for a, _ in folds)
                         + "; shipped model's reference: " + str(target_val),
            "reference_quantile": q, "per_fold": per_fold}


def write_threshold(predictions: list[str | Path], out: str | Path, target: float = TARGET_SENSITIVITY,
                    references: list[str | Path] | None = None, target_val: str | Path | None = None) -> dict:
    """Pooled (``lock_threshold``), or carried by quantile when ``references`` (one val predictions
    file per fold, in order) and ``target_val`` are given (``transfer_threshold``)."""
    if references:
        if len(references) != len(predictions) or target_val is None:
            raise ValueError("give one reference (val predictions) per fold and the shipped model's val predictions")
        t = transfer_threshold(list(zip(predictions, references, strict=True)), target_val, target)
    else:
        t = lock_threshold(predictions, target)
    atomic_write_text(out, json.dumps(t, indent=1))
    return t
