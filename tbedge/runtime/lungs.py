"""Lungs: heat map -> cleaned mask -> QA -> bounding box at native resolution -> crop.

Each cleaning step is a plain function so it can be tested on crafted masks. The lung model
normalises its own input (per-image layer normalisation inside the graph), so preprocessing here
is only a resize to the model's input size with area averaging and a [0, 1] float image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

LUNG_INPUT = 256
HEAT_THRESHOLD = 0.5
SECOND_LUNG_MIN_RATIO = 0.10  # a second component smaller than this x the largest is debris
BBOX_MARGIN = 0.05  # of the box size, each side
FALLBACK_FRACTION = 0.80  # fallback crop: the central 80 % x 80 % of the image
# Lung-masked crops: the mask is dilated by this fraction of the crop size (keeps the pleura,
# apical caps and effusions) and feathered, and the rest of the crop is set to the lung mean, so
# the classifier cannot key on labels, collimators, tubes or the crop's borders.
MASK_DILATE = 0.04

# QA limits, chosen from the masks in ../shared/data (all 704 pass them).
QA_AREA_RANGE = (0.06, 0.65)
QA_MIN_BOX = (0.30, 0.25)  # width, height as fractions of the image
QA_CENTRE_RANGE = (0.25, 0.75)
QA_MIN_BALANCE = 0.08  # smaller lung / larger lung (a real collapsed TB lung measured 0.10)
QA_MAX_UNCERTAIN = 0.35  # pixels with 0.2 < p < 0.8, relative to the mask area
# Mean lung probability inside the cleaned mask: >= 0.951 on 99 % of the real films here, 0.82-0.91
# on photographs (scikit-image's astronaut, coffee, cat, moon) where the shape alone can pass.
QA_MIN_CONFIDENCE = 0.93
# A lung running along the film's left or right edge for this fraction of the height, while the lung
# fields cover less than QA_CUT_MAX_AREA: the film shows part of a chest, or a "lung" was found outside
# it. Tightly cut films run along the edge too (15 % of `tb_more`), but their lungs are large: of 5,506
# real films, 3 fail this rule alone, 2 of them with wrong masks (MODEL_CARD_lungs.md).
QA_EDGE_RUN = 0.10
QA_CUT_MAX_AREA = 0.20


def resize_area(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a float32 gray image to size (int or (w, h)) with area averaging when shrinking."""
    w, h = (size, size) if isinstance(size, int) else size
    interp = cv2.INTER_AREA if (w <= img.shape[1] and h <= img.shape[0]) else cv2.INTER_LINEAR
    return cv2.resize(img.astype(np.float32, copy=False), (w, h), interpolation=interp)


def preprocess(img: np.ndarray, size: int = LUNG_INPUT) -> np.ndarray:
    """Native float image in [0, 1] -> (size, size, 1) float32 model input."""
    return resize_area(img, size)[..., None]


# -- cleaning steps ------------------------------------------------------------------------
def threshold(heat: np.ndarray, thr: float = HEAT_THRESHOLD) -> np.ndarray:
    return (heat >= thr).astype(np.uint8)


def keep_largest(mask: np.ndarray, k: int = 2, min_ratio: float = SECOND_LUNG_MIN_RATIO) -> np.ndarray:
    """Keep the k largest 8-connected components; later ones only if >= min_ratio x the largest."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=np.uint8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas, kind="stable")[:k]
    keep = [i + 1 for i in order if areas[i] >= min_ratio * areas[order[0]]]
    return np.isin(labels, keep).astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask, dtype=np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def smooth(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    if radius <= 0:
        return mask.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, k)
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, k)


def clean(heat: np.ndarray, thr: float = HEAT_THRESHOLD) -> np.ndarray:
    """Heat map (H, W) in [0, 1] -> cleaned binary mask (uint8 0/1) at the same size."""
    m = threshold(heat, thr)
    m = keep_largest(m)
    m = fill_holes(m)
    m = smooth(m, radius=max(1, round(2 * heat.shape[0] / 256)))
    return keep_largest(m)  # smoothing can split a thin bridge; keep the cleaning invariant


# -- QA -----------------------------------------------------------------------------------
@dataclass
class MaskQA:
    area_fraction: float
    n_components: int
    balance: float | None  # smaller / larger component area; None with one component
    centre: tuple[float, float] | None  # bbox centre, fractions of width / height
    box_size: tuple[float, float] | None  # bbox width / height, fractions
    uncertain_fraction: float
    confidence: float | None = None  # mean heat inside the mask
    failures: list[str] = field(default_factory=list)

    @property
    def plausible(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"area_fraction": round(self.area_fraction, 4), "n_components": self.n_components,
                "balance": None if self.balance is None else round(self.balance, 3),
                "centre": None if self.centre is None else [round(c, 3) for c in self.centre],
                "box_size": None if self.box_size is None else [round(c, 3) for c in self.box_size],
                "uncertain_fraction": round(self.uncertain_fraction, 4),
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "failures": list(self.failures)}


def edge_run(mask: np.ndarray) -> float:
    """Fraction of the mask's height along which it lies on the left or right border column."""
    return max(int(mask[:, 0].sum()), int(mask[:, -1].sum())) / mask.shape[0]


