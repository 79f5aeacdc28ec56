"""The heat-map check for a Keras classifier on a crop cache: is the centre of the hottest CAM cell of each
TB film (with a ground-truth lung mask) inside those lungs? The same reading as `tbedge evaluate cam`, without
building a bundle, so many seeds can be checked. Usage:
  python research/cam_hit_keras.py RUN/best.keras runs/crops/m_main_224.npz val|test [DATA]
(RUN/config.json gives the crop prep.)"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from tbedge.datasets import discover, read_mask
from tbedge.train.cam_check import hottest_point
from tbedge.train.classifier import crop_arrays
from tbedge.train.crops import load_crops
from tbedge.train.predict import load_keras


def cam_hit(model_path, npz, part, data="../shared/data"):
    """(share of TB films whose hottest CAM cell centre lies in the lungs, the same for a uniformly random point,
    number of films)."""
    prep = json.loads((Path(model_path).parent / "config.json").read_text()).get("prep", "box")
    c = load_crops(npz)
    native = np.load(npz)["native_shape"]
    masks = {str(s.path): s.mask for s in discover(data)}
    idx = [i for i in c.parts()[part] if c.label[i] == "tb" and masks.get(c.path[i]) is not None]
    x = crop_arrays(c, np.array(idx), c.size, prep).astype(np.float32) / 255
    _, cam = load_keras(model_path).predict(x, verbose=0)
    hits, chance = [], []
    for j, i in enumerate(idx):
        h, w = native[i]
        gt = cv2.resize(read_mask(masks[c.path[i]]).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        y, xx = hottest_point(cam[j], tuple(int(v) for v in c.box[i]))
        hits.append(bool(gt[y, xx]))
        chance.append(float(gt.mean()))
    return float(np.mean(hits)), float(np.mean(chance)), len(hits)


def cam_hit_cached(model_path, npz, part, cache) -> float:
    """cam_hit's rate, computed once into the JSON file ``cache`` and read from it after."""
    cache = Path(cache)
    if not cache.exists():
        hit, chance, n = cam_hit(model_path, npz, part)
        cache.write_text(json.dumps({"hit": hit, "chance": chance, "n": n}))
    return json.loads(cache.read_text())["hit"]


def main(model_path, npz, part, data="../shared/data"):
    hit, chance, n = cam_hit(model_path, npz, part, data)
    print(f"{model_path} {part} n {n} hottest cell centre in lungs {hit:.3f} (uniform random point {chance:.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
