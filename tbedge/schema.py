"""The one definition of a per-image result, its reason codes, QA flags and stage names.

Every command (screen, watch, bench, evaluate) writes results through :class:`Result`;
nothing else in the project spells these names.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import TbedgeError

SCHEMA_VERSION = "1.0"

# Pipeline stages, in order. Timing keys, bench rows and error results use exactly these.
STAGES = ("decode", "preprocess", "segment", "clean_crop", "classify", "postprocess")

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"  # the input cannot be read or is not an intended input
STATUS_ERROR = "error"  # processing failed; `reason` names the stage ("error_<stage>")
STATUSES = (STATUS_OK, STATUS_REJECTED, STATUS_ERROR)

TRIAGE_REFER = "refer"
TRIAGE_CLEAR = "clear"

CLASS_NAMES = ("normal", "tb", "other")

# Kinds of files written for one input (Result.outputs).
# "heat": the heat map on its crop grid, 8-bit grey, for a viewer to colour and lay over `lungs.bbox`.
OUTPUT_KINDS = ("overlay", "mask", "heat", "dicom_sc", "dicom_sr")

# Reason codes for "rejected" results: one per failure class, each with a sentence for humans.
REASONS: dict[str, str] = {
    "empty_file": "the file has zero bytes",
    "not_an_image": "the content is not a recognised image or DICOM file",
    "truncated": "the file ends before the image data does (incomplete copy or transfer)",
    "unsupported_format": "an image format or DICOM encoding tbedge cannot decode",
    "too_large": "the image declares more pixels, or needs more memory to decode, than the configured limits",
    "too_small": "the image is too small to read (shorter side under 128 pixels: a thumbnail, not a film)",
    "dicom_no_pixels": "a DICOM object without Pixel Data (e.g. a report or a structured object)",
    "dicom_not_cxr": "the DICOM modality or body part is clearly not a chest radiograph",
    "dicom_lateral": "a lateral view (ViewPosition LL/RL); tbedge reads frontal films only",
    "dicom_multiframe": "a multi-frame DICOM object; tbedge reads single radiographs",
    "unreadable": "the file could not be opened (permissions or I/O error)",
}
# "error" results: processing failed at a stage; the code names it.
ERROR_REASONS: dict[str, str] = {f"error_{s}": f"processing failed in stage '{s}'" for s in STAGES}

# QA flags on "ok" results: the film was scored, but a person should know this.
QA_FLAGS: dict[str, str] = {
    "under_15": "patient younger than 15 years: WHO recommends CAD for ages 15 and over",
    "ap_view": "AP view (ViewPosition AP): CAD is validated on PA films",
    "inverted_suspected": "polarity looks inverted (bright air); the image was inverted before scoring",
    "orientation_suspected": "the film looks upside down; it was scored as stored and triage is 'refer'",
    "colour_image": "the image has colour content (a photo, not a radiograph); triage is 'refer'",
    "lungs_implausible": "the lung mask failed QA; a fallback crop was scored and triage is 'refer'",
    "low_bit_depth": "fewer than 8 significant bits of grey levels",
}


class TbedgeInputError(TbedgeError):
    """An input the pipeline rejects, with a reason code from REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail or REASONS[reason]}")


@dataclass
class ModelInfo:
    name: str
    version: str
    sha256: str
    precision: str  # the precision that scored this film
    backend: str
    fallback_from: str | None = None  # the bundle's own precision when its self-test failed here (fp32 scored)


