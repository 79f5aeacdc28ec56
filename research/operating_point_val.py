"""Record only (seventh round, research/selection-rules.md): a recipe variant at its own locked operating point, on
internal val. The threshold is locked by the shipped rule (`train.threshold.lock_threshold`: pooled out-of-site
site_val predictions of the fold models, sensitivity >= 0.90); the internal model's val predictions are then read
at it: TB sensitivity, specificity of Shenzhen/Montgomery normals and of NIH no-finding films, pneumonia referred.
Also printed: the val AUC TB vs rest and TB vs normal on the Shenzhen/Montgomery films alone, and each fold
model's own site_val sensitivity / specificity at the pooled threshold (how far the threshold carries).

Usage: python research/operating_point_val.py NAME INTERNAL_VAL.csv FOLD_SITE_VAL.csv...   (prints one line)"""
import csv
import sys

import numpy as np

from tbedge.train.metrics import roc_auc, sens_spec
from tbedge.train.threshold import lock_threshold, read_predictions

RATES = ("tb_sensitivity", "site_normals_referred", "nih_normal_referred", "pneumonia_referred")


def val_figures(internal, t):
    """An internal model's val predictions.csv read at threshold t: the AUCs and the ``RATES`` (floats), and
    under "n" the number of films behind each rate."""
    rows = list(csv.DictReader(open(internal)))
    p = np.array([float(r["p_tb"]) for r in rows])
    src, lab = np.array([r["source"] for r in rows]), np.array([r["label"] for r in rows])
    refer = p >= t
    site_normal = (lab == "normal") & ~np.char.startswith(src.astype(str), "nih")
    sites = site_normal | (lab == "tb")
    groups = dict(zip(RATES, (lab == "tb", site_normal, (lab == "normal") & ~site_normal, lab == "other"),
                      strict=True))
    return {"auc_tb_vs_rest": roc_auc(lab == "tb", p), "auc_tb_vs_site_normal": roc_auc(lab[sites] == "tb", p[sites]),
            **{k: float(refer[m].mean()) for k, m in groups.items()}, "n": {k: int(m.sum()) for k, m in groups.items()}}


def main(name, internal, *folds):
    t = lock_threshold(list(folds))["value"]
    f = val_figures(internal, t)

    def rate(k):
        return f"{f[k]:.2f} (n {f['n'][k]})"

    print(f"{name}: val AUC TB vs rest {f['auc_tb_vs_rest']:.3f}, TB vs normal on Shenzhen/Montgomery "
          f"{f['auc_tb_vs_site_normal']:.3f}; threshold {t:.4g}; val TB sensitivity {rate('tb_sensitivity')}; "
          f"referred: Shenzhen/Montgomery normals {rate('site_normals_referred')}, "
          f"NIH no-finding {rate('nih_normal_referred')}, pneumonia {rate('pneumonia_referred')}")
    per_fold = [sens_spec(*read_predictions(f)[:2], t) for f in folds]
    per_fold = [f"{m['sensitivity']:.2f}/{m['specificity']:.2f}" for m in per_fold]
    print(f"  fold models' site_val sensitivity/specificity at it: {', '.join(per_fold)}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
