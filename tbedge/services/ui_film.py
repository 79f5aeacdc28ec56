"""What ``tbedge ui`` shows for one film: the film itself (decoded as it was scored), the layers drawn over
it (heat map, lung contour, crop box, or ``screen``'s baked overlay), its reasons in plain words and, only
when asked for, the patient's name and ID from the DICOM header. Read-only; small caches keyed by path and
mtime keep a film that is looked at twice from being decoded twice."""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from .. import schema
from ..runtime.imaging import load_image

WEBUI = Path(__file__).resolve().parents[1] / "webui"
FILM_MAX_SIDE = 2048  # as the overlays (outputs.files.OVERLAY_MAX_SIDE): enough for a laptop screen
CONTOUR_MAX_SIDE = 1024  # the lung mask is traced at this size; finer steps would not show


class _Lru:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


def _stamp(p: Path) -> tuple[str, int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return str(p), st.st_mtime_ns, st.st_size


_films = _Lru(16)
_contours = _Lru(64)
_patients = _Lru(512)


class FilmUnavailable(Exception):
    """The film cannot be shown: gone (retention), unreadable, or no longer the film that was scored."""


def film_png(path: Path | None, sha256: str | None) -> tuple[bytes, tuple[int, int]]:
    """(PNG bytes at most FILM_MAX_SIDE, native (H, W)) of the film as the pipeline saw it (windowing,
    polarity correction). Refused when the file's content hash is not the result's: a viewer must never put
    a result next to another film."""
    stamp = _stamp(path) if path is not None else None
    if stamp is None:
        raise FilmUnavailable("the film is no longer where the results say (moved, or deleted by retention)")

    def make():
        try:
            img = load_image(path)
        except schema.TbedgeInputError as e:
            return FilmUnavailable(f"the film cannot be read now ({e.reason})")
        if sha256 and img.meta.sha256 != sha256:
            return FilmUnavailable("the file there now is not the film that was scored (its content changed)")
        px = img.pixels
        scale = min(1.0, FILM_MAX_SIDE / max(px.shape))
        if scale < 1:
            px = cv2.resize(px, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, enc = cv2.imencode(".png", np.round(np.clip(px, 0, 1) * 255).astype(np.uint8),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        return enc.tobytes(), tuple(img.pixels.shape[:2])

    out = _films.get(stamp, make)
    if isinstance(out, FilmUnavailable):
        raise out
    return out


def png_shape(path: Path | None) -> tuple[int, int] | None:
    """(H, W) from a PNG's header (the lung mask is written at the film's native size)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except (OSError, TypeError):
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def lung_contour(mask_path: Path | None) -> list[list[list[float]]]:
    """Outer contours of the lung mask PNG, as polygons in the film's native pixels."""
    stamp = _stamp(mask_path) if mask_path is not None else None
    if stamp is None:
        return []

    def make():
        m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            return []
        scale = min(1.0, CONTOUR_MAX_SIDE / max(m.shape))
        small = m if scale == 1 else cv2.resize(m, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cs, _ = cv2.findContours((small > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return [[[round((x + 0.5) / scale, 1), round((y + 0.5) / scale, 1)]
                 for x, y in cv2.approxPolyDP(c, 0.75, True)[:, 0, :]] for c in cs if len(c) >= 3]

    return _contours.get(stamp, make)


def patient(path: Path | None) -> dict | None:
    """PatientName and PatientID from a DICOM film's header (``--show-patient`` only), None for other films.
    Never logged, never written."""
    stamp = _stamp(path) if path is not None else None
    if stamp is None:
        return None

    def make():
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
        except Exception:  # noqa: BLE001 - not DICOM, or a header pydicom refuses: nothing to show
            return None
        name, pid = str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")
        return {"name": name.replace("^", " ").strip(), "id": pid} if name or pid else None

    return _patients.get(stamp, make)


# -- plain words ----------------------------------------------------------------------------------------------
@functools.cache
def _details() -> dict:
    """How tbedge decides each code, from docs/reason-codes.md (tools/reason_text.py writes this file)."""
    return json.loads((WEBUI / "reasons.json").read_text())


def explain(result: dict) -> list[dict]:
    """Why a film was rejected, failed or flagged: the code, its meaning in plain words (schema.py, which the
    doc copies verbatim) and how tbedge decides it (the doc's own column)."""
    out = []
    reason = result.get("reason")
    if reason:
        kind = "error" if reason in schema.ERROR_REASONS else "rejected"
        meaning = schema.REASONS.get(reason) or schema.ERROR_REASONS.get(reason, reason)
        out.append({"code": reason, "kind": kind, "meaning": meaning,
                    "when": _details()["reasons"].get(reason, ""), "detail": result.get("detail") or ""})
    for f in result.get("qa_flags") or []:
        out.append({"code": f, "kind": "flag", "meaning": schema.QA_FLAGS.get(f, f),
                    "when": _details()["qa_flags"].get(f, ""), "forces_refer": f in schema.REFER_FLAGS})
    return out


def plain_words() -> dict:
    """Every code's meaning, for the worklist's tooltips."""
    return {**schema.REASONS, **schema.ERROR_REASONS, **schema.QA_FLAGS}


def outputs_by_kind(result: dict) -> dict[str, str]:
    """Output kind -> path as the result names it, for the outputs that were written."""
    return {o["kind"]: o["path"] for o in result.get("outputs") or [] if not o.get("error")}
