"""Does the TB heat map point at the lungs? Hottest CAM point vs ground-truth lung masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets import discover, read_mask, split
from ..outputs.files import shown_heat
from ..runtime.pipeline import Pipeline


def hottest_point(grid: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Native (y, x) of the centre of the hottest cell of ``grid`` laid over the crop ``box``: a
    CAM (the model's own evidence) or the heat map as shown. Not the argmax of a bilinear upsampling
    of the CAM: that is flat beyond the outer cell centres, and its first maximum then lands on the
    crop's edge (above the apices for the many films whose hottest cell is apical)."""
    gh, gw = grid.shape
    cy, cx = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x0, y0, x1, y1 = box
    return int(y0 + (cy + 0.5) * (y1 - y0) / gh), int(x0 + (cx + 0.5) * (x1 - x0) / gw)


def cam_hit_rate(data: str | Path, engine: str | Path | None = None, part: str = "test") -> dict:
    """For TB films of ``part`` with a lung mask: is the hottest point inside the ground-truth
    lungs? Two readings: the centre of the hottest CAM cell (the model's evidence, 7 x 7 cells)
    and the hottest pixel of the heat map as shown (lung-weighted). Reported next to the chance
    that a uniformly random point of the film is."""
    samples = [s for s in split(discover(data))[part] if s.label == "tb" and s.mask is not None]
    cell, shown, chance = [], [], []
    with Pipeline(engine, backend="onnxruntime") as pipe:
        for s, sc in zip(samples, pipe.run([s.path for s in samples]), strict=True):
            if sc.cam is None:
                continue
            shape = sc.image.pixels.shape
            gt = read_mask(s.mask)
            gt = cv2.resize(gt.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            y, x = hottest_point(sc.cam, sc.lungs.box)
            cell.append(bool(gt[y, x]))
            y, x = hottest_point(shown_heat(sc), sc.lungs.box)
            shown.append(bool(gt[y, x]))
            chance.append(float(gt.mean()))
    return {"part": part, "n": len(cell), "hottest_cell_centre_in_lungs": float(np.mean(cell)),
            "hottest_shown_point_in_lungs": float(np.mean(shown)),
            "uniform_random_point_in_lungs": float(np.mean(chance))}
