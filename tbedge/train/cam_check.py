"""Does the TB heat map point at the lungs? Hottest CAM point vs ground-truth lung masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets import discover, read_mask, split
from ..edge.outputs import heat_in_box
from ..edge.pipeline import Pipeline


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
            x0, y0, _, _ = sc.lungs.box
            heat = heat_in_box(sc.cam, sc.lungs.box)
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            hits.append(bool(gt[y0 + y, x0 + x]))
            chance.append(float(gt.mean()))
    return {"part": part, "n": len(hits), "hottest_point_in_lungs": float(np.mean(hits)),
            "uniform_random_point_in_lungs": float(np.mean(chance))}