@dataclass
class LungsInfo:
    bbox: list[int] | None  # [x0, y0, x1, y1] at the input's native resolution (x1, y1 exclusive)
    area_fraction: float | None
    qa: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    input: str
    sha256: str | None
    status: str
    reason: str | None = None
    detail: str | None = None
    sop_instance_uid: str | None = None
    qa_flags: list[str] = field(default_factory=list)
    tb_score: float | None = None  # 0-100 = round(100 * tb_probability, 1)
    tb_probability: float | None = None
    class_probabilities: dict[str, float] | None = None
    triage: str | None = None
    threshold: float | None = None  # on tb_probability
    models: dict[str, ModelInfo] | None = None
    lungs: LungsInfo | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    duplicate_of: str | None = None
    # Files written for this input: [{"kind": OUTPUT_KINDS, "path", "error": None | exception type}];
    # None when none were asked for. Optional (added in 1.0 without a version change: readers may ignore it).
    outputs: list[dict[str, Any]] | None = None
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.reason is not None and self.reason not in REASONS and self.reason not in ERROR_REASONS:
            raise ValueError(f"unknown reason code {self.reason!r}")
        for f in self.qa_flags:
            if f not in QA_FLAGS:
                raise ValueError(f"unknown QA flag {f!r}")
        for s in self.timing_ms:
            if s not in STAGES and s != "total":
                raise ValueError(f"unknown stage {s!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        if d.get("models"):
            d["models"] = {k: ModelInfo(**v) for k, v in d["models"].items()}
        if d.get("lungs"):
            d["lungs"] = LungsInfo(**d["lungs"])
        return cls(**d)


# TB-score histogram bins (0-100; narrow where thresholds live): the viewer's site panel and the validation
# histogram a build records in its gate (``build.gate``), so the two can be compared bin by bin.
TB_SCORE_EDGES = (0, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100.01)


def tb_score_edges() -> list[float]:
    """``TB_SCORE_EDGES`` as a histogram records them (the last one shown as 100)."""
    return [*TB_SCORE_EDGES[:-1], 100]


def tb_score_histogram(scores) -> list[int]:
    """Counts of TB scores (0-100) in the ``TB_SCORE_EDGES`` bins (each bin closed on the left)."""
    counts = [0] * (len(TB_SCORE_EDGES) - 1)
    for s in scores:
        i = bisect.bisect_right(TB_SCORE_EDGES, s) - 1
        if 0 <= i < len(counts):
            counts[i] += 1
    return counts


def tb_score(prob: float) -> float:
    return round(100.0 * float(prob), 1)


REFER_FLAGS = frozenset({"lungs_implausible", "orientation_suspected", "colour_image"})  # QA flags that force 'refer'


def triage_for(prob: float, threshold: float, qa_flags: list[str]) -> str:
    # An implausible lung mask means the crop is a guess, and the model never saw upside-down films or colour
    # photos: a human reads the film.
    if REFER_FLAGS.intersection(qa_flags):
        return TRIAGE_REFER
    return TRIAGE_REFER if prob >= threshold else TRIAGE_CLEAR


# JSON Schema of one results line (tests validate JSONL against it; docs render it).
_NUM = {"type": ["number", "null"]}
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tbedge result",
    "type": "object",
    "required": ["schema_version", "input", "sha256", "status", "reason", "qa_flags", "tb_score",
                 "tb_probability", "class_probabilities", "triage", "threshold", "models", "lungs",
                 "timing_ms", "duplicate_of", "sop_instance_uid"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "input": {"type": "string"},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "sop_instance_uid": {"type": ["string", "null"]},
        "status": {"enum": list(STATUSES)},
        "reason": {"enum": [None, *REASONS, *ERROR_REASONS]},
        "detail": {"type": ["string", "null"]},
        "qa_flags": {"type": "array", "items": {"enum": list(QA_FLAGS)}},
        "tb_score": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "tb_probability": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "class_probabilities": {
            "type": ["object", "null"],
            "required": list(CLASS_NAMES),
            "properties": {c: {"type": "number", "minimum": 0, "maximum": 1} for c in CLASS_NAMES},
        },
        "triage": {"enum": [None, TRIAGE_REFER, TRIAGE_CLEAR]},
        "threshold": _NUM,
        "models": {"type": ["object", "null"]},
        "lungs": {"type": ["object", "null"]},
        "timing_ms": {"type": "object", "propertyNames": {"enum": [*STAGES, "total"]}},
        "duplicate_of": {"type": ["string", "null"]},
        "outputs": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["kind", "path", "error"],
                "properties": {"kind": {"enum": list(OUTPUT_KINDS)}, "path": {"type": "string"},
                               "error": {"type": ["string", "null"]}},
            },
        },
    },
}
