"""Radiograph-appropriate augmentation in numpy/OpenCV (shared by the lung and TB trainers).

Geometry: small rotations, shifts and scales (no left-right flip: the heart is on the left).
Photometry: brightness/contrast, gamma, tone curves, blur, noise, JPEG artefacts. Each is
applied with its own probability from a seeded Generator, so a run is reproducible.
Film look (``film_look``): what separates one acquisition chain from another rather than one disease from
another (resolution, the film's tone curve, grain, digital sharpening, scratches and pen strokes), applied
to every class alike so that no look can carry a label (issue 20).
Lung opacities (``lung_opacities``, for the lung model only): consolidation, cavities and white-out painted inside
the lung mask, so that the U-Net learns that dense lung is still lung (the films it misses are those).
Mixup (blending samples within a batch) is here for the classifier study; the recipe does not use it.
"""

from __future__ import annotations

import cv2
import numpy as np


def random_affine(rng: np.random.Generator, size: tuple[int, int], rot: float = 7.0,
                  shift: float = 0.06, scale: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    h, w = size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-rot, rot), rng.uniform(*scale))
    m[0, 2] += rng.uniform(-shift, shift) * w
    m[1, 2] += rng.uniform(-shift, shift) * h
    return m


def warp(img: np.ndarray, m: np.ndarray, interp=cv2.INTER_LINEAR) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def photometric(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """img float32 [0, 1] -> augmented float32 [0, 1]."""
    x = img
    if rng.random() < 0.8:  # contrast / brightness
        c = 1 + rng.uniform(-0.25, 0.25) * strength
        b = rng.uniform(-0.1, 0.1) * strength
        x = (x - 0.5) * c + 0.5 + b
    x = np.clip(x, 0, 1)
    if rng.random() < 0.6:  # gamma
        x = x ** np.exp(rng.uniform(-0.4, 0.4) * strength)
    if rng.random() < 0.4:  # tone curve: a random monotone 4-knot curve
        knots = np.sort(rng.uniform(0, 1, 3))
        ys = np.concatenate([[0], np.sort(np.clip(knots + rng.normal(0, 0.08 * strength, 3), 0, 1)), [1]])
        x = np.interp(x, np.concatenate([[0], knots, [1]]), ys).astype(np.float32)
    if rng.random() < 0.3:  # blur
        s = rng.uniform(0.3, 1.2) * strength
        x = cv2.GaussianBlur(x, (0, 0), s)
    if rng.random() < 0.3:  # noise
        x = x + rng.normal(0, rng.uniform(0.005, 0.03) * strength, x.shape).astype(np.float32)
    if rng.random() < 0.2:  # JPEG artefacts
        q = int(rng.integers(30, 90))
        ok, enc = cv2.imencode(".jpg", (np.clip(x, 0, 1) * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            x = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    return np.clip(x, 0, 1).astype(np.float32)


def film_look(rng: np.random.Generator, img: np.ndarray, p: float = 1.0) -> np.ndarray:
    """img float32 [0, 1] (S, S) -> the same film as another acquisition chain might have made it. ``p`` scales
    every step's probability (0 = unchanged)."""
    if p <= 0:
        return img
    x = img.astype(np.float32, copy=True)
    h, w = x.shape
    if rng.random() < 0.5 * p:  # resolution: a 256-pixel scan against a 3000-pixel detector
        f = rng.uniform(0.35, 1.0)
        small = cv2.resize(x, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5 * p:  # film characteristic (H&D) curve: a sigmoid, rescaled to keep [0, 1]
        c, k = rng.uniform(0.35, 0.65), rng.uniform(3.0, 10.0)
        lo, hi = 1 / (1 + np.exp(k * c)), 1 / (1 + np.exp(-k * (1 - c)))
        x = ((1 / (1 + np.exp(-k * (x - c))) - lo) / (hi - lo)).astype(np.float32)
    if rng.random() < 0.4 * p:  # film grain: spatially correlated, multiplicative
        g = cv2.GaussianBlur(rng.normal(0, 1, x.shape).astype(np.float32), (0, 0), rng.uniform(0.5, 1.5))
        x = x * (1 + g * np.float32(rng.uniform(0.02, 0.08)))
    if rng.random() < 0.3 * p:  # digital processing: unsharp masking
        s = rng.uniform(1.0, 3.0)
        x = x + np.float32(rng.uniform(0.3, 1.0)) * (x - cv2.GaussianBlur(x, (0, 0), s))
    if rng.random() < 0.25 * p:  # scratches, dust and pen strokes
        for _ in range(int(rng.integers(1, 5))):
            pts = (rng.uniform(0, 1, (int(rng.integers(2, 5)), 2)) * (w, h)).astype(np.int32)
            cv2.polylines(x, [pts], False, float(rng.uniform(0, 1)), int(rng.integers(1, 3)), cv2.LINE_AA)
    return np.clip(x, 0, 1).astype(np.float32)


def _blob(rng: np.random.Generator, shape: tuple[int, int], where: np.ndarray, frac: float) -> np.ndarray:
    """A smooth field in [0, 1] centred on a random pixel of ``where``, about ``frac`` of the side across,
    with a lumpy edge (smoothed noise), so it does not look like a drawn ellipse."""
    h, w = shape
    ys, xs = np.nonzero(where)
    i = int(rng.integers(len(ys)))
    r = max(2.0, frac * min(h, w) / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.6, 1.4)
    d = np.sqrt(((yy - ys[i]) / (r * a)) ** 2 + ((xx - xs[i]) * a / r) ** 2)
    lumps = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), max(1.0, r / 3))
    lumps /= np.float32(lumps.std() + 1e-6)
    return np.clip(1.5 - d - 0.25 * lumps, 0, 1).astype(np.float32)


def lung_opacities(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, p: float = 1.0) -> np.ndarray:
    """img float32 [0, 1] (S, S), mask its lung mask (> 0.5 = lung) -> the same film with disease-like density
    inside the lungs: 1-3 consolidations (bright, soft-edged, with their own texture), sometimes a cavity (a dark
    centre in a bright rim) or the white-out of most of one lung. The mask, the label, stays as it is. ``p`` is the
    probability that a film gets any."""
    lung = mask > 0.5
    if p <= 0 or rng.random() >= p or lung.sum() < 50:
        return img
    x = img.astype(np.float32, copy=True)
    inside = cv2.GaussianBlur(lung.astype(np.float32), (0, 0), 2.0)  # density fades at the lung's edge
    # Consolidation approaches soft-tissue density (the mediastinum's grey); a cavity holds air (the lung's darkest).
    dense = max(float(np.percentile(x[lung], 97)), float(np.percentile(x, 75)))
    air = float(np.percentile(x[lung], 10))
    for _ in range(int(rng.integers(1, 4))):
        b = _blob(rng, x.shape, lung, rng.uniform(0.08, 0.3)) * inside
        level = dense * rng.uniform(0.85, 1.05)
        texture = 1 + 0.08 * cv2.GaussianBlur(rng.normal(0, 1, x.shape).astype(np.float32), (0, 0), 1.5)
        x = x + b * np.float32(rng.uniform(0.6, 1.0)) * (level * texture - x).clip(0, None)
        core = b > 0.9
        if rng.random() < 0.25 and core.sum() > 20:  # a cavity: air inside the consolidation, its wall stays
            c = _blob(rng, x.shape, core, rng.uniform(0.03, 0.07)) * core
            x = x + c * np.float32(rng.uniform(0.5, 0.9)) * (air - x)
    if rng.random() < 0.15:  # white-out of one lung (effusion, collapse, extensive consolidation)
        n, lab = cv2.connectedComponents(lung.astype(np.uint8))
        if n > 1:
            side = (lab == int(rng.integers(1, n))).astype(np.float32)
            side = cv2.GaussianBlur(side, (0, 0), 3.0) * np.float32(rng.uniform(0.5, 0.9))
            x = x + side * (dense - x).clip(0, None)
    near = cv2.dilate(lung.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # the soft edges end 4 px out
    return np.clip(np.where(near, x, img), 0, 1).astype(np.float32)


def mixup(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixup within a batch: each sample becomes lam * itself + (1 - lam) * a partner from the same batch,
    lam ~ Beta(alpha, alpha) per sample, and so do its target row and its loss weight. Films from
    different sources blend, so a source's look alone cannot carry a label. alpha <= 0: unchanged."""
    if alpha <= 0 or len(x) < 2:
        return x, y, w
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    partner = rng.permutation(len(x))

    def mix(a):
        a = np.asarray(a, np.float32)
        lk = lam.reshape(-1, *([1] * (a.ndim - 1)))
        return lk * a + (1 - lk) * a[partner]

    return mix(x), mix(y), mix(w)
