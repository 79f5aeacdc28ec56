"""Screening metrics in plain numpy: ROC AUC with bootstrap CIs, paired ΔAUC, sensitivity and
specificity at a threshold, the "sensitivity >= 0.90, best specificity" threshold rule, the 3x3
confusion matrix and per-site / per-source breakdowns. Convention: score >= threshold -> refer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..fsio import atomic_path
from ..schema import CLASS_NAMES

TB = CLASS_NAMES.index("tb")
TARGET_SENSITIVITY = 0.90  # WHO target product profile for TB triage: >= 90 % sensitivity


def _binary(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return y, s


def rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties share their mean rank (as scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    edges = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    avg = (edges[:-1] + edges[1:] - 1) / 2 + 1
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.repeat(avg, np.diff(edges))
    return r


def roc_auc(y, s) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    y, s = _binary(y, s)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError("ROC AUC needs both positives and negatives")
    r = rank_average(s)
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def roc_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending; the first point is (0, 0) at +inf."""
    y, s = _binary(y, s)
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # the last index of each run of equal scores
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(~ys)[last]
    npos, nneg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return (np.r_[0.0, fp / nneg], np.r_[0.0, tp / npos], np.r_[np.inf, ss[last]])


def _stratified_indices(rng: np.random.Generator, y: np.ndarray, n_boot: int) -> np.ndarray:
    """Resample positives and negatives separately, so every replicate has both classes."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return np.concatenate([pos[rng.integers(0, len(pos), (n_boot, len(pos)))],
                           neg[rng.integers(0, len(neg), (n_boot, len(neg)))]], axis=1)


def _auc_rows(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    npos = int(y[idx[0]].sum())
    nneg = idx.shape[1] - npos
    out = np.empty(len(idx))
    for i, row in enumerate(idx):
        r = rank_average(s[row])
        out[i] = (r[:npos].sum() - npos * (npos + 1) / 2) / (npos * nneg)  # positives come first
    return out


def bootstrap_auc(y, s, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """AUC with a stratified percentile bootstrap (1 - alpha) CI, seeded."""
    y, s = _binary(y, s)
    auc = roc_auc(y, s)
    boots = _auc_rows(y, s, _stratified_indices(np.random.default_rng(seed), y, n_boot))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"auc": auc, "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot,
            "n_pos": int(y.sum()), "n_neg": int((~y).sum())}


def matched_pair_auc(s, tb_idx, ctrl_idx, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """AUC over a matched sample (the TB films of the pairs against their matched non-TB films), with
    a percentile bootstrap CI that resamples whole pairs (the matching is the design, so it is kept)."""
    s = np.asarray(s, dtype=np.float64).ravel()
    tb_idx, ctrl_idx = np.asarray(tb_idx, int), np.asarray(ctrl_idx, int)
    if len(tb_idx) != len(ctrl_idx) or len(tb_idx) == 0:
        raise ValueError("matched pairs need equal, non-zero numbers of TB and non-TB films")
    y = np.zeros(len(s), bool)
    y[tb_idx] = True
    both = np.concatenate([tb_idx, ctrl_idx])
    b = np.random.default_rng(seed).integers(0, len(tb_idx), (n_boot, len(tb_idx)))
    boots = _auc_rows(y, s, np.concatenate([tb_idx[b], ctrl_idx[b]], axis=1))  # positives first
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"auc": roc_auc(y[both], s[both]), "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot,
            "n_pairs": int(len(tb_idx))}


def paired_bootstrap_delta(y, s_a, s_b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """ΔAUC = AUC(a) - AUC(b) on the same cases, CI from shared resamples, two-sided p."""
    y, s_a = _binary(y, s_a)
    _, s_b = _binary(y, s_b)
    idx = _stratified_indices(np.random.default_rng(seed), y, n_boot)
    d = _auc_rows(y, s_a, idx) - _auc_rows(y, s_b, idx)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return {"delta": roc_auc(y, s_a) - roc_auc(y, s_b), "ci_low": float(lo), "ci_high": float(hi),
            "p_two_sided": p, "n_boot": n_boot}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, c - h), min(1.0, c + h))


def sens_spec(y, s, threshold: float) -> dict:
    """Sensitivity and specificity (with Wilson 95 % CIs) of 'score >= threshold'."""
    y, s = _binary(y, s)
    call = s >= threshold
    tp, fn = int((call & y).sum()), int((~call & y).sum())
    tn, fp = int((~call & ~y).sum()), int((call & ~y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {"threshold": float(threshold), "sensitivity": sens, "sensitivity_ci": list(wilson(tp, tp + fn)),
            "specificity": spec, "specificity_ci": list(wilson(tn, tn + fp)),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def threshold_at_sensitivity(y, s, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold whose sensitivity is >= target, i.e. the best specificity there.

    It is the k-th highest positive score with k = ceil(target * n_pos): any higher threshold
    loses that positive (and its ties) and falls below the target.
    """
    y, s = _binary(y, s)
    pos = np.sort(s[y])[::-1]
    if len(pos) == 0:
        raise ValueError("threshold selection needs positives")
    if not 0 < target <= 1:
        raise ValueError("target sensitivity must be in (0, 1]")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[k - 1])


