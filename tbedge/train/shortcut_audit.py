"""Acquisition-shortcut audit: what acquisition alone predicts about TB, and how a model scores on
TB / non-TB films matched on it.

Per group of films (pooled, pooled over the sites that have both classes, each site):
1. ``acquisition.film_features`` per film (no anatomy: intensity statistics, sharpness, borders,
   size, bit depth);
2. a cross-validated propensity p(TB | features) (``propensity.cv_propensity``) and its AUC:
   "what acquisition alone predicts" (1.0: the label can be read off how the film was made);
3. TB films matched 1:1 to non-TB films on that propensity (caliper 0.05) and the model's AUC over
   the matched sample (``metrics.matched_pair_auc``; CI by resampling pairs), beside its plain AUC.
   A model that learnt the acquisition, not the disease, falls to ~0.5 on the matched sample.

The report holds counts and figures only, never a file name or path (they may carry patient names).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..datasets import discover
from ..runtime.imaging import load_image
from ..schema import CLASS_NAMES, TbedgeInputError
from .acquisition import FEATURE_NAMES, film_features
from .metrics import bootstrap_auc, matched_pair_auc, roc_auc
from .propensity import cv_propensity, match_pairs, max_abs_smd

CALIPER = 0.05  # on the propensity (probability) scale
FOLDS = 5
MIN_PAIRS = 10  # fewer matched pairs give no matched AUC (the count is still reported)


def _num(v) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _auc_dict(d: dict) -> dict:
    return {"auc": _num(d["auc"]), "ci_low": _num(d["ci_low"]), "ci_high": _num(d["ci_high"])}


def audit_group(x: np.ndarray, y: np.ndarray, scores: np.ndarray | None = None, *, folds: int = FOLDS,
                caliper: float = CALIPER, n_boot: int = 2000, seed: int = 0, l2: float = 1.0) -> dict:
    """The audit of one group: ``x`` (n, features), ``y`` True = TB, optional model ``scores``."""
    y = np.asarray(y, bool)
    out: dict = {"n": int(len(y)), "n_tb": int(y.sum()), "n_non_tb": int((~y).sum())}
    if min(out["n_tb"], out["n_non_tb"]) < 2:
        out["note"] = "needs at least 2 TB and 2 non-TB films"
        return out
    prop, fold_aucs = cv_propensity(x, y, folds, seed, l2)
    out["top_features"] = top_features(x, y)
    out["features_auc"] = {**_auc_dict(bootstrap_auc(y, prop, n_boot, seed)),
                           "folds": [_num(a) for a in fold_aucs]}
    tb, ctrl = match_pairs(prop, y, caliper, seed)
    both = np.concatenate([tb, ctrl])
    out["matching"] = {"n_pairs": int(len(tb)), "tb_unmatched": int(out["n_tb"] - len(tb)), "caliper": caliper,
                       "max_abs_smd_before": _num(max_abs_smd(x, np.flatnonzero(y), np.flatnonzero(~y))),
                       "max_abs_smd_after": _num(max_abs_smd(x, tb, ctrl)),
                       "features_auc_matched": _num(roc_auc(y[both], prop[both])) if len(tb) else None}
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        out["model_auc"] = _auc_dict(bootstrap_auc(y, scores, n_boot, seed))
        out["model_matched_auc"] = (_auc_dict(matched_pair_auc(scores, tb, ctrl, n_boot, seed))
                                    if len(tb) >= MIN_PAIRS else None)
    return out


def top_features(x: np.ndarray, y: np.ndarray, n: int = 5) -> dict[str, float]:
    """The ``n`` features that alone separate TB best: their AUC (below 0.5: lower in TB films)."""
    aucs = {name: roc_auc(y, x[:, j]) for j, name in enumerate(FEATURE_NAMES)}
    return {k: _num(aucs[k]) for k in sorted(aucs, key=lambda k: -abs(aucs[k] - 0.5))[:n]}


def audit_arrays(x: np.ndarray, labels: Sequence[str], sites: Sequence[str], scores: np.ndarray | None = None,
                 **kw) -> dict:
    """Audit of labelled films: ``pooled``, ``pooled_tb_sites`` (only the sites with TB and non-TB
    films, when that differs) and ``per_site``. Non-TB = normal and other."""
    labels, sites = np.asarray(labels, str), np.asarray(sites, str)
    y = labels == "tb"
    site_names = sorted(set(sites))
    both = [s for s in site_names if y[sites == s].any() and (~y[sites == s]).any()]

    def group(mask):
        return audit_group(x[mask], y[mask], None if scores is None else scores[mask], **kw)

    rep = {"pooled": group(np.ones(len(y), bool))}
    if both and len(both) < len(site_names):
        rep["pooled_tb_sites"] = {"sites": both, **group(np.isin(sites, both))}
    rep["per_site"] = {s: group(sites == s) for s in site_names}
    return rep


def film_table(paths: Sequence[str | Path], log: Callable[[str], None] = print) -> tuple[np.ndarray, list, Counter]:
    """(features (n, F) with NaN rows for unreadable films, sha256 per film or None, reason counts)."""
    x = np.full((len(paths), len(FEATURE_NAMES)), np.nan)
    sha: list = [None] * len(paths)
    skipped: Counter = Counter()
    for i, p in enumerate(paths):
        try:
            img = load_image(p)
        except TbedgeInputError as e:
            skipped[e.reason] += 1
            continue
        x[i], sha[i] = film_features(img), img.meta.sha256
        if (i + 1) % 500 == 0:
            log(f"audit: features of {i + 1}/{len(paths)} films")
    if skipped:  # reason codes only: paths may carry patient names
        log(f"audit: {sum(skipped.values())} films unreadable ({dict(skipped)})")
    return x, sha, skipped


def audit_films(paths: Sequence[str | Path], labels: Sequence[str], sites: Sequence[str],
                scores: Sequence[float] | None = None, log: Callable[[str], None] = print, **kw) -> dict:
    """Features of every labelled film, then :func:`audit_arrays`; the full JSON-ready report."""
    labels = np.array(["" if v is None else str(v) for v in labels])
    keep = np.isin(labels, CLASS_NAMES)
    paths = [p for p, k in zip(paths, keep, strict=True) if k]
    x, _, skipped = film_table(paths, log)
    ok = ~np.isnan(x).any(1)
    if not ok.any():
        raise FileNotFoundError(f"none of the {len(paths)} labelled films could be read from here "
                                f"({dict(skipped)}); a crop cache stores the paths as they were given")
    sc = None if scores is None else np.asarray(scores, np.float64)[keep][ok]
    rep = audit_arrays(x[ok], labels[keep][ok], np.asarray(sites, str)[keep][ok], sc, **kw)
    return {"method": method(**kw), "n_films": int(ok.sum()), "unreadable": dict(skipped),
            "has_model_scores": scores is not None, **rep}


def method(folds: int = FOLDS, caliper: float = CALIPER, n_boot: int = 2000, seed: int = 0,
           l2: float = 1.0) -> dict:
    return {"features": list(FEATURE_NAMES), "label": "TB vs non-TB (normal + other)",
            "propensity": f"L2 logistic regression (lambda {l2}) on standardised features, "
                          f"stratified {folds}-fold cross-validation, seed {seed}",
            "matching": f"greedy 1:1 nearest neighbour without replacement on the out-of-fold propensity, "
                        f"TB films in seeded random order, caliper {caliper}",
            "matched_auc": "AUC of the model's TB score over the matched sample (matched TB vs matched non-TB); "
                           f"95 % CI: percentile bootstrap over pairs ({n_boot} resamples); none below "
                           f"{MIN_PAIRS} pairs"}


# -- scores from `tbedge evaluate classifier` (predictions.csv) or `tbedge screen` (results.jsonl) ------
def read_scores(path: str | Path) -> list[dict]:
    """Rows {path, score, label, site, sha256} from a predictions.csv (p_tb) or a results.jsonl
    (tb_probability of the films scored ok)."""
    path = Path(path)
    rows = []
    if path.suffix == ".jsonl":
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r.get("tb_probability") is not None:
                        rows.append({"path": r["input"], "score": float(r["tb_probability"]), "label": None,
                                     "site": None, "sha256": r.get("sha256")})
        return rows
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"path", "p_tb"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path.name}: needs the columns path and p_tb (as `tbedge evaluate classifier` writes)")
        for r in reader:
            rows.append({"path": r["path"], "score": float(r["p_tb"]), "label": r.get("label") or None,
                         "site": r.get("site") or None, "sha256": None})
    return rows


def _key(p: str | Path) -> str:
    return os.path.realpath(p)


def audit_folder(data: str | Path | None, predictions: str | Path | None = None, sets: str | tuple = "core",
                 log: Callable[[str], None] = print, **kw) -> dict:
    """Audit a labelled folder (``datasets.discover`` layouts, with ``sets``) and/or a predictions file.

    With ``data``: its labelled films; the model's scores (if ``predictions``) joined by path, else by
    the file's sha256 (results.jsonl), and films without a score left out (counted). Without
    ``data``: the films of a predictions.csv, which carries labels and sites."""
    if data is None and predictions is None:
        raise ValueError("give a data folder, a predictions file, or both")
    rows = read_scores(predictions) if predictions is not None else None
    if data is None:
        if not any(r["label"] for r in rows):
            raise ValueError("a predictions file without labels (results.jsonl) needs the labelled data folder")
        return audit_films([r["path"] for r in rows], [r["label"] for r in rows], [r["site"] or "" for r in rows],
                           [r["score"] for r in rows], log=log, **kw)
    samples = [s for s in discover(data, sets) if s.label in CLASS_NAMES]
    if rows is None:
        return audit_films([s.path for s in samples], [s.label for s in samples], [s.site for s in samples],
                           log=log, **kw)
    by_path = {_key(r["path"]): r["score"] for r in rows}
    by_sha = {r["sha256"]: r["score"] for r in rows if r["sha256"]}
    scores = [by_path.get(_key(s.path)) for s in samples]
    if by_sha and any(v is None for v in scores):  # paths differ (another machine, a mount): match the bytes
        from ..fsio import sha256_file

        scores = [v if v is not None else by_sha.get(sha256_file(s.path)) for s, v in zip(samples, scores,
                                                                                        strict=True)]
    have = [v is not None for v in scores]
    if not any(have):
        raise ValueError("no film of the data folder has a score in the predictions file")
    picked = [s for s, h in zip(samples, have, strict=True) if h]
    rep = audit_films([s.path for s in picked], [s.label for s in picked], [s.site for s in picked],
                      [v for v in scores if v is not None], log=log, **kw)
    rep["films_without_score"] = int(len(samples) - len(picked))
    return rep


def summary_lines(rep: dict) -> list[str]:
    """One line per group: acquisition-only AUC, and the model's plain and matched AUC."""

    def fmt(d):
        return "n/a" if not d else f"{d['auc']:.3f} ({d['ci_low']:.3f}-{d['ci_high']:.3f})"

    groups = [("pooled", rep["pooled"])]
    if "pooled_tb_sites" in rep:
        groups.append(("pooled TB sites", rep["pooled_tb_sites"]))
    groups += sorted(rep["per_site"].items())
    lines = []
    for name, g in groups:
        line = f"audit {name}: {g['n']} films ({g['n_tb']} TB)"
        if "note" in g:
            lines.append(f"{line}: {g['note']}")
            continue
        line += f"; acquisition-only AUC {fmt(g['features_auc'])}"
        if "model_auc" in g:
            line += (f"; model AUC {fmt(g['model_auc'])}, matched {fmt(g['model_matched_auc'])} "
                     f"on {g['matching']['n_pairs']} pairs")
        else:
            line += f"; {g['matching']['n_pairs']} matched pairs"
        lines.append(line)
    return lines
