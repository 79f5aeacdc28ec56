"""What a person or a PACS gets from a scored film: JSONL lines, overlay PNGs, mask PNGs.

Every file is written atomically (temp file, fsync, rename): a crash never leaves half a result.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ..fsio import atomic_write_bytes, cut_name, fsync_dir, try_lock
from ..runtime import lungs as L
from ..runtime.pipeline import Scored

log = logging.getLogger("tbedge.outputs")

OVERLAY_MAX_SIDE = 2048


def write_png(path: str | Path, img: np.ndarray) -> None:
    ok, enc = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, enc.tobytes())


def native_mask(s: Scored) -> np.ndarray:
    """The cleaned lung mask at the input's resolution, 0/255 uint8."""
    return L.mask_to_native(s.lungs.mask, s.image.pixels.shape) * np.uint8(255)


HEAT_GRID = 224  # without lung weights, the heat map is composed on this grid over the crop box


def heat_in_crop(cam: np.ndarray, lung_weights: np.ndarray | None) -> np.ndarray:
    """CAM logits -> the [0, 1] heat map shown, on the crop grid of ``lung_weights`` (the lung
    channel of the classifier's own input, ``lungs.input_lung_weights``; HEAT_GRID² without).

    Only evidence *for* TB is drawn (positive CAM, bilinear, scaled by its maximum), weighted by
    the lung weights the classifier pooled over: the lung-pooled model counts evidence only where
    there is lung, so the map does not paint the chest wall or mediastinum next to a hot border
    cell (a fallback box has weights 1 everywhere).
    """
    gh, gw = lung_weights.shape if lung_weights is not None else (HEAT_GRID, HEAT_GRID)
    h = cv2.resize(np.maximum(cam.astype(np.float32), 0), (gw, gh), interpolation=cv2.INTER_LINEAR)
    if lung_weights is not None:
        h = h * lung_weights
    return np.clip(h / max(float(h.max()), 1e-6), 0, 1)


def shown_heat(s: Scored) -> np.ndarray:
    """The heat map shown for a scored film, on its crop grid."""
    if s.classifier_input is not None:
        return heat_in_crop(s.cam, L.input_lung_weights(s.classifier_input))
    return heat_in_crop(s.cam, s.lung_weights)  # the device path brings back only the lung weights


def heat_png(s: Scored) -> np.ndarray:
    """The shown heat map (:func:`shown_heat`) as 8-bit grey on its crop grid: 0 = no evidence, 255 = the
    film's hottest lung point. It covers ``result.lungs.bbox``; a viewer colours it and lays it over the film
    at any opacity (``tbedge ui``), where :func:`render_overlay` bakes it into one picture."""
    return np.round(shown_heat(s) * 255).astype(np.uint8)


def render_overlay(s: Scored) -> np.ndarray:
    """Original film with lung contour, crop box, TB heat map and score (BGR uint8)."""
    img = s.image.pixels
    scale = min(1.0, OVERLAY_MAX_SIDE / max(img.shape))
    # Shrink first, then colour: a float BGR copy at native size cost ~40 bytes a pixel (215 MB for a
    # 2306x2320 film, over 700 MB for a 4300x4300 one) for an image written at OVERLAY_MAX_SIDE anyway.
    small = img if scale == 1 else cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    base = (np.clip(small, 0, 1) * 255).astype(np.uint8)
    bgr = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR).astype(np.float32)
    r = s.result
    if s.cam is not None and s.lungs is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in s.lungs.box)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # a box never shrinks to nothing
        heat = cv2.resize(shown_heat(s), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        roi = bgr[y0:y1, x0:x1]  # a view: blended in place, no full-size temporaries
        heat = heat[:roi.shape[0], :roi.shape[1]]
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
        alpha = (0.45 * heat)[..., None]
        colour *= alpha
        roi *= 1 - alpha
        roi += colour
    out = bgr.astype(np.uint8)
    th = max(2, round(out.shape[0] / 300))
    if s.lungs is not None:
        m = cv2.resize(s.lungs.mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), th)
        x0, y0, x1, y1 = (round(v * scale) for v in s.lungs.box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 220, 255) if s.lungs.fallback else (255, 200, 0), th)
    if r.tb_score is not None:
        text = f"TB score {r.tb_score:.0f}  {r.triage.upper()}"
        if r.qa_flags:
            text += "  [" + ",".join(r.qa_flags) + "]"
        fs = out.shape[0] / 900
        cv2.putText(out, text, (10, round(40 * fs) + 5), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), th + 2)
        cv2.putText(out, text, (10, round(40 * fs) + 5), cv2.FONT_HERSHEY_SIMPLEX, fs,
                    (0, 0, 255) if r.triage == "refer" else (0, 200, 0), th)
    return out


