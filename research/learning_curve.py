"""Learning curve of the recipe (session 9, study.sh lane11*): AUC against the number of training films.

Usage: python research/learning_curve.py RUNS_CLS [montgomery]
Reads each run's result.json (val AUC at the selected epoch, as logged) and eval_test/metrics.json (internal
test AUC, TB vs rest, the training head) for the runs named below, and prints one table plus the mean gain
per doubling of the training films. With "montgomery": the Shenzhen (+ NIH) -> Montgomery fold's curve
(site_val as logged, eval_site_test). Nothing is selected from it.
"""
import json
import sys
from pathlib import Path

import numpy as np

RUNS = {  # fraction of the training films -> runs (seeds 0 and 1)
    0.25: ["l_main_f25_s0", "l_main_f25_s1"],
    0.5: ["l_main_f50_s0", "l_main_f50_s1"],
    0.75: ["l_main_f75_s0", "l_main_f75_s1"],
    1.0: ["f_main_s0", "f_main_s1", "w_main_s80", "w_main_s81"],  # the recipe on CPU (w_*: plain model unchanged)
}
RUNS_MC = {
    0.25: ["l_mc_f25_s0", "l_mc_f25_s1"],
    0.5: ["l_mc_f50_s0", "l_mc_f50_s1"],
    1.0: ["m4_mc_mask_nih03_s0", "f_mc_s1", "f_mc_s2", "w_mc_s80", "w_mc_s81", "w_mc_s82"],  # recipe, CPU
}
EARLY = ["lp12_main_f25_s0", "lp12_main_f25_s1", "lp12_main_f50_s0", "lp12_main_f50_s1"]  # patience 12


def row(d: Path, part: str = "test") -> dict | None:
    if not (d / "result.json").is_file():
        return None
    r = json.loads((d / "result.json").read_text())
    t = d / f"eval_{part}" / "metrics.json"
    test = json.loads(t.read_text())["auc_tb_vs_rest"] if t.is_file() else None
    return {"run": d.name, "n_train": r["n_train"], "best_epoch": r["best_epoch"] + 1, "epochs": r["epochs"],
            "val": r["best_sel_auc"], "test": test["auc"] if test else None,
            "ci": (test["ci_low"], test["ci_high"]) if test else None}


def main(root: str, fold: str | None = None) -> None:
    root = Path(root)
    means = {}
    runs, part, goal = (({**RUNS, "patience 12": EARLY}, "test", 0.95) if fold is None
                        else (RUNS_MC, "site_test", 0.85))  # the goals
    print(f"{'run':20s} {'train':>5s} {'best/ep':>8s} {'val':>6s} {part + ' (95% CI)':>22s}")
    for frac, names in runs.items():
        rows = [r for r in (row(root / n, part) for n in names) if r]
        for r in rows:
            ci = f"{r['test']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})" if r["test"] is not None else "-"
            print(f"{r['run']:20s} {r['n_train']:5d} {r['best_epoch']:>4d}/{r['epochs']:<3d} {r['val']:.3f} {ci:>22s}")
        if rows and frac != "patience 12":
            tests = [r["test"] for r in rows if r["test"] is not None]
            means[frac] = (np.mean([r["n_train"] for r in rows]), np.mean([r["val"] for r in rows]),
                           np.mean(tests) if tests else np.nan)
    print(f"\nfraction  n_train  val mean  {part} mean")
    for frac, (n, v, t) in means.items():
        print(f"{frac:8.2f}  {n:7.0f}  {v:8.3f}  {t:9.3f}")
    if len(means) >= 2:
        n = np.log2([m[0] for m in means.values()])
        for i, name in ((1, "val"), (2, part)):
            y = np.array([m[i] for m in means.values()])
            ok = np.isfinite(y)
            if ok.sum() >= 2:
                slope, icpt = np.polyfit(n[ok], y[ok], 1)
                need = (goal - (slope * n[ok][-1] + icpt)) / slope if slope > 0 else float("inf")
                print(f"{name}: {slope:+.3f} AUC per doubling of the training films (least squares on log2 n); "
                      f"a straight line reaches {goal} after {need:.1f} more doublings")


if __name__ == "__main__":
    main(*sys.argv[1:3])
