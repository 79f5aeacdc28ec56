"""The ninth-round rule (research/selection-rules.md, declared before any run): mixup (`--mixup 0.4`) against the
recipe's CPU runs, on the selection AUCs as logged (power-1 head) and the val heat-map check (power-2 head).

Usage: python research/mixup_rule.py RUNS CROPS   (RUNS: runs/cls; CROPS: runs/crops/m_main_224.npz;
the power-2 copies of the internal runs go to RUNS/../ship9, their val heat-map check is cached there)"""
import json
import sys
from pathlib import Path

import numpy as np
from cam_hit_keras import cam_hit_cached

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tools/lung_power.py (the release's)
from lung_power import main as lung_power  # noqa: E402

SEEDS = (93, 94, 95)
INTERNAL = (93, 94)
RECIPE = {"mc": ("m4_mc_mask_nih03_s0", "f_mc_s1", "f_mc_s2", "w_mc_s80", "w_mc_s81", "w_mc_s82"),
          "sz": ("f_sz_s0", "f_sz_s1", "f_sz_s2", "w_sz_s80", "w_sz_s81", "w_sz_s82")}
RECIPE_VAL_AUC = 0.922  # 15-seed mean of the recipe's internal val AUC (research/classifier-study.md)
RECIPE_VAL_CAM = 0.961  # the eighth round's five recipe seeds, power 2 (runs/ship8/*/cam_val.json)


def best(run: Path) -> float:
    return json.loads((run / "result.json").read_text())["best_sel_auc"]


def val_cam_p2(run: Path, crops) -> float:
    p2 = run.parent.parent / "ship9" / run.name
    if not (p2 / "best.keras").exists():
        lung_power(run, p2, 2)
    return cam_hit_cached(p2 / "best.keras", crops, "val", p2 / "cam_val.json")


def main(runs, crops):
    runs = Path(runs)
    parts = []
    for d, margin, label in (("mc", 0.02, "a"), ("sz", -0.01, "b")):
        new = [best(runs / f"x_{d}_s{s}") for s in SEEDS]
        old = [best(runs / r) for r in RECIPE[d]]
        bar = np.mean(old) + margin
        parts.append((label, f"{d} site_val: mixup {' / '.join(f'{v:.4f}' for v in new)} (mean {np.mean(new):.4f}); "
                      f"recipe mean {np.mean(old):.4f} over {len(old)} runs", f">= {bar:.4f}", np.mean(new) >= bar))
    val = [best(runs / f"x_main_s{s}") for s in INTERNAL]
    parts.append(("c", f"internal val AUC {' / '.join(f'{v:.4f}' for v in val)} (mean {np.mean(val):.4f})",
                  f">= {RECIPE_VAL_AUC - 0.005:.3f}", np.mean(val) >= RECIPE_VAL_AUC - 0.005))
    cams = [val_cam_p2(runs / f"x_main_s{s}", crops) for s in INTERNAL]
    parts.append(("d", f"val CAM hit, power 2: {' / '.join(f'{v:.3f}' for v in cams)} (mean {np.mean(cams):.3f})",
                  f">= {RECIPE_VAL_CAM - 0.02:.3f}", np.mean(cams) >= RECIPE_VAL_CAM - 0.02))
    for label, what, bar, ok in parts:
        print(f"({label}) {what} (bar {bar}): {'holds' if ok else 'FAILS'}")
    print("ADOPT" if all(p[-1] for p in parts) else "NOT ADOPTED: the recipe and the shipped model stay")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
