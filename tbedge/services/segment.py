"""``tbedge segment``: cleaned lung mask at input resolution + a contour/box overlay per image."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from ..inputs import expand_inputs
from ..outputs.files import output_stem, relative_name, write_png
from ..runtime import lungs as L
from ..runtime.pipeline import Pipeline
from ..schema import STATUS_OK

log = logging.getLogger("tbedge.segment")


def segment_overlay(img: np.ndarray, lr: L.LungResult) -> np.ndarray:
    out = cv2.cvtColor((np.clip(img, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    th = max(2, round(img.shape[0] / 300))
    m = L.mask_to_native(lr.mask, img.shape)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), th)
    x0, y0, x1, y1 = lr.box
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 220, 255) if lr.fallback else (255, 200, 0), th)
    if lr.fallback:
        cv2.putText(out, "lungs implausible: fallback crop", (10, 40), cv2.FONT_HERSHEY_SIMPLEX,
                    img.shape[0] / 900, (0, 0, 255), th)
    return out


OUTPUT_FAILED = "output_failed"  # the key in ``skipped`` for films whose mask or overlay could not be written


def _write_film(s, stem: Path, out: Path) -> None:
    img, lr = s.image.pixels, s.lungs
    write_png(out / f"{stem}_mask.png", L.mask_to_native(lr.mask, img.shape) * np.uint8(255))
    write_png(out / f"{stem}_overlay.png", segment_overlay(img, lr))


def segment_files(inputs: list[str | Path], out: Path, engine: Path | None = None,
                  backend: str = "auto", strict_engine: bool = False) -> tuple[list[Path], dict[str, int]]:
    """Mask + overlay for each image (``<name>_<sha256[:12]>_mask.png``, ``_overlay.png``), through the
    pipeline's own lung stage (same decoding, batching, self-test and per-file error handling as ``screen``;
    the classifier is not loaded). A file that cannot be read, segmented or written is skipped, never the
    whole run: returns the files written and the count of skipped ones per reason code (``output_failed``
    for a write that failed, logged by content hash: file names can carry patient names)."""
    files, roots = expand_inputs(inputs)
    written: list[Path] = []
    skipped: dict[str, int] = {}
    with Pipeline(engine, backend=backend, roles=("lungs",), strict_engine=strict_engine) as pipe:
        for f, s in zip(files, pipe.run(files), strict=True):
            reason = s.result.reason if s.result.status != STATUS_OK else None
            if reason is None:
                try:
                    _write_film(s, output_stem(relative_name(f, roots), s.result.sha256), out)
                    written.append(f)
                except Exception as e:  # noqa: BLE001 - one film's outputs never stop the others
                    log.warning("segment output failed for input %s: %s", (s.result.sha256 or "?")[:12],
                                type(e).__name__)
                    reason = OUTPUT_FAILED
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
    return written, skipped
