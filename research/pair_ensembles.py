"""Does averaging two seeds help? For each pair of `tbedge evaluate` prediction files of the same part,
the TB-vs-rest AUC of each member, of the pair (mean of the members' log-probabilities = logit average),
and the pair's gain over its members' mean. The sixth round's ensemble rule reads the mean gain.

Usage: python research/pair_ensembles.py A/predictions.csv,B/predictions.csv [C.csv,D.csv ...]
"""
import csv
import sys

import numpy as np

from tbedge.train.metrics import roc_auc


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    logp = np.log(np.maximum([[float(r[k]) for k in ("p_normal", "p_tb", "p_other")] for r in rows], 1e-12))
    return [r["path"] for r in rows], np.array([r["label"] == "tb" for r in rows]), logp


def tb_auc(y, logp):
    p = np.exp(logp - logp.max(1, keepdims=True))
    return roc_auc(y, p[:, 1] / p.sum(1))


def main(pairs):
    gains = []
    for pair in pairs:
        (pa, ya, la), (pb, yb, lb) = (read(p) for p in pair.split(","))
        if pa != pb:
            sys.exit(f"{pair}: the two files list different films (same part and crops needed)")
        sa, sb, sp = tb_auc(ya, la), tb_auc(ya, lb), tb_auc(ya, (la + lb) / 2)
        gains.append(sp - (sa + sb) / 2)
        print(f"{pair}: singles {sa:.4f} {sb:.4f}  pair {sp:.4f}  gain {gains[-1]:+.4f}")
    print(f"mean gain over {len(gains)} pairs: {np.mean(gains):+.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
