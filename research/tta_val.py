"""Test-time augmentation check of the fifth round (research/classifier-study.md, rule in
research/selection-rules.md): 9 views (identity, ±4 % shifts in x and y, scale 0.95 / 1.05, rotation
±3°; crop and lung weights warped together, then prepared as at runtime), logits averaged;
TB-vs-rest AUC on the internal val part for the 9 recipe seeds (run folders as in runs/).

Usage: python research/tta_val.py [PART]   (default val; prints one line per seed and the mean gain)
"""

import sys

import cv2
import keras
import numpy as np

from tbedge.train.augment import warp
from tbedge.train.classifier import prepare, raw_arrays
from tbedge.train.crops import load_crops
from tbedge.train.metrics import roc_auc
from tbedge.train.predict import load_keras

SEEDS = {"0": "runs/cls/f_main_s0/best.keras", "1": "runs/cls/f_main_s1/best.keras",
         "4": "runs/gpu1/g_main_s4/slim.keras", "5": "runs/gpu1/g_main_s5/slim.keras",
         "6": "runs/gpu1/g_main_s6/slim.keras", "1'": "runs/gpu2/h_main_s1/slim.keras",
         "2": "runs/gpu2/h_main_s2/slim.keras", "3": "runs/gpu2/h_main_s3/slim.keras",
         "7": "runs/gpu2/h_main_s7/slim.keras"}


def affine(size: int, rot: float = 0.0, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    m = cv2.getRotationMatrix2D((size / 2, size / 2), rot, scale)
    m[0, 2] += dx * size
    m[1, 2] += dy * size
    return m


def tb_log_prob(logits: np.ndarray) -> np.ndarray:
    return logits[:, 1] - np.log(np.exp(logits).sum(1))


def main(part: str = "val") -> None:
    crops = load_crops("runs/crops/m_main_224.npz")
    s = crops.size
    idx = np.array(crops.parts(None)[part])
    raw = raw_arrays(crops, idx, s, "masked").astype(np.float32) / 255
    y = crops.label[idx] == "tb"
    views = [affine(s), affine(s, dx=.04), affine(s, dx=-.04), affine(s, dy=.04), affine(s, dy=-.04),
             affine(s, scale=.95), affine(s, scale=1.05), affine(s, rot=3), affine(s, rot=-3)]
    xs = [np.stack([prepare(warp(r, m).reshape(s, s, -1), "masked") for r in raw]) for m in views]
    gains = []
    for seed, path in SEEDS.items():
        m = load_keras(path)
        head = keras.Model(m.input, m.get_layer("cam_head").output[0])  # logits
        logits = np.stack([head.predict(x, batch_size=32, verbose=0) for x in xs])  # (views, n, 3)
        single, tta = roc_auc(y, tb_log_prob(logits[0])), roc_auc(y, tb_log_prob(logits.mean(0)))
        gains.append(tta - single)
        print(f"{part} seed {seed:3s} single {single:.4f}  tta {tta:.4f} ({tta - single:+.4f})", flush=True)
    print(f"{part} mean gain over {len(gains)} seeds {np.mean(gains):+.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
