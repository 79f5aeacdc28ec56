"""AdaBN probe (sixth round): re-estimate every BatchNorm layer's moving mean and variance on the held-out
site's site_val films (their images only, no labels), layer by layer with the earlier layers already
re-estimated, and compare the TB-vs-rest AUC before and after.

Usage: python research/adabn_probe.py CROPS.npz FOLD PARTS MODEL.keras...
  e.g. python research/adabn_probe.py runs/crops/m_no_montgomery_224.npz montgomery site_val runs/cls/f_mc_s1/best.keras
PARTS: site_val, or site_val,site_test (the films not used for the re-estimation).
"""
import sys

import keras
import numpy as np

from tbedge.train.classifier import crop_arrays
from tbedge.train.crops import load_crops
from tbedge.train.metrics import roc_auc
from tbedge.train.predict import load_keras


def adapt(model, x, chunk=32):
    """Set each BN layer's moving statistics to those of its input over ``x`` (in model order)."""
    for bn in (lyr for lyr in model.layers if isinstance(lyr, keras.layers.BatchNormalization)):
        sub = keras.Model(model.input, bn.input)
        s = s2 = 0.0
        n = 0
        for i in range(0, len(x), chunk):
            a = np.asarray(sub(x[i:i + chunk], training=False), dtype=np.float64)
            a = a.reshape(-1, a.shape[-1])
            s, s2, n = s + a.sum(0), s2 + (a * a).sum(0), n + len(a)
        m = s / n
        bn.moving_mean.assign(m.astype(np.float32))
        bn.moving_variance.assign(np.maximum(s2 / n - m * m, 0).astype(np.float32))


def main(crops, fold, parts, models):
    c = load_crops(crops)
    idx = c.parts(fold)
    wanted = parts.split(",")
    x = {p: crop_arrays(c, np.asarray(idx[p]), c.size, "masked").astype(np.float32) / 255
         for p in {"site_val", *wanted}}
    y = {p: c.label[np.asarray(idx[p])] == "tb" for p in x}
    gains = {p: [] for p in wanted}

    def aucs(m):
        return {p: roc_auc(y[p], m.predict(x[p], verbose=0, batch_size=32)[0][:, 1]) for p in wanted}

    for path in models:
        m = load_keras(path)
        before = aucs(m)
        adapt(m, x["site_val"])
        after = aucs(m)
        for p in wanted:
            gains[p].append(after[p] - before[p])
        print(path, " ".join(f"{p} {before[p]:.4f} -> {after[p]:.4f}" for p in wanted), flush=True)
    print(" ".join(f"{p}: mean gain {np.mean(gains[p]):+.4f}" for p in wanted))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