def mask_qa(mask: np.ndarray, heat: np.ndarray | None = None) -> MaskQA:
    h, w = mask.shape
    area = float(mask.sum())
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = sorted(stats[1:, cv2.CC_STAT_AREA].tolist(), reverse=True)
    balance = areas[1] / areas[0] if len(areas) >= 2 else None
    uncertain, confidence = 0.0, None
    if heat is not None:
        unsure = float(((heat > 0.2) & (heat < 0.8)).sum())
        uncertain = unsure / max(area, 1.0)
        if area:
            confidence = float(heat[mask > 0].mean())
    centre = box = None
    fails = []
    if area == 0:
        fails.append("empty")
    else:
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        centre = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h)
        box = ((x1 - x0) / w, (y1 - y0) / h)
        af = area / (h * w)
        if not QA_AREA_RANGE[0] <= af <= QA_AREA_RANGE[1]:
            fails.append("area")
        if box[0] < QA_MIN_BOX[0] or box[1] < QA_MIN_BOX[1]:
            fails.append("box_size")
        if not all(QA_CENTRE_RANGE[0] <= c <= QA_CENTRE_RANGE[1] for c in centre):
            fails.append("position")
        if balance is not None and balance < QA_MIN_BALANCE:
            fails.append("balance")
        if len(areas) == 1:  # half a chest, or a lung the model could not find: the crop would be a guess
            fails.append("one_lung")
        if uncertain > QA_MAX_UNCERTAIN:
            fails.append("uncertain")
        if confidence is not None and confidence < QA_MIN_CONFIDENCE:
            fails.append("low_confidence")
        if edge_run(mask) > QA_EDGE_RUN and af < QA_CUT_MAX_AREA:
            fails.append("cut_off")
    return MaskQA(area / (h * w), len(areas), balance, centre, box, uncertain, confidence, fails)


# -- boxes and crops ----------------------------------------------------------------------
def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, in mask pixels; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def bbox_to_native(box: tuple[int, int, int, int], mask_shape: tuple[int, int],
                   native_shape: tuple[int, int], margin: float = BBOX_MARGIN) -> tuple[int, int, int, int]:
    """Map a mask-space box to native pixels, add a margin, clip to the image."""
    mh, mw = mask_shape
    nh, nw = native_shape
    sx, sy = nw / mw, nh / mh
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my))),
            min(nw, int(np.ceil(x1 + mx))), min(nh, int(np.ceil(y1 + my))))


def fallback_box(native_shape: tuple[int, int], fraction: float = FALLBACK_FRACTION) -> tuple[int, int, int, int]:
    h, w = native_shape
    dx, dy = round(w * (1 - fraction) / 2), round(h * (1 - fraction) / 2)
    return dx, dy, w - dx, h - dy


