"""How much can a held-out site's site_val see? For a lever (models LEVER, paired by seed with RECIPE),
the mean paired AUC effect on site_val and site_test, its bootstrap SD over films, and where the
val - test gap falls among random re-splits of the site's films (same part sizes). Analysis only.

Usage: python research/split_noise.py CROPS.npz FOLD --recipe M1 M2 ... --lever L1 L2 ...
       python research/split_noise.py CROPS.npz FOLD --recipe M1 M2 ... --adabn   (lever = AdaBN of the recipe)
"""
import argparse

import numpy as np
from adabn_probe import adapt

from tbedge.train.classifier import crop_arrays
from tbedge.train.crops import load_crops
from tbedge.train.metrics import roc_auc
from tbedge.train.predict import load_keras


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crops")
    ap.add_argument("fold")
    ap.add_argument("--recipe", nargs="+", required=True)
    ap.add_argument("--lever", nargs="+")
    ap.add_argument("--adabn", action="store_true")
    ap.add_argument("--draws", type=int, default=300)
    a = ap.parse_args()
    c = load_crops(a.crops)
    parts = c.parts(a.fold)
    iv, it = np.asarray(parts["site_val"]), np.asarray(parts["site_test"])
    x = crop_arrays(c, np.concatenate([iv, it]), c.size, "masked").astype(np.float32) / 255
    y = c.label[np.concatenate([iv, it])] == "tb"
    is_val = np.r_[np.ones(len(iv), bool), np.zeros(len(it), bool)]

    def tb(m):
        return m.predict(x, verbose=0, batch_size=32)[0][:, 1]

    rec = [tb(load_keras(p)) for p in a.recipe]
    if a.adabn:
        lev = []
        for p in a.recipe:
            m = load_keras(p)
            adapt(m, x[is_val])
            lev.append(tb(m))
    else:
        lev = [tb(load_keras(p)) for p in a.lever]

    def effect(idx):
        return np.mean([roc_auc(y[idx], s[idx]) - roc_auc(y[idx], r[idx]) for s, r in zip(lev, rec, strict=True)])

    rng = np.random.default_rng(0)

    def boot_sd(idx):
        draws = (rng.choice(idx, len(idx)) for _ in range(a.draws))
        return np.std([effect(b) for b in draws if 0 < y[b].sum() < len(b)])

    val, test = np.flatnonzero(is_val), np.flatnonzero(~is_val)
    gap = effect(val) - effect(test)
    gaps = []
    for _ in range(a.draws):
        p = rng.permutation(len(y))
        gaps.append(effect(p[:len(val)]) - effect(p[len(val):]))
    gaps = np.array(gaps)
    print(f"effect: site_val {effect(val):+.4f} (bootstrap SD {boot_sd(val):.4f}), site_test {effect(test):+.4f} "
          f"(SD {boot_sd(test):.4f}); val - test gap {gap:+.4f}, met or exceeded in "
          f"{np.mean(np.abs(gaps) >= abs(gap)):.0%} of {a.draws} random re-splits (gap SD {np.std(gaps):.4f})")


if __name__ == "__main__":
    main()
