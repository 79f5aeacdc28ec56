"""DICOM outputs for DICOM inputs: a Secondary Capture of the overlay and a Structured Report with the score.

Both objects join the source study (same Study Instance UID, patient and study modules copied from the
source) and reference the source image, so a PACS files them next to the film they describe. UIDs are
derived from the source SOP Instance UID and the content hash, so writing the same result twice (e.g.
after a crash and restart) yields the same objects, not new ones.
"""

from __future__ import annotations

import copy
import datetime
import io
import re
from pathlib import Path

import numpy as np

from .. import __version__ as TBEDGE_VERSION
from ..fsio import atomic_write_bytes
from ..runtime.pipeline import Scored
from .files import render_overlay

MANUFACTURER = "tbedge"
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
_SCHEME = "99TBEDGE"  # private coding scheme: no standard code exists for a CAD TB score


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["tbedge", *parts]))


def _orientation(ds) -> tuple[str, str]:
    po = getattr(ds, "PatientOrientation", None)
    if po is not None and len(po) == 2 and all(str(v) for v in po):
        return str(po[0]), str(po[1])
    # Radiographs are displayed with the patient's right on the image's left, head up.
    return "L", "F"


# Patient and study attributes the SC and SR copy from the source. All are Type 2 there (present, may be
# empty), and real films often lack them or carry malformed values, which highdicom refuses: a missing or
# malformed one is written empty rather than dropping the outputs (or inventing a value).
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_TYPE2_CHECKS = {
    "PatientName": None, "PatientID": None, "AccessionNumber": None, "StudyID": None,
    "ReferringPhysicianName": None,
    "PatientBirthDate": lambda v: bool(_DA.match(v)) and _valid_date(v),
    "StudyDate": lambda v: bool(_DA.match(v)) and _valid_date(v),
    "StudyTime": lambda v: bool(_TM.match(v)),
    "PatientSex": lambda v: v in ("M", "F", "O"),
}


def _valid_date(v: str) -> bool:
    try:
        datetime.date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return False
    return True


def reference_dataset(src):
    """A copy of the source headers with each copied Type 2 attribute present: kept when valid, else empty."""
    ref = copy.deepcopy(src)
    for name, valid in _TYPE2_CHECKS.items():
        raw = src.get(name)
        value = "" if raw is None else str(raw).strip()
        if value and valid is not None and not valid(value):
            value = ""
        setattr(ref, name, value)
    return ref


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=_SCHEME, meaning=meaning)


def build_secondary_capture(scored: Scored):
    """The overlay (heat map, lung contour, score) as an RGB Secondary Capture in the source study."""
    import highdicom as hd

    src = scored.image.dataset
    rgb = np.ascontiguousarray(render_overlay(scored)[..., ::-1])  # BGR -> RGB
    key = scored.result.sha256 or ""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference_dataset(src), pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=_uid(src.SOPInstanceUID, "sc-series"),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=_uid(src.SOPInstanceUID, key, "sc"),
        instance_number=1, manufacturer=MANUFACTURER, patient_orientation=_orientation(src),
    )
    sc.SeriesDescription = "tbedge TB heat map (not for diagnosis alone)"
    sc.DerivationDescription = "tbedge overlay: lung contour, crop box, TB class activation map"
    sc.ConversionType = "WSD"
    sc.SoftwareVersions = TBEDGE_VERSION
    return sc


def build_structured_report(scored: Scored, sc=None):
    """A Comprehensive SR: TB score (0-100), TB probability, threshold, triage, models; refs the source."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    src = scored.image.dataset
    r = scored.result
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [
        hd.sr.NumContentItem(_concept("TBSCORE", "TB score (0-100)"), float(r.tb_score), unit,
                             relationship_type=contains),
        hd.sr.NumContentItem(_concept("TBPROB", "TB probability"), float(r.tb_probability), unit,
                             relationship_type=contains),
        hd.sr.NumContentItem(_concept("TBTHR", "Triage threshold on TB probability"), float(r.threshold),
                             unit, relationship_type=contains),
        hd.sr.TextContentItem(_concept("TRIAGE", "Triage"), str(r.triage), relationship_type=contains),
    ]
    if r.qa_flags:
        items.append(hd.sr.TextContentItem(_concept("QAFLAGS", "Quality flags"), ",".join(r.qa_flags),
                                           relationship_type=contains))
    if r.models:
        desc = "; ".join(f"{k}: {m.name} {m.version} {m.precision} {m.backend} {m.sha256[:12]}"
                         for k, m in sorted(r.models.items()))
        items.append(hd.sr.TextContentItem(_concept("MODELS", "Models"), desc, relationship_type=contains))
    items.append(hd.sr.ImageContentItem(codes.DCM.SourceOfMeasurement, src.SOPClassUID, src.SOPInstanceUID,
                                        relationship_type=contains))
    evidence = [reference_dataset(src)]  # patient and study modules come from the first evidence object
    if sc is not None:
        items.append(hd.sr.ImageContentItem(_concept("HEATMAP", "TB heat map"), sc.SOPClassUID,
                                            sc.SOPInstanceUID, relationship_type=contains))
        evidence.append(sc)
    root = hd.sr.ContainerContentItem(_concept("TBCAD", "tbedge TB screening result"))
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=_uid(src.SOPInstanceUID, "sr-series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=_uid(src.SOPInstanceUID, r.sha256 or "", "sr"),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
    )
    sr.SeriesDescription = "tbedge TB screening result"
    sr.SoftwareVersions = TBEDGE_VERSION
    return sr


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def dicom_output_paths(scored: Scored, out_dir: str | Path) -> list[Path]:
    """``<source SOP UID>_sc.dcm`` and ``_sr.dcm`` in ``out_dir``; the content hash names them when the
    UID is not a valid UID (a hostile header must not choose a path, e.g. ``../x``)."""
    uid = str(getattr(scored.image.dataset, "SOPInstanceUID", "") or "")
    key = uid if _UID_RE.match(uid) and len(uid) <= 64 else (scored.result.sha256 or "nohash")
    return [Path(out_dir) / f"{key}_sc.dcm", Path(out_dir) / f"{key}_sr.dcm"]


def write_dicom_outputs(scored: Scored, out_dir: str | Path) -> list[Path]:
    """Write the SC and SR to :func:`dicom_output_paths` (atomically).

    Only for scored DICOM inputs (status ok, a source dataset); returns [] for anything else.
    """
    r = scored.result
    img = scored.image
    if r.status != "ok" or img is None or getattr(img, "dataset", None) is None:
        return []
    src = img.dataset
    for attr in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not getattr(src, attr, None):
            raise ValueError(f"source DICOM lacks {attr}; cannot reference it")
    sc = build_secondary_capture(scored)
    sr = build_structured_report(scored, sc)
    paths = dicom_output_paths(scored, out_dir)
    for ds, p in zip((sc, sr), paths, strict=True):
        atomic_write_bytes(p, _encode(ds))
    return paths