def crop(img: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop the native image to box and resize to (size, size) float32."""
    x0, y0, x1, y1 = box
    return resize_area(img[y0:y1, x0:x1], size)


def mask_in_crop(mask: np.ndarray, box: tuple[int, int, int, int], native_shape: tuple[int, int],
                 size: int, dilate: float = MASK_DILATE) -> np.ndarray:
    """The cleaned mask (model resolution) resampled onto the crop grid of ``box`` (native pixels),
    dilated and feathered: float32 (size, size) weights in [0, 1]."""
    mh, mw = mask.shape
    nh, nw = native_shape
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / size * mw / nw, (y1 - y0) / size * mh / nh
    # crop pixel centre u -> native x0 + (u + 0.5) (x1 - x0) / size -> mask pixel (centre convention)
    m = np.array([[sx, 0, x0 * mw / nw + 0.5 * sx - 0.5], [0, sy, y0 * mh / nh + 0.5 * sy - 0.5]], np.float64)
    w = cv2.warpAffine(mask.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    w = (w >= 0.5).astype(np.uint8)
    r = max(1, round(dilate * size))
    w = cv2.dilate(w, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return np.clip(cv2.GaussianBlur(w.astype(np.float32), (0, 0), r / 2), 0, 1)


def apply_mask(crop: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Blend the crop towards its mean inside the lungs where ``weights`` falls to 0."""
    inside = weights >= 0.5
    fill = float(crop[inside].mean()) if inside.any() else float(crop.mean())
    return (crop * weights + fill * (1 - weights)).astype(np.float32)


def equalize(crop: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Histogram-equalise the crop on its lung pixels: each pixel becomes the fraction of lung
    pixels at or below it, so scanners with other tone curves give the same lung histogram."""
    ref = np.sort(crop[inside] if inside.any() else crop.ravel())
    return (np.searchsorted(ref, crop, side="right") / len(ref)).astype(np.float32)


CROP_PREPS = ("box", "masked", "masked_eq")  # classifier input: plain box crop, lung-masked, + equalised


def prepare_crop(crop: np.ndarray, weights: np.ndarray | None, prep: str) -> np.ndarray:
    """The classifier's image from a box crop and its lung weights. ``weights`` None (a fallback
    box: the mask failed QA) means all ones: nothing is masked, the whole crop is equalised."""
    if prep not in CROP_PREPS:
        raise ValueError(f"unknown crop preparation {prep!r}; choose one of {CROP_PREPS}")
    if prep == "box":
        return crop
    w = np.ones_like(crop) if weights is None else weights
    if prep == "masked_eq":
        crop = equalize(crop, w >= 0.5)
    return apply_mask(crop, w)


def input_channels(prep: str) -> int:
    """Channels of the classifier input for a crop prep: the crop, plus the lung weights if masked."""
    return 1 if prep == "box" else 2


def stack_input(crop: np.ndarray, weights: np.ndarray | None, prep: str) -> np.ndarray:
    """(S, S, C) float32 classifier input: C = 1 for "box"; otherwise the prepared crop and the lung
    weights (the model pools its evidence over them). ``weights`` None = fallback box: the crop is
    left unmasked and every position counts."""
    if prep == "box":
        return prepare_crop(crop, None, prep)[..., None].astype(np.float32)
    w = np.ones_like(crop) if weights is None else weights
    return np.stack([prepare_crop(crop, w, prep), w], axis=-1).astype(np.float32)


def input_lung_weights(x: np.ndarray) -> np.ndarray | None:
    """The lung-weight channel of a classifier input from :func:`stack_input` (None for "box")."""
    return x[..., 1] if x.shape[-1] == 2 else None


def classifier_input(img: np.ndarray, lr: LungResult, size: int, prep: str = "box") -> np.ndarray:
    """The classifier's (size, size, C) input from the native image and its lung result: the box
    crop, lung-masked (and equalised) per ``prep`` with its lung weights; a fallback crop is never
    masked (its mask failed QA: weights all ones)."""
    c = crop(img, lr.box, size)
    if prep == "box" or lr.fallback:
        return stack_input(c, None, prep)
    return stack_input(c, mask_in_crop(lr.mask, lr.box, img.shape, size), prep)


def mask_to_native(mask: np.ndarray, native_shape: tuple[int, int]) -> np.ndarray:
    """Upsample a cleaned mask to the native size (linear, then threshold: smooth edges)."""
    nh, nw = native_shape
    up = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    return (up >= 0.5).astype(np.uint8)


@dataclass
class LungResult:
    mask: np.ndarray  # cleaned, at model resolution (uint8 0/1)
    heat: np.ndarray  # model output at model resolution
    qa: MaskQA
    box: tuple[int, int, int, int]  # native pixels, the crop actually used
    fallback: bool


def analyse(heat: np.ndarray, native_shape: tuple[int, int]) -> LungResult:
    """Heat map -> cleaned mask, QA and the native crop box (fallback when implausible)."""
    mask = clean(heat)
    qa = mask_qa(mask, heat)
    b = bbox(mask)
    if qa.plausible and b is not None:
        return LungResult(mask, heat, qa, bbox_to_native(b, mask.shape, native_shape), False)
    return LungResult(mask, heat, qa, fallback_box(native_shape), True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    u = (a | b).sum()
    return 1.0 if u == 0 else float((a & b).sum() / u)
