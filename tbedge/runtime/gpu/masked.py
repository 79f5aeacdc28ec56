"""Lung-masked classifier input on the GPU: the host-side tables and a numpy reference of exactly what
the kernels compute (pure code, no CUDA), for every prep in ``lungs.CROP_PREPS``.

``lungs.classifier_input`` makes the classifier's input from a native film, its crop box and the cleaned
lung mask (model grid). On the device the same steps run as kernels (kernels.cu):

1. box crop -> (S, S): the resize kernel with ``plan.resize_tables`` (area or linear, as ``lungs.crop``);
2. the mask onto the crop grid (``lungs.mask_in_crop``'s ``cv2.warpAffine``, bilinear, zero border,
   >= 0.5): ``tbedge_mask_warp`` with per-axis source positions from :func:`warp_tables`;
3. dilation by a disc (``cv2.dilate`` + ``MORPH_ELLIPSE``): ``tbedge_dilate`` with :func:`disc_rows`;
4. feathering (``cv2.GaussianBlur``, sigma r / 2, reflect-101 border): the resize kernel again, with
   the Gaussian taps as CSR tables (:func:`blur_tables`);
5. ``masked_eq`` only: ``lungs.equalize`` over the lung pixels: ``tbedge_equalize``;
6. blend to the lung mean outside the lungs + the lung-weight channel (``lungs.apply_mask`` +
   ``stack_input``): ``tbedge_mask_blend``.

A fallback box (mask failed QA) has weights 1 everywhere: steps 2-4 are skipped, the kernels take
``all_inside``. The kernels do no coordinate arithmetic; every position and weight comes from here.

Step 2 is a hard threshold, so the source positions must round exactly as this host's OpenCV
rounds them (a pixel flipped there moves the feathered weights by up to ~0.01). OpenCV up to 4.10
computes them in fixed point (1/32 pixel); 4.11+ in float32, with or without a fused multiply-add
depending on the build and CPU. :func:`warp_rule` asks ``cv2.warpAffine`` itself once, on probe
maps that separate the rules, and the tables follow the answer.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from ..lungs import CROP_PREPS, MASK_DILATE
from .plan import ResizeTables, _csr_from_parts, resize_reference, resize_tables

log = logging.getLogger("tbedge.gpu")

FMA = "fma"  # float32 position, one rounding: fma(scale, d, offset) (SIMD code on AVX2 / NEON)
ROUND2 = "round2"  # float32 position, two roundings: scale * d, then + offset
FIXED = "fixed"  # OpenCV <= 4.10: fixed point, AB_BITS 10, positions on a 1/32-pixel grid


# -- step 2: the cleaned mask on the crop grid ------------------------------------------------------
def crop_grid_map(box: tuple[int, int, int, int], mask_shape: tuple[int, int], native_shape: tuple[int, int],
                  size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((scale_x, offset_x), (scale_y, offset_y)): crop pixel u -> mask position scale * u + offset,
    the affine map ``lungs.mask_in_crop`` hands to warpAffine (float64, same expression)."""
    mh, mw = mask_shape
    nh, nw = native_shape
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / size * mw / nw, (y1 - y0) / size * mh / nh
    return (sx, x0 * mw / nw + 0.5 * sx - 0.5), (sy, y0 * mh / nh + 0.5 * sy - 0.5)