STEM_MAX_BYTES = 160  # leaves room for "_<sha12>_overlay.png" and the temp name of an atomic write


def output_stem(rel: Path, sha256: str | None) -> Path:
    """``<folders>/<stem>_<sha256[:12]>``: outputs of inputs that share a file name (a glob over folders)
    never overwrite each other, and a 255-byte input name still gives output names that fit."""
    stem = cut_name(rel.with_suffix("").name, STEM_MAX_BYTES)
    return rel.parent / f"{stem}_{(sha256 or 'nohash')[:12]}"


def relative_name(path: Path, roots: list[Path]) -> Path:
    """``path`` relative to the input root it came from (folders kept), else just its name."""
    for root in roots:
        try:  # realpath, not resolve(): a symlink loop must not raise here
            return Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        except ValueError:
            continue
    return Path(path.name)


class JsonlWriter:
    """One complete JSON line per input, flushed and fsynced per line; the file appears under
    its final name only when complete (``.partial`` until then).

    A run that stops early (an exception, Ctrl-C; SIGKILL too) leaves its lines in ``.partial``.
    A new writer refuses to overwrite them unless ``resume``: then it keeps them (``prior``, parsed;
    a line torn by a kill is cut off) and appends after them. The ``.partial`` is locked while
    written, so a second run on the same output is refused, not interleaved."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.prior: list[dict] = []
        self.count = 0
        left = self.tmp.exists() and self.tmp.stat().st_size > 0
        fd = try_lock(self.tmp)
        if fd is None:
            raise FileExistsError(f"another tbedge screen is writing {self.tmp}")
        try:
            if left and not resume:
                raise FileExistsError(f"an interrupted run left {self.tmp}: pass --resume to go on from it, "
                                      "or delete it")
            keep = b""
            if left:
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                keep = data[:data.rfind(b"\n") + 1]  # complete lines only
                try:
                    self.prior = [json.loads(line) for line in keep.splitlines()]
                except json.JSONDecodeError:
                    raise FileExistsError(f"{self.tmp} is not a results file of this tool; move it away") from None
            os.truncate(fd, len(keep))
            os.lseek(fd, 0, os.SEEK_END)
            self.f = open(fd, "w")  # noqa: SIM115 - closed in close(); holds the lock until then
        except BaseException:
            os.close(fd)
            raise

    def drop_prior(self, stale: set[int]) -> None:
        """Remove the prior lines at these indexes (inputs rewritten since): they are scored again. The
        .partial is rewritten in place; a crash meanwhile only means more inputs are scored again."""
        if not stale:
            return
        self.prior = [r for i, r in enumerate(self.prior) if i not in stale]
        self.f.seek(0)
        self.f.truncate()
        self.f.write("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in self.prior))
        self.f.flush()
        os.fsync(self.f.fileno())

    def write(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.count += 1

    def close(self) -> None:
        os.replace(self.tmp, self.path)  # before close: the lock is held until the file has its name
        self.f.close()
        fsync_dir(self.path.parent)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
            return False
        self.f.close()
        if self.count or self.prior:
            log.warning("stopped early: %d results kept in %s; run again with --resume to go on",
                        self.count + len(self.prior), self.tmp)
        else:
            self.tmp.unlink(missing_ok=True)  # nothing to keep: do not block the next run
        return False
