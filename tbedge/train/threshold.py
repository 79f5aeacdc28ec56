"""Lock the operating threshold on out-of-site validation predictions (site-val of each fold).

Thresholds from internal validation do not transfer: score distributions shift between sites.
So the threshold is chosen on predictions of fold models for the site each never saw, pooled
over folds, to reach the target sensitivity with the best specificity there.
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


def write_threshold(predictions: list[str | Path], out: str | Path, target: float = TARGET_SENSITIVITY) -> dict:
    t = lock_threshold(predictions, target)
    atomic_write_text(out, json.dumps(t, indent=1))
    return t
