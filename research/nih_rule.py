"""The eighth-round rule (research/selection-rules.md, declared before any run): `--nih-not-tb all` against the
recipe at each one's operating point, on val and site_val only. Prints every part, its bar and whether it holds.

Usage: python research/nih_rule.py RUNS_P2 CROPS [--test]   (the power-2 copies made by `research/study.sh lane9c`;
CROPS: the internal crop cache, runs/crops/m_main_224.npz)
--test (only after the decision, `lane9d`): the same figures on internal test and the fold models' site_test.
Reads RUNS_P2/<run>/eval_val/predictions.csv for the internal runs and RUNS_P2/<run>/eval_site_val/predictions.csv
for the fold runs; the internal runs' val heat-map check is computed once into RUNS_P2/<run>/cam_val.json."""
import sys
from pathlib import Path

import numpy as np
from cam_hit_keras import cam_hit_cached
from operating_point_val import RATES, val_figures

from tbedge.train.metrics import roc_auc, sens_spec
from tbedge.train.threshold import lock_threshold, read_predictions

SEEDS = (90, 91, 92)
CANDIDATE = tuple(f"n_main_s{s}" for s in SEEDS)
RECIPE = ("f_main_s0", "f_main_s1", "g_main_s5", "w_main_s80", "w_main_s81")
RECIPE_THRESHOLD = 0.035259  # shipped: the session-6 power-2 fold models' lock


def fold_predictions(root: Path) -> dict[str, list[Path]]:
    """The fresh fold models' site_val predictions, per held-out direction (mc: Shenzhen -> Montgomery)."""
    return {d: [root / f"n_{d}_s{s}" / "eval_site_val" / "predictions.csv" for s in SEEDS] for d in ("mc", "sz")}


def candidate_threshold(folds: dict[str, list[Path]]) -> float:
    """T_n: the shipped locking rule on all six fresh fold models' site_val predictions."""
    return lock_threshold(folds["mc"] + folds["sz"])["value"]


def val_cam(run: Path, crops) -> float:
    return cam_hit_cached(run / "best.keras", crops, "val", run / "cam_val.json")


def main(root, crops):
    root = Path(root)
    cand = CANDIDATE
    folds = fold_predictions(root)
    t = candidate_threshold(folds)
    one_way = {d: lock_threshold(f)["value"] for d, f in folds.items()}
    cf = [val_figures(root / r / "eval_val" / "predictions.csv", t) for r in cand]
    rf = [val_figures(root / r / "eval_val" / "predictions.csv", RECIPE_THRESHOLD) for r in RECIPE]

    def mean(figs, k):
        return float(np.mean([f[k] for f in figs]))

    def show(figs, k):
        return " / ".join(f"{f[k]:.3f}" for f in figs)

    sens = [f["tb_sensitivity"] for f in cf]
    factor = max(one_way.values()) / min(one_way.values())
    cam_c, cam_r = [val_cam(root / r, crops) for r in cand], [val_cam(root / r, crops) for r in RECIPE]
    parts = [
        ("a", "val TB sensitivity at T_n (mean; min)", f"{np.mean(sens):.3f}; {min(sens):.3f}", ">= 0.85; >= 0.80",
         np.mean(sens) >= 0.85 and min(sens) >= 0.80),
    ]
    for key, label, bar in (("site_normals_referred", "b", 0.03), ("pneumonia_referred", "c", 0.03)):
        c, r = mean(cf, key), mean(rf, key)
        parts.append((label, f"val {key} (candidate {show(cf, key)}; recipe {show(rf, key)})",
                      f"{c:.3f} vs {r:.3f}", f"<= recipe + {bar}", c <= r + bar))
    parts.append(("d", f"one-direction lock (MC folds {one_way['mc']:.4g}, SZ folds {one_way['sz']:.4g})",
                  f"factor {factor:.2f}", "<= 3", factor <= 3))
    c, r = mean(cf, "auc_tb_vs_site_normal"), mean(rf, "auc_tb_vs_site_normal")
    parts.append(("e", f"val AUC TB vs normal on SZ/MC (candidate {show(cf, 'auc_tb_vs_site_normal')}; recipe "
                  f"{show(rf, 'auc_tb_vs_site_normal')})", f"{c:.3f} vs {r:.3f}", ">= recipe - 0.02", c >= r - 0.02))
    parts.append(("f", f"val CAM hit (candidate {' / '.join(f'{v:.3f}' for v in cam_c)}; recipe "
                  f"{' / '.join(f'{v:.3f}' for v in cam_r)})", f"{np.mean(cam_c):.3f} vs {np.mean(cam_r):.3f}",
                  ">= recipe - 0.02", np.mean(cam_c) >= np.mean(cam_r) - 0.02))
    print(f"T_n (six fresh fold models, power 2) = {t:.6g}; recipe threshold {RECIPE_THRESHOLD}")
    print(f"val AUC TB vs rest: candidate {show(cf, 'auc_tb_vs_rest')}; recipe {show(rf, 'auc_tb_vs_rest')}")
    print(f"val NIH no-finding referred: candidate {show(cf, 'nih_normal_referred')}; "
          f"recipe {show(rf, 'nih_normal_referred')}")
    for label, what, shown, bar, ok in parts:
        print(f"({label}) {what}: {shown} (bar {bar}): {'holds' if ok else 'FAILS'}")
    adopt = all(p[-1] for p in parts)
    best = cand[int(np.argmax([f["auc_tb_vs_rest"] for f in cf]))]
    print(f"ADOPT: ship {best} at {t:.6g}" if adopt else "NOT ADOPTED: the shipped model stays")


def report_test(root):
    """After the decision: each arm's internal test at its own threshold, the candidate folds' site_test."""
    root = Path(root)
    folds = fold_predictions(root)
    t = candidate_threshold(folds)
    for arm, runs, thr in (("candidate", CANDIDATE, t), ("recipe", RECIPE, RECIPE_THRESHOLD)):
        for r in runs:
            f = val_figures(root / r / "eval_test" / "predictions.csv", thr)
            print(f"{arm} {r} test at {thr:.4g}: AUC TB vs rest {f['auc_tb_vs_rest']:.3f}, TB vs normal on SZ/MC "
                  f"{f['auc_tb_vs_site_normal']:.3f}; " + ", ".join(
                      f"{k} {f[k]:.2f}" for k in RATES))
    for d in ("mc", "sz"):
        for s in SEEDS:
            y, p, _ = read_predictions(root / f"n_{d}_s{s}" / "eval_site_test" / "predictions.csv")
            m = sens_spec(y, p, t)
            print(f"candidate n_{d}_s{s} site_test AUC {roc_auc(y, p):.3f}; at T_n sensitivity {m['sensitivity']:.2f} "
                  f"specificity {m['specificity']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[3] == "--test":
        report_test(sys.argv[1])
    elif len(sys.argv) == 3:
        main(*sys.argv[1:])
    else:
        sys.exit(__doc__)
