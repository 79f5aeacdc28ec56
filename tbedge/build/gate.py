"""Accuracy gate: a reduced-precision build against its fp32 source on real ``val`` images.

Both builds run end to end (own lung model -> cleaning -> crop -> own classifier), as at runtime.
Limits: classifier ΔAUC (TB vs rest) <= 0.005, with a paired-bootstrap 95 % CI reported; at most
one TB-positive film changing side of the locked threshold; lungs Dice drop <= 0.005 (cleaned
masks vs ground truth, val images with masks). ``val`` is disjoint from the calibration set
(``calib`` part) by construction of the split.

AUC and the bootstrap are a few numpy lines here (tbedge/train/metrics.py did not exist when this
was written; switch to it once it does, the definitions are the standard ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets, schema
from ..errors import TbedgeError
from ..runtime import lungs as L
from ..runtime.imaging import load_image

MAX_DELTA_AUC = 0.005
MAX_TB_FLIPS = 1
MAX_DICE_DROP = 0.005
N_BOOT = 2000


class GateFailure(TbedgeError):
    def __init__(self, result: GateResult):
        self.result = result
        super().__init__("accuracy gate failed: " + "; ".join(result.failures))


@dataclass
class GateResult:
    n_images: int
    n_tb: int
    n_masks: int
    auc_fp32: float | None
    auc_reduced: float | None
    delta_auc: float | None  # fp32 - reduced (a drop is positive)
    delta_auc_ci95: list[float] | None
    tb_flips: int
    dice_fp32: float | None
    dice_reduced: float | None
    dice_drop: float | None
    limits: dict = field(default_factory=lambda: {"delta_auc": MAX_DELTA_AUC, "tb_flips": MAX_TB_FLIPS,
                                                  "dice_drop": MAX_DICE_DROP})
    failures: list[str] = field(default_factory=list)
    split: str = "val"
    batch_1: dict | None = None  # the reduced build scored one film at a time (the figures above: batches of 8)
    val_histogram: dict | None = None  # the reduced build's val TB scores (schema.TB_SCORE_EDGES), TB / not TB

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with tied scores counted half."""
    y = np.asarray(y, bool)
    s = np.asarray(s, np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    ss = s[order]
    i = 0
    while i < len(ss):  # average ranks over ties
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def paired_bootstrap_delta_auc(y, s_ref, s_new, n_boot: int = N_BOOT,
                               seed: int = 0) -> tuple[float, list[float]]:
    """AUC(ref) - AUC(new) and its 95 % percentile CI, resampling films jointly for both."""
    y, s_ref, s_new = np.asarray(y, bool), np.asarray(s_ref), np.asarray(s_new)
    delta = auc(y, s_ref) - auc(y, s_new)
    rng = np.random.default_rng(seed)
    ds = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        ds.append(auc(y[idx], s_ref[idx]) - auc(y[idx], s_new[idx]))
    lo, hi = (np.percentile(ds, [2.5, 97.5]) if ds else (np.nan, np.nan))
    return float(delta), [float(lo), float(hi)]


def threshold_flips(y, s_ref, s_new, thr: float) -> int:
    """TB-positive films whose triage side of ``thr`` differs between the two builds."""
    y = np.asarray(y, bool)
    return int(np.sum(y & ((np.asarray(s_ref) >= thr) != (np.asarray(s_new) >= thr))))


@dataclass
class _Run:
    tb: list[float]
    dice: list[float]


def _run(lungs_model: Path, classifier_model: Path | None, samples: list, threads: int,
         classifier_size: int | None, tb_index: int, batch: int = 8, prep: str = "box") -> _Run:
    from ..runtime.runners.onnxruntime import OnnxRuntimeRunner

    tb, dice = [], []
    lr = OnnxRuntimeRunner(lungs_model, threads=threads, name="lungs")
    cr = OnnxRuntimeRunner(classifier_model, threads=threads, name="classifier") if classifier_model else None
    with lr:
        lung_size = int(lr.inputs()[0].shape[1])
        if cr:
            cr.activate()
        try:
            for i in range(0, len(samples), batch):
                chunk = samples[i:i + batch]
                imgs = [load_image(s.path).pixels for s in chunk]
                x = np.stack([L.preprocess(p, lung_size) for p in imgs])
                heat = lr.infer({"image": x})["mask"][..., 0]
                res = [L.analyse(h, p.shape) for h, p in zip(heat, imgs, strict=True)]
                for s, p, r in zip(chunk, imgs, res, strict=True):
                    if s.mask is not None:
                        gt = datasets.read_mask(s.mask)
                        dice.append(L.dice(L.mask_to_native(r.mask, p.shape), gt))
                if cr:
                    crops = np.stack([L.classifier_input(p, r, classifier_size, prep)
                                      for p, r in zip(imgs, res, strict=True)])
                    probs = cr.infer({"image": crops})["probabilities"]
                    tb.extend(probs[:, tb_index].tolist())
        finally:
            if cr:
                cr.deactivate()
    return _Run(tb, dice)


def gate_samples(data_root: str | Path, split_seed: int = 0) -> list:
    return datasets.split(datasets.discover(data_root), seed=split_seed)["val"]


def _compare(y: np.ndarray, a: _Run, b: _Run, threshold: float, n_boot: int, label: str) -> tuple[dict, list[str]]:
    """The gate's figures and failures of run ``b`` against the fp32 run ``a`` (``label`` names b's batch)."""
    f = {"auc_fp32": None, "auc_reduced": None, "delta_auc": None, "delta_auc_ci95": None, "tb_flips": 0,
         "dice_fp32": None, "dice_reduced": None, "dice_drop": None}
    fails = []
    if a.tb:
        s_ref, s_new = np.array(a.tb), np.array(b.tb)
        f["auc_fp32"], f["auc_reduced"] = auc(y, s_ref), auc(y, s_new)
        f["delta_auc"], f["delta_auc_ci95"] = paired_bootstrap_delta_auc(y, s_ref, s_new, n_boot)
        f["tb_flips"] = threshold_flips(y, s_ref, s_new, threshold)
        if f["delta_auc"] > MAX_DELTA_AUC:
            fails.append(f"classifier AUC drops by {f['delta_auc']:.4f}{label} (limit {MAX_DELTA_AUC}; 95 % CI "
                         f"{f['delta_auc_ci95'][0]:.4f}..{f['delta_auc_ci95'][1]:.4f})")
        if f["tb_flips"] > MAX_TB_FLIPS:
            fails.append(f"{f['tb_flips']} TB-positive films change side of the threshold {threshold}{label} "
                         f"(limit {MAX_TB_FLIPS})")
    if a.dice:
        f["dice_fp32"], f["dice_reduced"] = float(np.mean(a.dice)), float(np.mean(b.dice))
        f["dice_drop"] = f["dice_fp32"] - f["dice_reduced"]
        if f["dice_drop"] > MAX_DICE_DROP:
            fails.append(f"lungs Dice drops by {f['dice_drop']:.4f}{label} (limit {MAX_DICE_DROP}; "
                         f"{f['dice_fp32']:.4f} -> {f['dice_reduced']:.4f})")
    return f, fails


def evaluate(fp32: dict[str, Path], reduced: dict[str, Path], data_root: str | Path, threshold: float,
             tb_index: int = 1, classifier_size: int | None = None, threads: int = 0,
             max_images: int | None = None, prep: str = "box",
             progress: Callable[[str], None] | None = None, n_boot: int = N_BOOT) -> GateResult:
    """Run both builds on the val part and compare. ``fp32``/``reduced``: {"lungs", "classifier"} paths.

    The reduced build runs twice: in batches of 8 (``screen``) and one film at a time (``watch``/``listen``
    score each film as it arrives). Its int8 scores differ between the two: reductions inside the graph
    (ImageNorm's means) sum in a batch-dependent order, and a 1e-7 change can move a value across a
    quantisation step. So each path must pass on its own."""
    samples = gate_samples(data_root)
    if max_images:  # a fixed pseudo-random subset spanning sites and labels (quick checks only)
        samples = sorted(samples, key=lambda s: datasets.unit_hash(s.patient, 11))[:max_images]
    y = np.array([s.label == "tb" for s in samples])
    runs = {}
    for tag, paths, batch in (("fp32", fp32, 8), ("reduced", reduced, 8), ("reduced_b1", reduced, 1)):
        if progress:
            progress(f"gate: running the {tag.replace('_b1', '')} build on {len(samples)} val images, "
                     f"batch {batch}")
        runs[tag] = _run(paths["lungs"], paths.get("classifier"), samples, threads, classifier_size,
                         tb_index, batch=batch, prep=prep)
    f, fails = _compare(y, runs["fp32"], runs["reduced"], threshold, n_boot, "")
    f1, fails1 = _compare(y, runs["fp32"], runs["reduced_b1"], threshold, n_boot, " one film at a time")
    r = GateResult(len(samples), int(y.sum()), len(runs["fp32"].dice), **f)
    r.failures = fails + fails1
    if runs["reduced"].tb:  # what a site's scores can be held against (``tbedge ui``'s site panel)
        score = 100.0 * np.array(runs["reduced"].tb)
        r.val_histogram = {"edges": schema.tb_score_edges(), "part": "val",
                           "tb": schema.tb_score_histogram(score[y]), "not_tb": schema.tb_score_histogram(score[~y])}
    r.batch_1 = {k: f1[k] for k in ("auc_reduced", "delta_auc", "delta_auc_ci95", "tb_flips", "dice_reduced",
                                    "dice_drop")}
    return r
