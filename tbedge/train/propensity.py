"""A propensity score from acquisition features and 1:1 matching on it, in plain numpy.

- ``fit_logistic``: L2-penalised logistic regression on standardised features (Newton steps; the
  penalty keeps it finite when the classes separate, which acquisition features often do).
- ``cv_propensity``: stratified k-fold, seeded; every film is scored by a model that never saw it.
- ``match_pairs``: greedy nearest-neighbour matching without replacement, TB films in a seeded
  random order, each to the closest unused non-TB film within the caliper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import roc_auc


@dataclass(frozen=True)
class Logistic:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # intercept first

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = _design(x, self.mean, self.scale) @ self.coef
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _design(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - mean) / scale
    return np.column_stack([np.ones(len(z)), np.clip(z, -10, 10)])  # clip: one odd film cannot dominate


def _loss(a: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> float:
    z = a @ w
    return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum(w[1:] ** 2))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 100) -> Logistic:
    """Fit p(y=1 | x); features standardised on this training set (constant ones left at 0)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-12] = 1.0
    a = _design(x, mean, scale)
    pen = np.full(a.shape[1], l2)
    pen[0] = 0.0  # the intercept is not shrunk
    w = np.zeros(a.shape[1])
    loss = _loss(a, y, w, l2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -40, 40)))
        grad = a.T @ (p - y) + pen * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        for _ in range(30):  # halve a step that does not lower the loss (Newton can overshoot)
            new = _loss(a, y, w - step, l2)
            if new <= loss:
                break
            step = step / 2
        w, loss = w - step, min(new, loss)
        if np.max(np.abs(step)) < 1e-8:
            break
    return Logistic(mean, scale, w)


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold number per film: each class dealt round-robin over k folds in a seeded random order."""
    y = np.asarray(y, bool)
    fold = np.empty(len(y), int)
    rng = np.random.default_rng(seed)
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(y == cls))
        fold[members] = np.arange(len(members)) % k
    return fold


def cv_propensity(x: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0,
                  l2: float = 1.0) -> tuple[np.ndarray, list[float]]:
    """(out-of-fold p(TB | features) per film, the AUC inside each fold). k shrinks to the smaller
    class size; at least 2 films of each class are needed."""
    x, y = np.asarray(x, np.float64), np.asarray(y, bool)
    k = min(k, int(y.sum()), int((~y).sum()))
    if k < 2:
        raise ValueError("cross-validation needs at least 2 TB and 2 non-TB films")
    fold = stratified_folds(y, k, seed)
    prop = np.empty(len(y))
    aucs = []
    for f in range(k):
        test = fold == f
        prop[test] = fit_logistic(x[~test], y[~test], l2).predict(x[test])
        aucs.append(roc_auc(y[test], prop[test]))
    return prop, aucs


def match_pairs(prop: np.ndarray, y: np.ndarray, caliper: float = 0.05,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(TB indices, matched non-TB indices): greedy 1:1 nearest neighbour on ``prop`` without
    replacement, |difference| <= ``caliper``. TB films without a partner in reach stay unmatched."""
    prop, y = np.asarray(prop, np.float64), np.asarray(y, bool)
    ctrl = np.flatnonzero(~y)
    free = np.ones(len(ctrl), bool)
    tb_out, ctrl_out = [], []
    for i in np.random.default_rng(seed).permutation(np.flatnonzero(y)):  # random order: no film class first
        d = np.where(free, np.abs(prop[ctrl] - prop[i]), np.inf)
        j = int(np.argmin(d)) if len(d) else -1
        if j >= 0 and d[j] <= caliper:
            free[j] = False
            tb_out.append(i)
            ctrl_out.append(ctrl[j])
    return np.array(tb_out, int), np.array(ctrl_out, int)


def max_abs_smd(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Largest standardised mean difference of any feature between rows ``a`` and ``b`` (balance check:
    below ~0.1-0.25 the groups look alike on that feature)."""
    x = np.asarray(x, np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    xa, xb = x[a], x[b]
    pooled = np.sqrt((xa.var(0) + xb.var(0)) / 2)
    diff = np.abs(xa.mean(0) - xb.mean(0))
    flat = pooled < 1e-12  # constant in both groups: equal (0) or wholly apart (inf, e.g. two film sizes)
    smd = np.where(flat, np.where(diff > 1e-12, np.inf, 0.0), diff / np.where(flat, 1.0, pooled))
    return float(smd.max())
