"""Build test DICOM files from real chest X-rays (never committed: tests write them to tmp_path).

Encoders are deliberately independent of the loader's decoders: imagecodecs encodes (JPEG-LS,
JPEG 2000, lossless JPEG, baseline JPEG) and pydicom decodes through gdcm / pyjpegls / pillow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

SOP_CLASSES = {
    "DX": uid.DigitalXRayImageStorageForPresentation,
    "CR": uid.ComputedRadiographyImageStorage,
    "CT": uid.CTImageStorage,
}
# name -> (transfer syntax, encoder); encoders take (uint array, bits stored) -> codestream bytes
ENCODINGS = {
    "explicit": (uid.ExplicitVRLittleEndian, None),
    "implicit": (uid.ImplicitVRLittleEndian, None),
    "jpegls": (uid.JPEGLSLossless, lambda a, b: _ic().jpegls_encode(a)),
    "jpeg2000": (uid.JPEG2000Lossless, lambda a, b: _ic().jpeg2k_encode(
        a, codecformat=_ic().JPEG2K.CODEC.J2K, reversible=True, bitspersample=b)),
    # lossless JPEG, predictor 6 (liblj92): only the general Process 14 syntax allows it
    "jpeg_lossless": (uid.JPEGLossless, lambda a, b: _ic().ljpeg_encode(a, bitspersample=b)),
    # lossless JPEG, predictor 1 (libjpeg-turbo): the common "SV1" syntax
    "jpeg_lossless_sv1": (uid.JPEGLosslessSV1, lambda a, b: _ic().jpeg8_encode(
        a, lossless=True, predictor=1, bitspersample=b)),
    "jpeg_baseline": (uid.JPEGBaseline8Bit, lambda a, b: _ic().jpeg8_encode(a, level=95)),
}



def new_dataset(transfer_syntax: str, sop_class: str) -> Dataset:
    """File meta + SOP class/instance + fresh study and series UIDs: the header every object needs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    return ds

def _ic():
    import imagecodecs

    return imagecodecs


def real_image(data_root: Path, name: str = "CHNCXR_0001_0.png") -> np.ndarray:
    """A real 512x512 8-bit radiograph from shenzhen_montgomery_512."""
    sub = "tb" if name.endswith("_1.png") else "normal"
    img = cv2.imread(str(data_root / "shenzhen_montgomery_512" / "images" / sub / name), cv2.IMREAD_GRAYSCALE)
    assert img is not None, name
    return img


def to_bits(img8: np.ndarray, bits: int = 12) -> np.ndarray:
    """8-bit film -> `bits`-bit uint16 with real sub-8-bit detail (a slight blur fills the gaps)."""
    f = cv2.GaussianBlur(img8.astype(np.float32), (0, 0), 0.8)
    return np.rint(f * ((2 ** bits - 1) / 255.0)).astype(np.uint16)


def make_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    encoding: str = "explicit",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,  # (first mapped, bits per entry, table)
    view_position: str | None = "PA",
    patient_age: str | None = "045Y",
    body_part: str | None = "CHEST",
    frames: int = 1,
    with_pixel_data: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write a single- or multi-frame DICOM image around `pixels` ((H, W) or RGB (H, W, 3))."""
    ts, encoder = ENCODINGS[encoding]
    ds = new_dataset(ts, SOP_CLASSES.get(modality, uid.SecondaryCaptureImageStorage))
    ds.PatientName = "Testperson^Alice"
    ds.PatientID = "PID-TEST-0001"
    ds.Modality = modality
    if patient_age is not None:
        ds.PatientAge = patient_age
    if view_position is not None:
        ds.ViewPosition = view_position
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ImagerPixelSpacing = [0.143, 0.143]
    if pixels is not None:
        arr = np.asarray(pixels)
        bits_alloc = 8 if arr.dtype.itemsize == 1 else 16
        ds.Rows, ds.Columns = arr.shape[:2]
        ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
        if arr.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits_alloc
        ds.BitsStored = bits_stored or bits_alloc
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if with_pixel_data:
            if encoder is None:
                ds.PixelData = np.ascontiguousarray(np.stack([arr] * frames) if frames > 1 else arr).tobytes()
                ds["PixelData"].VR = "OB" if bits_alloc == 8 else "OW"
            else:
                ds.PixelData = encapsulate([encoder(arr, int(ds.BitsStored))] * frames)
                ds["PixelData"].VR = "OB"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first, lut_bits, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(table) % 65536, first, lut_bits]
        item.add_new(0x00283006, "OW", np.asarray(table, "<u2").tobytes())  # LUT Data as OW bytes
        item.LUTExplanation = "test gamma"
        ds.VOILUTSequence = Sequence([item])
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True, implicit_vr=(encoding == "implicit"), little_endian=True)
    return Path(path)


def make_sr(path: Path) -> Path:
    """A Basic Text SR: a real-world DICOM object that has no Pixel Data."""
    ds = new_dataset(uid.ExplicitVRLittleEndian, uid.BasicTextSRStorage)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
