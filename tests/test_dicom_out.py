"""DICOM outputs: a Secondary Capture of the overlay and a Comprehensive SR with the TB score, both in
the source study, from a 16-bit MONOCHROME2 DICOM built from a real radiograph and scored end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_factory import new_dataset
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from watch_support import real_images

from tbedge.outputs.dicom import write_dicom_outputs
from tbedge.runtime.pipeline import Pipeline


def make_cxr_dicom(png: Path, out: Path) -> Dataset:
    """A DX 'for presentation' object: 16-bit MONOCHROME2, patient and study modules filled in."""
    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
    ds = new_dataset(ExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PID-42", "19800101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC1", "7"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = 1, 1, ["L", "F"]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = img.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return ds


def _sr_values(ds) -> dict[str, object]:
    vals = {}
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            vals[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            vals[name] = item.TextValue
        elif item.ValueType == "IMAGE":
            vals[name] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return vals


def test_sc_and_sr_join_the_source_study(data_root, tiny_bundle, tmp_path):
    src = make_cxr_dicom(real_images(data_root, 1, seed=17)[0], tmp_path / "cxr.dcm")
    with Pipeline(tiny_bundle, backend="onnxruntime", batch=1, threads=1) as pipe:
        scored = pipe.score_one(tmp_path / "cxr.dcm")
    r = scored.result
    assert r.status == "ok", (r.reason, r.detail)
    assert r.sop_instance_uid == src.SOPInstanceUID
    paths = write_dicom_outputs(scored, tmp_path / "dicom")
    assert [p.name for p in paths] == [f"{src.SOPInstanceUID}_sc.dcm", f"{src.SOPInstanceUID}_sr.dcm"]
    assert not [p for p in (tmp_path / "dicom").iterdir() if p.name.startswith(".")]  # no temp leftovers
    sc, sr = (pydicom.dcmread(p) for p in paths)
    for ds in (sc, sr):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
        assert ds.AccessionNumber == src.AccessionNumber
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.pixel_array.shape == (src.Rows, src.Columns, 3)
    assert sr.SOPClassUID == ComprehensiveSRStorage
    vals = _sr_values(sr)
    assert vals["TB score (0-100)"] == pytest.approx(r.tb_score)
    assert vals["TB probability"] == pytest.approx(r.tb_probability, abs=1e-6)
    assert vals["Triage"] == r.triage
    assert vals["Source of Measurement"] == src.SOPInstanceUID
    assert vals["TB heat map"] == sc.SOPInstanceUID
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
    refs = {s.ReferencedSOPInstanceUID for series in ev.ReferencedSeriesSequence
            for s in series.ReferencedSOPSequence}
    assert ev.StudyInstanceUID == src.StudyInstanceUID and src.SOPInstanceUID in refs
    # Writing again (a restart after a crash) gives the same objects, not new ones.
    again = write_dicom_outputs(scored, tmp_path / "dicom2")
    assert pydicom.dcmread(again[0]).SOPInstanceUID == sc.SOPInstanceUID
    assert pydicom.dcmread(again[1]).SOPInstanceUID == sr.SOPInstanceUID


def test_no_dicom_outputs_for_png_or_rejected(data_root, tiny_bundle, tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with Pipeline(tiny_bundle, backend="onnxruntime", batch=2, threads=1) as pipe:
        png, empty = pipe.run([real_images(data_root, 1, seed=2)[0], tmp_path / "empty.dcm"])
    assert write_dicom_outputs(png, tmp_path / "d") == []
    assert write_dicom_outputs(empty, tmp_path / "d") == []
    assert not (tmp_path / "d").exists()


# Real films often lack these, or carry dates in another format (issue 21, defect 3): SC + SR are still
# written; what is missing or malformed is left empty, as the IODs allow for these Type 2 attributes.
@pytest.mark.parametrize("change", [
    {"PatientSex": None}, {"StudyID": None}, {"StudyTime": None}, {"AccessionNumber": None},
    {"PatientName": None, "PatientID": None, "PatientBirthDate": None, "StudyDate": None,
     "ReferringPhysicianName": None},
    {"StudyDate": "2024-01-02", "PatientBirthDate": "1980", "StudyTime": "10:15:00", "PatientSex": "X?"},
])
def test_sc_and_sr_are_written_when_tags_are_missing_or_malformed(data_root, tmp_path, change):
    make_cxr_dicom(real_images(data_root, 1, seed=17)[0], tmp_path / "full.dcm")
    ds = pydicom.dcmread(tmp_path / "full.dcm")
    for k, v in change.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    with Pipeline(None, batch=1, threads=1) as pipe:  # the shipped default bundle
        scored = pipe.score_one(tmp_path / "cxr.dcm")
    assert scored.result.status == "ok"
    sc, sr = (pydicom.dcmread(p) for p in write_dicom_outputs(scored, tmp_path / "dicom"))
    for out in (sc, sr):
        assert out.StudyInstanceUID == ds.StudyInstanceUID
        for k in change:
            assert str(out.get(k, "") or "") == "", k  # missing or malformed: empty, never invented
        kept = {"PatientID": "PID-42", "AccessionNumber": "ACC1", "StudyID": "7", "PatientSex": "F"}
        for k, v in kept.items():
            if k not in change:
                assert out.get(k) == v, k  # what exists is copied
    assert _sr_values(sr)["Source of Measurement"] == ds.SOPInstanceUID
