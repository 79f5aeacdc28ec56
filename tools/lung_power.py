"""Copy a classifier run with its CAM head pooling over cells by (lung fraction) ** POWER (same weights).

Usage: python tools/lung_power.py SRC_RUN DST_RUN POWER [MODEL]
SRC_RUN holds best.keras (or slim.keras, or MODEL, e.g. avg_best.keras) and config.json;
DST_RUN gets best.keras and config.json (with "lung_power" added),
ready for `tbedge evaluate classifier` and tools/ship.sh."""
import json
import sys
from pathlib import Path

from tbedge.train.classifier_models import with_lung_power
from tbedge.train.predict import load_keras


def main(src, dst, power, name=None):
    src, dst = Path(src), Path(dst)
    model = src / name if name else next(p for p in (src / "best.keras", src / "slim.keras") if p.exists())
    dst.mkdir(parents=True, exist_ok=True)
    with_lung_power(load_keras(model), float(power)).save(dst / "best.keras")
    cfg = json.loads((src / "config.json").read_text())
    cfg = {**cfg, "lung_power": float(power), "from_run": str(src), "from_model": model.name}
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