def confusion(true_idx, pred_idx, n: int = len(CLASS_NAMES)) -> np.ndarray:
    """n x n counts: rows = true class, columns = predicted class."""
    t, p = np.asarray(true_idx, int).ravel(), np.asarray(pred_idx, int).ravel()
    if t.shape != p.shape:
        raise ValueError("true and predicted class arrays differ in length")
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


# -- the evaluation dict used by `tbedge evaluate` -----------------------------------------
def _group(y, s, thr, mask) -> dict:
    yy, ss = y[mask], s[mask]
    out = {"n": int(mask.sum()), "n_tb": int(yy.sum()),
           "refer_rate": float(np.mean(ss >= thr)) if len(ss) else None,
           "mean_tb_probability": float(ss.mean()) if len(ss) else None}
    if yy.any() and (~yy).any():
        out["auc"] = roc_auc(yy, ss)
    if yy.any():
        out["sensitivity"] = float(np.mean(ss[yy] >= thr))
    if (~yy).any():
        out["specificity"] = float(np.mean(ss[~yy] < thr))
    return out


def evaluate(predictions: dict, threshold: float | None = None, n_boot: int = 2000, seed: int = 0,
             target_sensitivity: float = TARGET_SENSITIVITY) -> dict:
    """Metrics for labelled predictions.

    ``predictions``: ``probabilities`` (N, 3) in CLASS_NAMES order and ``label`` (N,) class names
    ('' or None = unlabelled, ignored); optional ``site``, ``source`` and ``fallback`` arrays.
    ``threshold`` (on the TB probability) should be the locked one; when None it is chosen here
    with the sensitivity rule, which is optimistic on the same data (``threshold_source`` says so).
    """
    probs = np.asarray(predictions["probabilities"], dtype=np.float64)
    labels = np.array(["" if v is None else str(v) for v in predictions["label"]])
    if probs.ndim != 2 or probs.shape[1] != len(CLASS_NAMES) or len(probs) != len(labels):
        raise ValueError(f"probabilities must be (N, {len(CLASS_NAMES)}) matching the labels")
    keep = np.isin(labels, CLASS_NAMES)
    if not keep.any():
        raise ValueError("no labelled predictions to evaluate")
    probs, labels = probs[keep], labels[keep]
    site_all = np.asarray(predictions.get("site", np.full(keep.shape, ""))).astype(str)
    site = site_all[keep]
    source = np.asarray(predictions.get("source", site_all)).astype(str)[keep]
    y, s = labels == "tb", probs[:, TB]
    res: dict = {"n": int(len(y)), "n_tb": int(y.sum()), "class_counts": {c: int((labels == c).sum())
                                                                         for c in CLASS_NAMES}}
    if y.any() and (~y).any():
        res["auc_tb_vs_rest"] = bootstrap_auc(y, s, n_boot, seed)
        nt = labels != "other"
        if (y & nt).any() and (~y & nt).any():
            res["auc_tb_vs_normal"] = bootstrap_auc(y[nt], s[nt], n_boot, seed)
    if threshold is None:
        if not y.any():
            raise ValueError("no TB cases: pass the locked threshold")
        threshold, res["threshold_source"] = threshold_at_sensitivity(y, s, target_sensitivity), "chosen_here"
    else:
        res["threshold_source"] = "given"
    res["threshold"] = float(threshold)
    res["at_threshold"] = sens_spec(y, s, threshold)
    true_idx = np.array([CLASS_NAMES.index(c) for c in labels])
    res["confusion"] = {"classes": list(CLASS_NAMES),
                        "rows_true_cols_pred": confusion(true_idx, probs.argmax(1)).tolist()}
    res["per_site"] = {k: _group(y, s, threshold, site == k) for k in sorted(set(site))}
    res["per_source"] = {k: _group(y, s, threshold, source == k) for k in sorted(set(source))}
    if "nih_no_finding" in res["per_source"]:
        res["nih_no_finding_specificity"] = 1 - res["per_source"]["nih_no_finding"]["refer_rate"]
    if "nih_pneumonia" in res["per_source"]:
        pn = source == "nih_pneumonia"
        res["pneumonia_to_tb_rate"] = res["per_source"]["nih_pneumonia"]["refer_rate"]
        res["pneumonia_argmax"] = {c: float(np.mean(probs[pn].argmax(1) == i))
                                   for i, c in enumerate(CLASS_NAMES)}
    if "fallback" in predictions:
        fb = np.asarray(predictions["fallback"], bool)[keep]
        res["fallback_crops"] = int(fb.sum())
    return res


def plot_roc(curves: dict[str, tuple], path: str | Path, points: dict[str, tuple[float, float]] | None = None,
             title: str = "TB vs rest") -> Path:
    """ROC curves {name: (y, scores)} to a PNG; ``points`` marks operating points (fpr, tpr)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    for name, (fx, ty) in (points or {}).items():
        ax.plot([fx], [ty], "o", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure durably (temp file, fsync, rename) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
