"""Thirteenth round's ship rule (research/selection-rules.md, 2026-12-02 11:52) and lever 3's rule (11:56):
print each part from val / site_val predictions only. Usage: python research/r13_rule.py [ship|sb]."""

import csv
import json
import sys
from pathlib import Path

import numpy as np

from tbedge.train.metrics import roc_auc

R = Path("runs/cls")
CORE = ("shenzhen", "montgomery", "nih")
TBM_RUN = {"t3": "t3_tbm_s0", "sb": "sb_tb__s0"}  # runs/sb.sh named the tb_more fold by its first 3 letters


def val_auc(pred: Path, sites=CORE) -> tuple[float, int]:
    rows = [r for r in csv.DictReader(open(pred)) if r["site"] in sites]
    return roc_auc([r["label"] == "tb" for r in rows], [float(r["p_tb"]) for r in rows]), len(rows)


def best_sel(run: str) -> float:
    return json.loads((R / run / "result.json").read_text())["best_sel_auc"]


def matched(eval_dir: Path) -> float:
    return json.loads((eval_dir / "metrics.json").read_text())["auc_tb_vs_rest_matched"]["auc"]


def ship() -> None:
    ok = []
    tbm = [matched(R / f"t3_tbm_s{s}" / "eval_site_val") for s in range(3)]
    ship_tbm = matched(R / "shipped_tbm_site_val")
    ok.append(np.mean(tbm) >= ship_tbm + 0.02)
    print(f"(a) tb_more site_val matched {[f'{a:.3f}' for a in tbm]} mean {np.mean(tbm):.4f}; shipped {ship_tbm:.4f}, "
          f"bar {ship_tbm + 0.02:.4f}: {'holds' if ok[-1] else 'FAILS'}")
    for fold, bar in (("mon", 0.7789), ("she", 0.7544)):
        runs = [f"t3_{fold}_s{s}" for s in range(3) if (R / f"t3_{fold}_s{s}" / "result.json").exists()]
        m = np.mean([best_sel(r) for r in runs])
        ok.append(m >= bar - 0.01)
        print(f"(b) {fold} site_val {[f'{best_sel(r):.3f}' for r in runs]} mean {m:.4f}; two-site {bar}, "
              f"bar {bar - 0.01:.4f}: {'holds' if ok[-1] else 'FAILS'}")
    new, n = val_auc(R / "t3_main_s0" / "eval_val" / "predictions.csv")
    old, _ = val_auc(R / "shipped_val" / "predictions.csv")
    ok.append(new >= old - 0.02)
    print(f"(c) internal val (SZ+MC+NIH, {n} films) {new:.4f}; shipped {old:.4f}, bar {old - 0.02:.4f}: "
          f"{'holds' if ok[-1] else 'FAILS'}")
    print("SHIP" if all(ok) else "NOT SHIPPED (every part must hold)")


def sb() -> None:
    figs = {}
    for name in ("sb", "t3"):
        figs[name] = [best_sel(f"{name}_mon_s0"), best_sel(f"{name}_she_s0"),
                      matched(R / TBM_RUN[name] / "eval_site_val")]
    d = np.array(figs["sb"]) - np.array(figs["t3"])
    for name, label in (("t3", "recipe  "), ("sb", "balanced")):
        print(f"{label} mon/she site_val, tbm matched:", [f"{x:.3f}" for x in figs[name]],
              f"mean {np.mean(figs[name]):.4f}")
    adopt = d.mean() >= 0.01 and d.min() >= -0.03
    print(f"change {[f'{x:+.3f}' for x in d]}, mean {d.mean():+.4f}: {'ADOPT' if adopt else 'NOT ADOPTED'}")


if __name__ == "__main__":
    {"ship": ship, "sb": sb}[sys.argv[1] if len(sys.argv) > 1 else "ship"]()
