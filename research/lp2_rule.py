"""The eleventh-round rule (research/selection-rules.md, declared before any run): the lung-core head trained from
the start (`--lung-power 2`) against the recipe converted to power 2, on val and site_val only.

Usage: python research/lp2_rule.py RUNS RUNS_P2 CROPS   (RUNS: runs/cls; RUNS_P2: the recipe fold runs' power-2
copies with eval_site_val/, made by `research/study.sh lane12c`; CROPS: runs/crops/m_main_224.npz)
Reads RUNS/lp2_main_s<seed>/eval_val/metrics.json for the pneumonia -> TB rate; the val heat-map check of each
internal run is computed once into RUNS_P2/lp2_main_s<seed>/cam_val.json."""
import json
import sys
from pathlib import Path

import numpy as np
from cam_hit_keras import cam_hit_cached
from mixup_rule import RECIPE, best

INTERNAL = (60, 61, 62, 63, 64, 65)
FOLDS = (62, 63, 64)
RECIPE_VAL_AUC_P2 = 0.9226  # the 15 recipe seeds converted to power 2 (sixth round)
RECIPE_VAL_CAM_P2 = 0.961  # the eighth round's five recipe seeds, power 2


def site_val_p2(root: Path, run: str) -> float:
    return json.loads((root / run / "eval_site_val" / "metrics.json").read_text())["auc_tb_vs_rest"]["auc"]


def main(runs, runs_p2, crops):
    runs, p2 = Path(runs), Path(runs_p2)
    val = {s: best(runs / f"lp2_main_s{s}") for s in INTERNAL}
    aucs = list(val.values())
    cams = []
    for s in INTERNAL:
        (p2 / f"lp2_main_s{s}").mkdir(parents=True, exist_ok=True)
        cams.append(cam_hit_cached(runs / f"lp2_main_s{s}" / "best.keras", crops, "val",
                                   p2 / f"lp2_main_s{s}" / "cam_val.json"))
    parts = [("a", f"internal val AUC {' / '.join(f'{v:.4f}' for v in aucs)} (mean {np.mean(aucs):.4f})",
              RECIPE_VAL_AUC_P2 - 0.005, np.mean(aucs)),
             ("b", f"val CAM hit {' / '.join(f'{v:.3f}' for v in cams)} (mean {np.mean(cams):.3f})",
              RECIPE_VAL_CAM_P2, np.mean(cams))]
    for d in ("mc", "sz"):
        new = [best(runs / f"lp2_{d}_s{s}") for s in FOLDS]
        old = [site_val_p2(p2, r) for r in RECIPE[d]]
        parts.append(("c", f"{d} site_val {' / '.join(f'{v:.4f}' for v in new)} (mean {np.mean(new):.4f}); recipe "
                      f"power 2 {' / '.join(f'{v:.4f}' for v in old)} (mean {np.mean(old):.4f})",
                      np.mean(old) - 0.01, np.mean(new)))
    ship = max(val, key=val.get)
    pneu = json.loads((runs / f"lp2_main_s{ship}" / "eval_val" / "metrics.json").read_text())["pneumonia_argmax"]["tb"]
    holds = [value >= bar for _, _, bar, value in parts] + [pneu <= 0.15]
    for (label, what, bar, _), ok in zip(parts, holds, strict=False):
        print(f"({label}) {what} (bar >= {bar:.4f}): {'holds' if ok else 'FAILS'}")
    print(f"(d) seed {ship} (highest val AUC) val pneumonia -> TB argmax {pneu:.3f} (bar <= 0.15): "
          f"{'holds' if holds[-1] else 'FAILS'}")
    print(f"ADOPT: ship lp2_main_s{ship}" if all(holds) else "NOT ADOPTED: the recipe and the shipped model stay")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
