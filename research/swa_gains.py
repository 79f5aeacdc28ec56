"""Paired gains of weight averaging (seventh round, research/selection-rules.md): for each run trained with
--average-from, the best selection AUC of the averaged model minus that of the plain model, as logged by the run.

Usage: python research/swa_gains.py RUN_DIR...   (prints one line per run and the mean gain)"""
import json
import sys
from pathlib import Path

import numpy as np


def main(runs):
    gains = []
    for run in runs:
        r = json.loads((Path(run) / "result.json").read_text())
        plain, avg = r["best_sel_auc"], r["avg_best_sel_auc"]
        gains.append(avg - plain)
        print(f"{run}: {r['selection']} plain {plain:.4f} (epoch {r['best_epoch'] + 1}), averaged {avg:.4f} "
              f"(epochs {int(r['average_from'] * r['epochs']) + 1}-{r['avg_best_epoch'] + 1}), gain {avg - plain:+.4f}")
    print(f"mean gain over {len(gains)} runs {np.mean(gains):+.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
