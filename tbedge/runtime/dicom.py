"""DICOM reading for ``imaging.load_image``: header checks (truncation, content rules: modality, body part,
view, frames), pixel decoding (pydicom's handlers, imagecodecs where they cannot; never GDCM) and the grey
pipeline (modality LUT / rescale -> VOI LUT or window -> MONOCHROME1 inversion)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from datetime import date
from typing import Any

import cv2
import numpy as np

from ..schema import TbedgeInputError
from .decode import (
    COLOUR_STD,
    DECODE_BUDGET,
    LOW_LEVELS,
    UNDER_AGE_YEARS,
    ImageMeta,
    LoadedImage,
    _check_layout,
    _check_limits,
    _grey_levels,
    _Limits,
    colour_std,
)

# -- DICOM content rules ---------------------------------------------------------------------
# Modalities that are clearly not a projection radiograph of the chest.
NOT_CXR_MODALITIES = frozenset({
    "CT", "MR", "US", "NM", "PT", "MG", "IO", "PX", "OP", "OPT", "OPM", "OCT", "ES", "SM", "XC",
    "GM", "XA", "RF", "RTIMAGE", "ECG", "IVUS", "BMD", "DOC", "SR", "KO", "PR", "SEG", "REG",
})
# BodyPartExamined: any chest word keeps the film (e.g. "CHEST ABDOMEN"); otherwise one of these
# words rejects it. Unknown or empty values are kept: the tag is often missing or free text.
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORSO", "WHOLEBODY", "THORAC", "TORAX", "BRUST")
_NOT_CHEST_WORDS = (
    "HEAD", "SKULL", "BRAIN", "FACE", "SINUS", "JAW", "TMJ", "NECK", "CSPINE", "LSPINE", "SSPINE",
    "COCCYX", "SACRUM", "PELVIS", "HIP", "ABDOMEN", "KNEE", "ANKLE", "FOOT", "TOE", "HEEL",
    "LEG", "FEMUR", "TIBIA", "FIBULA", "HAND", "FINGER", "THUMB", "WRIST", "FOREARM", "ELBOW",
    "HUMERUS", "ARM", "SHOULDER", "CLAVICLE", "EXTREMITY", "BREAST", "DENTAL", "TOOTH", "EYE",
)
_LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"})

_TS_NAMES_FALLBACK = {  # encapsulated syntaxes imagecodecs can decode when no pydicom plugin can
    "1.2.840.10008.1.2.4.50": "jpeg8",
    "1.2.840.10008.1.2.4.51": "jpeg8",
    "1.2.840.10008.1.2.4.57": "ljpeg",
    "1.2.840.10008.1.2.4.70": "ljpeg",
    "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.81": "jpegls",
    "1.2.840.10008.1.2.4.90": "jpeg2k",
    "1.2.840.10008.1.2.4.91": "jpeg2k",
}


# -- DICOM ----------------------------------------------------------------------------------
def _load_dicom_guarded(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    """pydicom converts elements lazily, so a malformed value can raise from any later access (the fuzzer found
    NotImplementedError, AttributeError, ValueError, struct.error): such a file is unreadable, not an error."""
    try:
        return _load_dicom(data, sha, limits)
    except (TbedgeInputError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        raise TbedgeInputError("unreadable", f"malformed DICOM: {type(e).__name__}") from None


def _load_dicom(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    import pydicom  # lazy: only DICOM inputs pay for the import
    import pydicom.config
    from pydicom.errors import InvalidDicomError

    # Reading-time value validation echoes header values (birth dates, names) into warnings and
    # the "pydicom" logger; tbedge never logs patient data, and validates what it uses itself.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except InvalidDicomError:
        raise TbedgeInputError("not_an_image", "not a DICOM file") from None
    except (EOFError, struct.error, zlib.error) as e:
        raise TbedgeInputError("truncated", f"DICOM header: {type(e).__name__}") from None
    except Exception as e:  # a parser crash on garbage is a rejected input, not an error
        raise TbedgeInputError("not_an_image", f"DICOM could not be parsed: {type(e).__name__}") from None
    if data[128:132] != b"DICM" and not any(k in ds for k in ("SOPClassUID", "Rows", "Modality")):
        raise TbedgeInputError("not_an_image", "no DICOM image elements")
    _check_dicom_truncation(ds, data)
    if not ds.file_meta.get("TransferSyntaxUID"):  # raw dataset without file meta
        from pydicom import uid
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                          uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)

    meta = _dicom_meta(ds, sha)  # a value its VR cannot hold: unreadable (_load_dicom_guarded)
    if "PixelData" not in ds:
        raise TbedgeInputError("dicom_no_pixels")
    _check_dicom_content(ds, meta)
    frames = int(_num(ds.get("NumberOfFrames"), 1) or 1)
    if frames > 1:
        raise TbedgeInputError("dicom_multiframe", f"{frames} frames")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise TbedgeInputError("not_an_image", "DICOM without Rows/Columns")
    cost = _check_limits(cols, rows, *_dicom_samples(ds, meta.photometric), limits)
    _check_native_length(ds, rows, cols)
    with DECODE_BUDGET.reserve(cost):
        return _decode_dicom(ds, meta, limits.check_polarity)


def _dicom_samples(ds: Any, photometric: str) -> tuple[int, int]:
    """(channels, bytes per sample) of the decoded array; a palette expands to RGB of up to 16 bits."""
    spp = max(1, int(_num(ds.get("SamplesPerPixel"), 1)))
    sample_bytes = max(1, (int(_num(ds.get("BitsAllocated"), 16)) + 7) // 8)
    if photometric == "PALETTE COLOR":
        return max(spp, 3), max(sample_bytes, 2)
    return spp, sample_bytes


def _decode_dicom(ds: Any, meta: ImageMeta, check_polarity: bool) -> LoadedImage:
    arr = _decode_dicom_pixels(ds)
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        raise TbedgeInputError("unsupported_format", f"pixel array of shape {arr.shape}")
    meta.grey_levels = _grey_levels(arr if arr.ndim == 2 else arr[..., 0])
    if meta.bit_depth < 8 or meta.grey_levels < LOW_LEVELS:
        meta.qa_flags.append("low_bit_depth")

    pi = meta.photometric
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        px, meta.windowing, meta.window = dicom_to_display(arr, ds)
        if pi == "MONOCHROME1":
            px = np.subtract(1.0, px, out=px)
        if check_polarity:  # the polarity is declared; the orientation is not
            _check_layout(px, 1.0, px, meta, polarity_declared=True)
    else:  # colour secondary capture: no declared polarity, treat like a PNG photo of a film
        if pi == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut
            arr = apply_color_lut(arr, ds)
        if colour_std(arr[..., :3]) > COLOUR_STD:
            meta.qa_flags.append("colour_image")
        arr = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY)
        top = 255 if arr.dtype == np.uint8 else 65535
        px = arr.astype(np.float32) / np.float32(top)
        if check_polarity:
            _check_layout(arr, 1.0 / top, px, meta)
    meta.shape = px.shape[:2]
    # Keep headers for SR/SC writers; drop the (large) pixel bytes.
    del ds.PixelData
    return LoadedImage(np.clip(px, 0.0, 1.0, out=px), meta, ds)


def _check_dicom_truncation(ds: Any, data: bytes) -> None:
    """pydicom reads a cut file without complaint; find the evidence it leaves instead.

    (No warnings capture: warnings.catch_warnings is process-global and the pipeline is threaded.)"""
    keys = list(ds.keys())
    if not keys:
        raise TbedgeInputError("truncated", "DICOM ends after its file meta information")
    # The element being read at EOF is kept with fewer bytes than its declared length.
    raw = ds.get_item(keys[-1])
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if (isinstance(value, bytes) and length is not None and length != _UNDEFINED
            and len(value) < length):
        raise TbedgeInputError("truncated", f"DICOM ends inside element {keys[-1]}")
    # A last element of undefined length (sequence, encapsulated Pixel Data) ends with a delimiter.
    if length == _UNDEFINED and not data.endswith(_SEQ_DELIMITERS):
        raise TbedgeInputError("truncated", f"DICOM ends inside element {keys[-1]} before its delimiter")
    # Encapsulated Pixel Data cut before its delimiter is dropped altogether: look for its tag.
    if "PixelData" not in ds and any(t in data for t in _PIXEL_DATA_TAGS):
        raise TbedgeInputError("truncated", "DICOM ends inside its Pixel Data")


_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")  # LE, BE
# (7FE0,0010) followed by VR OB/OW (explicit VR) or an undefined length (implicit VR), LE and BE
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00OB", b"\xe0\x7f\x10\x00OW", b"\xe0\x7f\x10\x00\xff\xff\xff\xff",
                    b"\x7f\xe0\x00\x10OB", b"\x7f\xe0\x00\x10OW")


def _check_native_length(ds: Any, rows: int, cols: int) -> None:
    if _is_compressed(ds.file_meta.get("TransferSyntaxUID")):
        return
    spp = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    need = (rows * cols * spp * bits + 7) // 8
    have = len(ds.PixelData)
    if have < need:
        raise TbedgeInputError("truncated", f"Pixel Data has {have} of {need} bytes")


def _is_compressed(ts: Any) -> bool:
    """Whether a transfer syntax is encapsulated; a malformed or unknown one is unsupported (pydicom raises
    ValueError, which the fuzzer found escaping load_image as a processing error)."""
    if not ts:
        return False
    try:
        return bool(ts.is_compressed)
    except ValueError:
        raise TbedgeInputError("unsupported_format", "unknown transfer syntax") from None


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    """Row and column spacing in mm, or None when absent or malformed (it is informative, never a reason to
    refuse a film; the fuzzer found '.' escaping as ValueError)."""
    try:
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) >= 2 else None
    except (ValueError, TypeError, IndexError):
        return None


def _dicom_meta(ds: Any, sha: str) -> ImageMeta:
    ts = ds.file_meta.get("TransferSyntaxUID")
    meta = ImageMeta(
        source_format="dicom",
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        sha256=sha,
        shape=(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
        windowing="full_range",
        pixel_spacing=_pixel_spacing(ds),
        sop_instance_uid=str(ds.SOPInstanceUID) if ds.get("SOPInstanceUID") else None,
        study_instance_uid=str(ds.StudyInstanceUID) if ds.get("StudyInstanceUID") else None,
        patient_age_years=patient_age_years(ds),
        view_position=(str(ds.get("ViewPosition", "")).strip().upper() or None),
        modality=(str(ds.get("Modality", "")).strip().upper() or None),
        transfer_syntax=str(ts) if ts else None,
        body_part=(str(ds.get("BodyPartExamined", "")).strip().upper() or None),
    )
    if meta.patient_age_years is not None and meta.patient_age_years < UNDER_AGE_YEARS:
        meta.qa_flags.append("under_15")
    if meta.view_position == "AP" or "antero-posterior" in _view_code_meaning(ds):
        meta.qa_flags.append("ap_view")
    return meta


def _check_dicom_content(ds: Any, meta: ImageMeta) -> None:
    if meta.modality in NOT_CXR_MODALITIES:
        raise TbedgeInputError("dicom_not_cxr", f"Modality {meta.modality}")
    part = re.sub(r"[^A-Z]", "", meta.body_part or "")
    if part and not any(w in part for w in _CHEST_WORDS) and any(w in part for w in _NOT_CHEST_WORDS):
        raise TbedgeInputError("dicom_not_cxr", f"BodyPartExamined {meta.body_part}")
    meaning = _view_code_meaning(ds)
    if meta.view_position in _LATERAL_VIEWS or ("lateral" in meaning and "decubitus" not in meaning):
        raise TbedgeInputError("dicom_lateral", f"ViewPosition {meta.view_position or meaning}")


def _view_code_meaning(ds: Any) -> str:
    seq = ds.get("ViewCodeSequence")
    try:
        return str(seq[0].get("CodeMeaning", "")).lower() if seq else ""
    except (IndexError, AttributeError):
        return ""


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_AGE_UNIT = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def patient_age_years(ds: Any) -> float | None:
    """PatientAge ('045Y', '006M', '003W', '010D'), else birth date vs study/acquisition date."""
    m = _AGE_RE.match(str(ds.get("PatientAge", "") or ""))
    if m:
        return round(int(m.group(1)) / _AGE_UNIT[m.group(2)], 3)
    born = _dicom_date(ds.get("PatientBirthDate"))
    seen = next((d for d in (_dicom_date(ds.get(k)) for k in
                             ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")) if d), None)
    if born and seen and seen >= born:
        return round((seen - born).days / 365.25, 3)
    return None


def _dicom_date(v: Any) -> date | None:
    s = str(v or "").strip()
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _num(v: Any, default: float) -> float:
    """First value of a DS/IS/US element (which may be multi-valued) as float."""
    if v is None or v == "":
        return default
    try:
        if not isinstance(v, (str, bytes)) and hasattr(v, "__getitem__"):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return default


def _decode_dicom_pixels(ds: Any) -> np.ndarray:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID")
    if not ts:
        raise TbedgeInputError("unsupported_format", "no Transfer Syntax UID")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise TbedgeInputError("unsupported_format", f"transfer syntax {ts}") from None
    # Never GDCM: on a malformed JPEG 2000 stream it throws a C++ exception that aborts the whole process
    # (found by the load_image fuzzer). Another plugin, or imagecodecs, decodes what GDCM would.
    plugins = [p for p in (decoder.available_plugins if decoder.is_available else ()) if p != "gdcm"]
    if _is_compressed(ts) and not plugins:
        return _decode_with_imagecodecs(ds, str(ts))
    try:
        if plugins:
            ds.pixel_array_options(decoding_plugin=plugins[0])
        return ds.pixel_array
    except (struct.error, EOFError) as e:  # encapsulated fragments that claim more bytes than the file has
        raise TbedgeInputError("truncated", f"Pixel Data fragments: {type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - pydicom's decoders raise many types on malformed pixel modules
        raise TbedgeInputError("unsupported_format", f"pixel data not decodable ({ts.name}): "
                               f"{type(e).__name__}") from None


def _decode_with_imagecodecs(ds: Any, ts: str) -> np.ndarray:
    """Single-frame unsigned monochrome fallback when no pydicom plugin handles `ts`."""
    codec = _TS_NAMES_FALLBACK.get(ts)
    if codec is None or int(ds.get("PixelRepresentation", 0)) != 0 \
            or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise TbedgeInputError("unsupported_format", f"no decoder installed for transfer syntax {ts}")
    import imagecodecs
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    try:
        arr = getattr(imagecodecs, f"{codec}_decode")(frame)
    except Exception as e:  # imagecodecs raises its own per-codec error classes
        raise TbedgeInputError("unsupported_format", f"{codec} decode failed: {type(e).__name__}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    bits = int(ds.get("BitsStored") or 16)
    if arr.dtype.kind == "u" and bits < arr.dtype.itemsize * 8:
        arr = arr & np.array((1 << bits) - 1, arr.dtype)  # pydicom masks unused high bits too
    return arr


# -- DICOM grey pipeline ---------------------------------------------------------------------
def dicom_to_display(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, str, tuple | None]:
    """Stored values -> modality LUT/rescale -> VOI -> float32 [0, 1] (MONOCHROME1 not yet inverted).

    Returns (pixels, windowing path, (center, width, function) or None)."""
    x = modality_lut(arr, ds)
    seq = ds.get("VOILUTSequence")
    if seq:
        return voi_lut(x, seq[0], ds), "voi_lut_sequence", None
    c, w = _num(ds.get("WindowCenter"), np.nan), _num(ds.get("WindowWidth"), np.nan)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if np.isfinite(c) and np.isfinite(w) and (w >= 1 if func == "LINEAR" else w > 0):
        return window(x, c, w, func), "window", (float(c), float(w), func)
    lo, hi = float(x.min()), float(x.max())
    px = (x - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(x)
    return px.astype(np.float32, copy=False), "full_range", None


def modality_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PS3.3 C.11.1: Modality LUT Sequence if present, else Rescale Slope/Intercept (float32)."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut
        return apply_modality_lut(arr, ds).astype(np.float32)
    slope = _num(ds.get("RescaleSlope"), 1.0)
    intercept = _num(ds.get("RescaleIntercept"), 0.0)
    x = arr.astype(np.float32)
    if slope != 1.0:
        x *= np.float32(slope)
    if intercept != 0.0:
        x += np.float32(intercept)
    return x


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 windowing to [0, 1]."""
    c, w = float(center), float(width)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(np.float32(-4.0 / w) * (x - np.float32(c))))
    elif function == "LINEAR_EXACT":
        y = (x - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
    elif w > 1:  # LINEAR, and any unknown function (the standard's default)
        y = (x - np.float32(c - 0.5)) * np.float32(1.0 / (w - 1.0)) + np.float32(0.5)
    else:  # LINEAR with width 1 is a threshold
        y = (x > c - 0.5).astype(np.float32)
    return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)


def voi_lut(x: np.ndarray, item: Any, ds: Any) -> np.ndarray:
    """Apply one VOI LUT Sequence item to modality values, normalised to [0, 1]."""
    desc = [int(v) for v in item.LUTDescriptor]
    n, first, bits = desc[0] or 65536, desc[1], desc[2]
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):  # OW: 16-bit words in the dataset's byte order
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        lut = np.frombuffer(elem.value, dtype="<u2" if little else ">u2", count=n)
    else:
        vals = elem.value
        lut = np.asarray([vals] if isinstance(vals, (int, float)) else list(vals), dtype=np.float64)
    lut = lut.astype(np.float32)
    top = float(2 ** bits - 1)
    vmax = float(lut.max()) if lut.size else 0.0
    # Some writers declare 16 bits for 12-bit LUT values (or the reverse); trust the data then.
    if vmax > top or (vmax > 0 and vmax <= top / 16):
        top = float(2 ** max(1, int(np.ceil(np.log2(vmax + 1)))) - 1)
    idx = np.clip(np.rint(x) - first, 0, len(lut) - 1).astype(np.intp)
    return np.clip(lut[idx] * np.float32(1.0 / top), 0.0, 1.0)
