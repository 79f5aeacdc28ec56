"""Acquisition-only features of a film: how it was made (exposure, processing, scanning, size),
never what it shows. They feed the shortcut audit (``shortcut_audit``): whatever these features
alone predict about the label, a classifier can learn without looking at the lungs.

Computed on the decoded full image (``imaging.load_image``: native resolution, [0, 1], bright =
dense), the same pixels the pipeline starts from.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..runtime.imaging import LoadedImage, load_image

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
FEATURE_NAMES = (*(f"p{q:02d}" for q in PERCENTILES), "mean", "std", "saturated_fraction", "black_fraction",
                 "gradient_mean", "log_laplacian_var", "border_fraction", "uniform_box_fraction",
                 "height", "width", "aspect", "bit_depth")
FLAT_STD = 3.0 / 255.0  # a row, column or box flatter than this is padding, a label or a shutter
SATURATED, BLACK = 0.995, 0.005
BOX_GRID = 16  # uniform boxes: the image is cut into 16 x 16 boxes
_MAX_SAMPLE = 1 << 20  # intensity statistics on at most ~1 M pixels: a stride, not the full 9 M of a DR film


def _edge_run(flat: np.ndarray) -> int:
    """How many leading entries of a bool array are True."""
    off = np.flatnonzero(~flat)
    return int(off[0]) if len(off) else len(flat)


def border_fraction(px: np.ndarray, tol: float = FLAT_STD) -> float:
    """Share of the image area outside the box left after dropping near-uniform rows and columns at
    each edge (padding, scanner margins, collimation)."""
    h, w = px.shape
    rows, cols = px.std(axis=1) < tol, px.std(axis=0) < tol
    top, left = _edge_run(rows), _edge_run(cols)
    if top == h or left == w:
        return 1.0
    bottom, right = _edge_run(rows[::-1]), _edge_run(cols[::-1])
    return 1.0 - (h - top - bottom) * (w - left - right) / (h * w)


def uniform_box_fraction(px: np.ndarray, grid: int = BOX_GRID, tol: float = FLAT_STD) -> float:
    """Share of ``grid`` x ``grid`` boxes that are near-uniform (labels, tape, padding, burned-out areas)."""
    h, w = px.shape
    bh, bw = h // grid, w // grid
    if bh == 0 or bw == 0:
        return 0.0
    boxes = px[:bh * grid, :bw * grid].reshape(grid, bh, grid, bw)
    return float(np.mean(boxes.std(axis=(1, 3)) < tol))


def film_features(img: LoadedImage) -> np.ndarray:
    """The ``FEATURE_NAMES`` vector (float64) of one decoded film."""
    px = np.asarray(img.pixels, np.float32)
    h, w = px.shape
    step = max(1, int(np.ceil((h * w / _MAX_SAMPLE) ** 0.5)))
    sample = px[::step, ::step].ravel()
    pct = np.percentile(sample, PERCENTILES)
    gx = cv2.Sobel(px, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(px, cv2.CV_32F, 0, 1, ksize=3)
    lap = float(cv2.Laplacian(px, cv2.CV_32F).var())
    return np.array([*pct, sample.mean(), sample.std(), np.mean(sample >= SATURATED), np.mean(sample <= BLACK),
                     float(np.mean(np.hypot(gx, gy))), np.log10(lap + 1e-10), border_fraction(px),
                     uniform_box_fraction(px), h, w, w / h, img.meta.bit_depth], np.float64)


def file_features(path: str | Path) -> np.ndarray:
    """``film_features`` of one file; raises ``TbedgeInputError`` (with its reason code) like ``load_image``."""
    return film_features(load_image(path))
