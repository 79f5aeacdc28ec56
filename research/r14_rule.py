"""Fourteenth round's ship rule (research/selection-rules.md, 2026-12-03 07:50): the three-site site-balanced
classifier on the stride-2 lung model's crops. Prints each part from val / site_val predictions only.
Usage: python research/r14_rule.py (after runs/r14.sh and the site_val / val evaluations it names)."""

import json
from pathlib import Path

import numpy as np
from r13_rule import best_sel, matched, val_auc

R = Path("runs/cls")
SHIPPED_TBM_MATCHED = 0.8790  # shipped pipeline, tb_more site_val matched pairs (thirteenth round's printout)
SHIPPED_VAL = 0.9399  # shipped pipeline, internal val on the Shenzhen + Montgomery + NIH films (ibid.)
TWO_SITE = {"mon": 0.7789, "she": 0.7544}  # two-site recipe's power-2 fold means (session 10)


def main() -> None:
    ok = []
    tbm = [matched(R / f"r14_tbm_s{s}" / "eval_site_val") for s in range(3)]
    ok.append(np.mean(tbm) >= SHIPPED_TBM_MATCHED + 0.02)
    print(f"(a) tb_more site_val matched {[f'{a:.3f}' for a in tbm]} mean {np.mean(tbm):.4f}; "
          f"bar {SHIPPED_TBM_MATCHED + 0.02:.4f}: {'holds' if ok[-1] else 'FAILS'}")
    figs = {f: best_sel(f"r14_{f}_s0") for f in TWO_SITE}
    mean, bar = np.mean(list(figs.values())), np.mean(list(TWO_SITE.values())) - 0.01
    ok.append(mean >= bar and all(figs[f] >= TWO_SITE[f] - 0.05 for f in figs))
    print(f"(b) site_val mon {figs['mon']:.4f} (floor {TWO_SITE['mon'] - 0.05:.4f}), she {figs['she']:.4f} "
          f"(floor {TWO_SITE['she'] - 0.05:.4f}), mean {mean:.4f}, bar {bar:.4f}: {'holds' if ok[-1] else 'FAILS'}")
    new, n = val_auc(R / "r14_main_s0" / "eval_val" / "predictions.csv")
    ok.append(new >= SHIPPED_VAL - 0.02)
    epoch = json.loads((R / "r14_main_s0" / "result.json").read_text())["best_epoch"] + 1
    print(f"(c) internal val (SZ+MC+NIH, {n} films) {new:.4f} (epoch {epoch}); bar {SHIPPED_VAL - 0.02:.4f}: "
          f"{'holds' if ok[-1] else 'FAILS'}")
    print("SHIP" if all(ok) else "NOT SHIPPED (every part must hold)")


if __name__ == "__main__":
    main()