def _fma32(a, b, c) -> np.ndarray:
    # float32 a * b + c rounded once: the float64 product of two float32s is exact, and for the sizes
    # here so is the sum, so one rounding to float32 is the fused result.
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def warp_axis(scale: float, offset: float, n: int, rule: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(first source index int32, fraction float32) for destinations 0..n-1 along one axis.

    ``axis`` matters for the float rules: OpenCV's SIMD code fuses x positions (fma(M0, x, M2)) when
    the CPU has FMA, and computes the row's y position once as ``y * M4 + M5`` in scalar code, fused
    or not as the compiler chose."""
    d = np.arange(n)
    if rule == FIXED:  # warpAffine's AB_BITS = 10 table: round(offset * 1024) + 16 + round(scale * d * 1024)
        if axis == "x":
            pos = np.rint(offset * 1024.0).astype(np.int64) + 16 + np.rint(scale * d * 1024.0).astype(np.int64)
        else:
            pos = np.rint((scale * d + offset) * 1024.0).astype(np.int64) + 16
        pos >>= 5
        return (pos >> 5).astype(np.int32), ((pos & 31) / 32.0).astype(np.float32)
    m, c, df = np.float32(scale), np.float32(offset), d.astype(np.float32)
    if rule == FMA:
        s = _fma32(m, df, c)
    elif rule == ROUND2:
        s = (df * m).astype(np.float32) + c
    else:
        raise ValueError(f"unknown warp rule {rule!r}")
    i = np.floor(s)
    return i.astype(np.int32), (s - i).astype(np.float32)


@dataclass(frozen=True)
class WarpTables:
    """Per-axis source positions of the crop grid on the mask grid (kernel tbedge_mask_warp)."""

    xi: np.ndarray  # int32 (S,)
    xa: np.ndarray  # float32 (S,)
    yi: np.ndarray
    ya: np.ndarray

    def pack(self) -> np.ndarray:
        """One byte buffer for one copy: xi, xa, yi, ya, each S 4-byte values, in that order."""
        return np.concatenate([self.xi.view(np.uint8), self.xa.view(np.uint8), self.yi.view(np.uint8),
                               self.ya.view(np.uint8)])


def warp_tables(box, mask_shape, native_shape, size: int, rule: tuple[str, str] | None = None) -> WarpTables:
    (sx, ox), (sy, oy) = crop_grid_map(box, mask_shape, native_shape, size)
    rx, ry = rule or warp_rule(size)
    xi, xa = warp_axis(sx, ox, size, rx, "x")
    yi, ya = warp_axis(sy, oy, size, ry, "y")
    return WarpTables(xi, xa, yi, ya)


def warp_reference(mask: np.ndarray, t: WarpTables) -> np.ndarray:
    """tbedge_mask_warp in numpy: bilinear with a zero border in OpenCV's form v0 + a (v1 - v0) (fused,
    as its SIMD code does), then >= 0.5 -> uint8 0/1."""
    h, w = mask.shape
    m = mask.astype(np.float32)

    def px(y, x):
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return np.where(ok, m[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], np.float32(0))

    y, x = t.yi.astype(np.int64)[:, None], t.xi.astype(np.int64)[None, :]
    p00, p01, p10, p11 = px(y, x), px(y, x + 1), px(y + 1, x), px(y + 1, x + 1)
    a, b = t.xa[None, :], t.ya[:, None]
    v0 = _fma32(a, p01 - p00, p00)
    v1 = _fma32(a, p11 - p10, p10)
    v = _fma32(b, (v1 - v0).astype(np.float32), v0)
    return (v >= 0.5).astype(np.uint8)


def _probe_maps() -> list[tuple[float, float]]:
    # A scale p / q with q not a power of two puts every q-th source position exactly half-way between
    # two pixels in real numbers but not in float32, where the rules round to different sides. The
    # offsets are lungs.mask_in_crop's for boxes starting on a mask pixel.
    return [(p / q, start + 0.5 * p / q - 0.5) for p, q, start in
            ((8, 7, 0), (4, 3, 2), (6, 5, 1), (10, 9, 0), (2, 3, 5), (4, 5, 3), (16, 15, 0), (11, 7, 0))]


def _cv2_warp(mask: np.ndarray, mx, my, wh: tuple[int, int]) -> np.ndarray:
    m = np.array([[mx[0], 0, mx[1]], [0, my[0], my[1]]], np.float64)
    w = cv2.warpAffine(mask.astype(np.float32), m, wh, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (w >= 0.5).astype(np.uint8)


def probe_mismatches(size: int, axis: str, rule: str) -> int:
    """Pixels where ``rule`` for ``axis`` disagrees with this host's cv2.warpAffine on probe maps: stripes
    across that axis, so only its positions decide. x: the crop's full width (OpenCV's SIMD loop
    covers whole vectors, so the width decides which code computes each column), a few rows; y:
    every row (each row's position is computed once), 64 columns."""
    stripes = np.broadcast_to(np.arange(256) % 2, (256, 256)).astype(np.uint8)
    mask, wh = (stripes, (size, 4)) if axis == "x" else (np.ascontiguousarray(stripes.T), (64, size))
    other = FIXED if rule == FIXED else FMA  # the other axis sees constant stripes: any rule will do
    bad = 0
    for m in _probe_maps():
        ident = (1.0, 0.0)
        mx, my = (m, ident) if axis == "x" else (ident, m)
        rx, ry = (rule, other) if axis == "x" else (other, rule)
        t = WarpTables(*warp_axis(*mx, wh[0], rx, "x"), *warp_axis(*my, wh[1], ry, "y"))
        bad += int((warp_reference(mask, t) != _cv2_warp(mask, mx, my, wh)).sum())
    return bad


@functools.lru_cache(maxsize=8)
def warp_rule(size: int) -> tuple[str, str]:
    """The (x, y) rounding rule of this host's cv2.warpAffine for a ``size``-wide crop (cached)."""
    score = {(ax, r): probe_mismatches(size, ax, r) for ax in ("x", "y") for r in (FIXED, FMA, ROUND2)}
    if score["x", FIXED] + score["y", FIXED] == 0:
        return FIXED, FIXED
    rule = tuple(min((FMA, ROUND2), key=lambda r, ax=ax: score[ax, r]) for ax in ("x", "y"))
    if score["x", rule[0]] or score["y", rule[1]]:  # an OpenCV this code does not know
        log.warning("cv2 %s warpAffine matches no known rounding rule (%s); device lung masks may differ "
                    "from the host's by a pixel", cv2.__version__, score)
    return rule


# -- steps 3 and 4: dilation and feathering ---------------------------------------------------------
def dilate_radius(size: int, dilate: float = MASK_DILATE) -> int:
    return max(1, round(dilate * size))  # lungs.mask_in_crop's radius, same expression


@functools.lru_cache(maxsize=8)
def disc_rows(r: int) -> np.ndarray:
    """Half-width of cv2's MORPH_ELLIPSE element (2r+1 square) on each of its rows, -1 for an empty row."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    out = np.full(2 * r + 1, -1, np.int32)
    for i, row in enumerate(k):
        nz = np.flatnonzero(row)
        if len(nz):
            if nz.min() != 2 * r - nz.max() or len(nz) != nz.max() - nz.min() + 1:
                raise ValueError("the structuring element is not a centred run on each row")
            out[i] = nz.max() - r
    out.flags.writeable = False
    return out


def dilate_reference(m: np.ndarray, half: np.ndarray) -> np.ndarray:
    """tbedge_dilate in numpy: 1 where any in-image pixel within the element is 1 (cv2.dilate's border)."""
    h, w = m.shape
    r = (len(half) - 1) // 2
    pad = np.zeros((h + 2 * r, w + 2 * r), np.uint8)
    pad[r:r + h, r:r + w] = m
    out = np.zeros_like(m, dtype=np.uint8)
    for j in range(-r, r + 1):
        for dx in range(-int(half[j + r]), int(half[j + r]) + 1):
            out |= pad[r + j:r + j + h, r + dx:r + dx + w]
    return out


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(i)
    i = np.abs(i)
    period = 2 * n - 2
    i = i % period
    return np.where(i >= n, period - i, i)


@functools.lru_cache(maxsize=8)
def blur_tables(size: int, r: int) -> ResizeTables:
    """cv2.GaussianBlur(sigma = r / 2, ksize from sigma as OpenCV picks it for float images) as CSR
    tables for the resize kernel: each output sums the taps over its reflect-101 sources."""
    sigma = r / 2
    k = int(round(sigma * 4 * 2 + 1)) | 1  # createGaussianKernels for CV_32F (cvRound: halves never occur)
    taps = cv2.getGaussianKernel(k, sigma, cv2.CV_32F)[:, 0].astype(np.float32)
    idx = _reflect101(np.arange(size)[:, None] + np.arange(k)[None, :] - k // 2, size)
    t = _csr_from_parts(np.full(size, k), idx.ravel(), np.tile(taps, size))
    return ResizeTables((0, 0, size, size), t, t, "gaussian")


# -- steps 5 and 6 ---------------------------------------------------------------------------------
def _inside(wraw: np.ndarray, all_inside: bool) -> np.ndarray:
    inside = np.ones(wraw.shape, bool) if all_inside else wraw >= 0.5  # clip(w, 0, 1) >= 0.5 is w >= 0.5
    return inside if inside.any() else np.ones(wraw.shape, bool)


def equalize_reference(crop: np.ndarray, wraw: np.ndarray, all_inside: bool) -> np.ndarray:
    """tbedge_equalize: (lung pixels <= v) / (lung pixels) for each pixel v, in float64 then float32."""
    ref = np.sort(crop[_inside(wraw, all_inside)])
    return (np.searchsorted(ref, crop, side="right") / len(ref)).astype(np.float32)


def blend_reference(crop: np.ndarray, wraw: np.ndarray, all_inside: bool) -> np.ndarray:
    """tbedge_mask_blend: (S, S, 2) float32 = (crop w + fill (1 - w), w); w = clip(wraw, 0, 1) (1 for a
    fallback box), fill = the crop's mean over w >= 0.5 (float64 sum, as the kernel's)."""
    w = np.ones_like(crop) if all_inside else np.clip(wraw, 0, 1).astype(np.float32)
    inside = _inside(wraw, all_inside)
    fill = np.float32(crop[inside].astype(np.float64).sum() / inside.sum())
    out = (crop * w).astype(np.float32) + (fill * (np.float32(1) - w)).astype(np.float32)
    return np.stack([out, w], axis=-1).astype(np.float32)


# -- the whole chain --------------------------------------------------------------------------------
def lung_weights_reference(mask: np.ndarray, box, native_shape, size: int) -> np.ndarray:
    """Steps 2-4: raw (unclipped) feathered lung weights on the crop grid, float32 (S, S)."""
    warped = warp_reference(mask, warp_tables(box, mask.shape, native_shape, size))
    dilated = dilate_reference(warped, disc_rows(dilate_radius(size)))
    return resize_reference(dilated, blur_tables(size, dilate_radius(size)))


def classifier_input_reference(img: np.ndarray, box, mask: np.ndarray | None, size: int, prep: str,
                               crop: np.ndarray | None = None) -> np.ndarray:
    """What the device computes for ``lungs.classifier_input(img, lr, size, prep)``: ``mask`` is the
    cleaned mask, None for a fallback box. ``crop`` may be given (the box crop, step 1) to skip it."""
    if prep not in CROP_PREPS:
        raise ValueError(f"unknown crop preparation {prep!r}; choose one of {CROP_PREPS}")
    c = resize_reference(img, resize_tables(img.shape, size, box)) if crop is None else crop
    if prep == "box":
        return c[..., None]
    fallback = mask is None
    wraw = np.ones_like(c) if fallback else lung_weights_reference(mask, box, img.shape, size)
    if prep == "masked_eq":
        c = equalize_reference(c, wraw, fallback)
    return blend_reference(c, wraw, fallback)


__all__ = ["FIXED", "FMA", "ROUND2", "WarpTables", "blend_reference", "blur_tables",
           "classifier_input_reference", "crop_grid_map", "dilate_radius", "dilate_reference", "disc_rows",
           "equalize_reference", "lung_weights_reference", "probe_mismatches", "warp_axis", "warp_reference",
           "warp_rule", "warp_tables"]
