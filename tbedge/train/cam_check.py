"""Does the TB heat map point at the lungs? Hottest CAM point vs ground-truth lung masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets import discover, read_mask, split
from ..edge.pipeline import Pipeline


def hottest_point(cam: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Native (y, x) of the centre of the hottest CAM cell. Not the argmax of the bilinear map:
    that is flat beyond the outer cell centres, and its first maximum then lands on the crop's
    edge (above the apices for the many films whose hottest cell is apical)."""
    gh, gw = cam.shape
    cy, cx = np.unravel_index(int(np.argmax(cam)), cam.shape)
    x0, y0, x1, y1 = box
    return int(y0 + (cy + 0.5) * (y1 - y0) / gh), int(x0 + (cx + 0.5) * (x1 - x0) / gw)


def cam_hit_rate(data: str | Path, engine: str | Path | None = None, part: str = "test") -> dict:
    """For TB films of ``part`` with a lung mask: is the hottest CAM point inside the lungs?
    Reported next to the chance that a uniformly random point of the film is."""
    samples = [s for s in split(discover(data))[part] if s.label == "tb" and s.mask is not None]
    hits, chance = [], []
    with Pipeline(engine, backend="onnxruntime") as pipe:
        for s, sc in zip(samples, pipe.run([s.path for s in samples]), strict=True):
            if sc.cam is None:
                continue
            gt = read_mask(s.mask)
            gt = cv2.resize(gt.astype(np.uint8), sc.image.pixels.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            y, x = hottest_point(sc.cam, sc.lungs.box)
            hits.append(bool(gt[y, x]))
            chance.append(float(gt.mean()))
    return {"part": part, "n": len(hits), "hottest_point_in_lungs": float(np.mean(hits)),
            "uniform_random_point_in_lungs": float(np.mean(chance))}
