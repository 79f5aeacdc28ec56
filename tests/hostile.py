"""The hostile-input folder of issue 21 (../shared/docs/hostile-inputs.md), generated from real films and
synthetic bytes into a temporary folder: never committed as images.

``build(root, data_root)`` writes every kind and returns {kind: Kind}. A kind has the paths it made
(each gets exactly one result line) and what the product must do with it (:class:`Expect`). Every name
carries the fake patient name ``PATIENT`` so a test can prove that no log line names a file; DICOM
files carry it in PatientName and ``PATIENT_ID`` in PatientID."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from bombs import PNG_SIG, png_bomb, png_chunk, png_ihdr, sparse_file, zlib_of_zeros
from dicom_factory import make_dicom, to_bits

PATIENT = "DOE^JANE"
PATIENT_ID = "PID-HOSTILE-7731"
PHI = {"PatientName": PATIENT, "PatientID": PATIENT_ID, "PatientBirthDate": "19800101",
       "StudyDate": "20240102"}


@dataclass
class Expect:
    """What a kind's result lines must show. ``status`` ok|rejected; ``reason`` for rejected ones;
    ``flags``: each must be set; ``no_flags``: none may be; ``triage``; ``like``: a kind whose score and
    triage it must match (the same film stored another way); ``outputs``: every output written."""

    status: str = "ok"
    reason: str | None = None
    flags: tuple[str, ...] = ()
    no_flags: tuple[str, ...] = ()
    triage: str | None = None
    like: str | None = None
    outputs: bool = False
    any_status: bool = False  # a line is all that is promised (e.g. chmod 000 read as root)


@dataclass
class Kind:
    name: str
    section: str  # files | dicom | names (the checklist's tables)
    expect: Expect
    paths: list[Path] = field(default_factory=list)


def rejected(reason: str) -> Expect:
    return Expect(status="rejected", reason=reason)


REFER_FLAGGED = Expect(triage="refer", flags=("lungs_implausible",))


class Folder:
    """Collects kinds while writing them under ``root`` (inputs in ``root/in``; named-only paths beside)."""

    def __init__(self, root: Path, film: np.ndarray, film_tb: np.ndarray, fullres: Path):
        self.root, self.inp = root, root / "in"
        self.inp.mkdir(parents=True)
        self.film, self.film_tb, self.fullres = film, film_tb, fullres
        self.kinds: dict[str, Kind] = {}
        self.named: list[Path] = []  # paths screen is given by name (not found by walking the folder)

    def path(self, kind: str, ext: str, sub: str = "") -> Path:
        d = self.inp / sub if sub else self.inp
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{PATIENT}_{kind}{ext}"

    def add(self, name: str, section: str, expect: Expect, *paths: Path) -> None:
        assert name not in self.kinds, name
        self.kinds[name] = Kind(name, section, expect, list(paths))

    def raw(self, name: str, section: str, expect: Expect, ext: str, data: bytes) -> Path:
        p = self.path(name, ext)
        p.write_bytes(data)
        self.add(name, section, expect, p)
        return p

    def image(self, name: str, section: str, expect: Expect, ext: str, img: np.ndarray, params=()) -> Path:
        p = self.path(name, ext)
        ok, enc = cv2.imencode(ext, img, list(params))
        assert ok, name
        p.write_bytes(enc.tobytes())
        self.add(name, section, expect, p)
        return p

    def dicom(self, name: str, expect: Expect, pixels: np.ndarray | None = None, **kw) -> Path:
        kw["extra"] = {**PHI, **kw.get("extra", {})}
        p = make_dicom(self.path(name, ".dcm"), to_bits(self.film) if pixels is None else pixels,
                       **{"bits_stored": 12, **kw})
        self.add(name, "dicom", expect, p)
        return p


def png_bytes(img: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", img)
    assert ok
    return enc.tobytes()


# -- files ------------------------------------------------------------------------------------
def _files_rejected(f: Folder) -> None:
    film_png = png_bytes(f.film)
    f.raw("empty", "files", rejected("empty_file"), ".png", b"")
    f.raw("text_named_png", "files", rejected("not_an_image"), ".png", b"Patient DOE^JANE, chest PA\n" * 40)
    f.raw("gzip_named_png", "files", rejected("unsupported_format"), ".png", gzip.compress(film_png))
    tiff = cv2.imencode(".tiff", f.film)[1].tobytes()
    f.raw("tiff_named_png", "files", rejected("unsupported_format"), ".png", tiff)
    f.raw("png_width_0", "files", rejected("not_an_image"), ".png",
          PNG_SIG + png_ihdr(0, 512) + png_chunk(b"IDAT", zlib_of_zeros(1, b"\0")) + png_chunk(b"IEND", b""))
    f.raw("truncated_png", "files", rejected("truncated"), ".png", film_png[:len(film_png) // 2])
    jpg = cv2.imencode(".jpg", f.film)[1].tobytes()
    f.raw("truncated_jpeg", "files", rejected("truncated"), ".jpg", jpg[:len(jpg) // 2])
    f.raw("png_30000_tiny_idat", "files", rejected("too_large"), ".png",
          PNG_SIG + png_ihdr(30000, 30000, 1) + png_chunk(b"IDAT", zlib_of_zeros(30000, bytes(3751), 1000))
          + png_chunk(b"IEND", b""))
    f.raw("zlib_bomb_8bit", "files", rejected("too_large"), ".png", png_bomb(10000, 10000, 8, 0))
    f.raw("zlib_bomb_16bit_rgba", "files", rejected("too_large"), ".png", png_bomb(10000, 10000, 16, 6))
    f.add("huge_non_image_2gb", "files", rejected("not_an_image"),
          sparse_file(f.path("huge_non_image", ".png"), 2 << 30))
    f.add("huge_png_magic_2gb", "files", rejected("too_large"),
          sparse_file(f.path("huge_png_magic", ".png"), 2 << 30, PNG_SIG))
    # 4000x4000 (within the decode budget) whose IDAT holds one row: the decoder refuses it
    one_row = zlib_of_zeros(1, bytes(4001))
    f.raw("png_one_idat_row", "files", rejected("unsupported_format"), ".png",
          PNG_SIG + png_ihdr(4000, 4000) + png_chunk(b"IDAT", one_row) + png_chunk(b"IEND", b""))
    bad = bytearray(film_png)
    i = bad.find(b"IDAT")
    bad[i + 4 + struct.unpack(">I", bad[i - 4:i])[0]] ^= 0xFF  # first CRC byte of the first IDAT
    f.raw("png_bad_idat_crc", "files", rejected("unsupported_format"), ".png", bytes(bad))
    f.raw("png_no_iend", "files", rejected("truncated"), ".png", film_png[:-12])
    sof = bytearray(jpg)
    j = sof.find(b"\xff\xc0")
    sof[j + 5:j + 7] = b"\0\0"  # height 0: "defined by a DNL segment"
    f.raw("jpeg_height_in_dnl", "files", rejected("unsupported_format"), ".jpg", bytes(sof))
    for name, data in (("gif", b"GIF89a" + bytes(64)), ("pdf", b"%PDF-1.7\n" + bytes(64)),
                       ("zip", b"PK\x03\x04" + bytes(64)), ("jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64)),
                       ("webp", cv2.imencode(".webp", f.film)[1].tobytes()),
                       ("bmp", cv2.imencode(".bmp", f.film)[1].tobytes())):
        f.raw(f"{name}_named_png", "files", rejected("unsupported_format"), ".png", data)
    for side in (10, 16, 24, 32):
        f.image(f"thumbnail_{side}", "files", rejected("too_small"), ".png",
                cv2.resize(f.film, (side, side), interpolation=cv2.INTER_AREA))
    f.image("strip_1x5000", "files", rejected("too_small"), ".png", np.full((1, 5000), 128, np.uint8))
    f.image("strip_5000x1", "files", rejected("too_small"), ".png", np.full((5000, 1), 128, np.uint8))


def _files_scored(f: Folder) -> None:
    film = f.film
    f.image("film_8bit", "files", Expect(), ".png", film)
    f.image("film_16bit", "files", Expect(like="film_8bit"), ".png", film.astype(np.uint16) * 257)
    f.image("film_16bit_12bit_values", "files", Expect(like="film_8bit"), ".png", to_bits(film, 12))
    f.image("film_jpeg", "files", Expect(like="film_8bit"), ".jpg", film, (cv2.IMWRITE_JPEG_QUALITY, 95))
    f.image("film_rgba", "files", Expect(like="film_8bit"), ".png",
            cv2.cvtColor(film, cv2.COLOR_GRAY2BGRA))
    f.image("film_rgb_jpeg", "files", Expect(like="film_8bit"), ".jpg", cv2.cvtColor(film, cv2.COLOR_GRAY2BGR),
            (cv2.IMWRITE_JPEG_QUALITY, 95))
    f.raw("film_palette_fullres", "files", Expect(), ".png", f.fullres.read_bytes())
    f.image("negative_film", "files", Expect(flags=("inverted_suspected",), like="film_8bit"), ".png", 255 - film)
    # Defect 6: neither may be taken for a negative; each must be flagged and referred.
    upright_gap = Expect(triage="refer", flags=("orientation_suspected",), no_flags=("inverted_suspected",))
    f.image("flipped_vertically", "files", upright_gap, ".png", f.film_tb[::-1].copy())
    f.image("rotated_180", "files", upright_gap, ".png", np.rot90(f.film_tb, 2).copy())
    f.image("rotated_90", "files", REFER_FLAGGED, ".png", np.rot90(film).copy())
    f.raw("exif_orientation_6", "files", REFER_FLAGGED, ".jpg", _exif_rotated_jpeg(film))
    f.image("lateral_looking_crop", "files", REFER_FLAGGED, ".png",
            cv2.resize(film[:, 180:400], (300, 512), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(21)
    photo = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    f.image("colour_photo", "files", Expect(triage="refer", flags=("colour_image",)), ".jpg", photo)
    f.image("rgb_noise", "files", REFER_FLAGGED, ".png", rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    f.image("fully_black", "files", REFER_FLAGGED, ".png", np.zeros((512, 512), np.uint8))
    f.image("fully_white", "files", REFER_FLAGGED, ".png", np.full((512, 512), 255, np.uint8))
    dup = [f.path(f"duplicate_{c}", ".png") for c in "ab"]
    for p in dup:
        p.write_bytes(png_bytes(film))
    f.add("duplicate_bytes_two_names", "files", Expect(like="film_8bit"), *dup)
    p1, p2 = f.path("same", ".png", "site1"), f.path("same", ".png", "site2")
    p1.write_bytes(png_bytes(film))
    p2.write_bytes(png_bytes(f.film_tb))
    f.add("same_name_two_folders", "files", Expect(outputs=True), p1, p2)


def _exif_rotated_jpeg(film: np.ndarray) -> bytes:
    """A camera-style JPEG: pixels stored 90 degrees off, with EXIF Orientation 6 saying so."""
    jpg = cv2.imencode(".jpg", np.rot90(film).copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    ifd = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + ifd
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def _names_and_links(f: Folder) -> None:
    data = png_bytes(f.film)
    for kind, name in (("name_newline", f"{PATIENT}\nname.png"), ("name_unicode", f"{PATIENT}_Ünïcødé_胸部.png"),
                       ("name_leading_dash", f"-{PATIENT}_dash.png"),
                       ("name_250_chars", (f"{PATIENT}_" + "x" * 250)[:246] + ".png")):
        p = f.inp / name
        p.write_bytes(data)
        f.add(kind, "names", Expect(like="film_8bit", outputs=True), p)
    p = f.path("chmod_000", ".png")
    p.write_bytes(data)
    p.chmod(0)
    f.add("chmod_000", "names", Expect(any_status=True), p)  # root reads it anyway; others get unreadable
    fifo = f.root / f"{PATIENT}_fifo.png"
    os.mkfifo(fifo)
    f.named.append(fifo)
    f.add("fifo_named_png", "names", rejected("unreadable"), fifo)
    d = f.inp / f"{PATIENT}_folder.png"  # a folder named .png is a folder: its films are scored
    d.mkdir()
    (d / "inside.png").write_bytes(data)
    f.add("directory_named_png", "names", Expect(like="film_8bit"), d / "inside.png")
    links = {"symlink_etc_passwd": ("/etc/passwd", rejected("not_an_image")),
             "dangling_symlink": (str(f.root / "gone.png"), rejected("unreadable")),
             "symlink_loop": (None, rejected("unreadable"))}
    for kind, (target, exp) in links.items():
        p = f.path(kind, ".png")
        os.symlink(target or p.name, p)  # a link to itself is a loop
        f.add(kind, "names", exp, p)


# -- DICOM ------------------------------------------------------------------------------------
def _dicom(f: Folder) -> None:
    ok = Expect(outputs=True)
    f.dicom("dicom_mono2_12bit", ok)
    f.dicom("dicom_mono1", Expect(outputs=True, like="dicom_mono2_12bit"), 4095 - to_bits(f.film),
            photometric="MONOCHROME1")
    f.dicom("dicom_voi_window", ok, window=(2048, 4096))
    lut = np.rint(4095 * (np.arange(4096) / 4095) ** 0.8).astype(np.uint16)
    f.dicom("dicom_voi_lut_sequence", ok, voi_lut=(0, 12, lut))
    for enc in ("jpegls", "jpeg2000", "jpeg_lossless_sv1"):
        f.dicom(f"dicom_{enc}", Expect(outputs=True, like="dicom_mono2_12bit"), encoding=enc)
    _dicom_rle(f.dicom("dicom_rle", Expect(outputs=True, like="dicom_mono2_12bit")))
    p = f.dicom("dicom_implicit_no_preamble", Expect(like="dicom_mono2_12bit"), encoding="implicit")
    _strip_preamble_and_meta(p)
    _dicom_big_endian(f.dicom("dicom_explicit_big_endian", Expect(), f.film, bits_stored=8))
    f.dicom("dicom_no_pixel_data", rejected("dicom_no_pixels"), with_pixel_data=False)
    f.dicom("dicom_multiframe", rejected("dicom_multiframe"), frames=2)
    f.dicom("dicom_modality_ct", rejected("dicom_not_cxr"), modality="CT")
    f.dicom("dicom_view_ll", rejected("dicom_lateral"), view_position="LL")
    f.dicom("dicom_body_part_knee", rejected("dicom_not_cxr"), body_part="KNEE")
    f.dicom("dicom_age_008y", Expect(flags=("under_15",)), patient_age="008Y")
    f.dicom("dicom_ap_view", Expect(flags=("ap_view",)), view_position="AP")
    f.dicom("dicom_rescale_slope_0", REFER_FLAGGED, rescale=(0.0, 0.0))
    f.dicom("dicom_bits_stored_3", Expect(flags=("low_bit_depth",)), (f.film >> 5).astype(np.uint8), bits_stored=3)
    f.dicom("dicom_malformed_dates_ages", ok, patient_age="12X", extra={"StudyDate": "2024-13-45",
                                                                        "PatientBirthDate": "notadate"})
    f.dicom("dicom_missing_type2_tags", ok, extra={"PatientSex": None, "StudyID": None, "AccessionNumber": None})
    f.dicom("dicom_rgb_secondary_capture", Expect(like="film_8bit"), np.dstack([f.film] * 3),
            photometric="RGB", bits_stored=8)
    cut = f.dicom("truncated_dicom", rejected("truncated"))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cut = f.dicom("truncated_dicom_jpegls", rejected("truncated"), encoding="jpegls")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    f.dicom("dicom_rows_cols_30000", rejected("too_large"), extra={"Rows": 30000, "Columns": 30000})
    f.add("dicom_magic_2gb", "dicom", rejected("too_large"),
          sparse_file(f.path("dicom_magic", ".dcm"), 2 << 30, bytes(128) + b"DICM"))
    f.raw("dicom_garbage_after_magic", "dicom", rejected("truncated"), ".dcm",
          bytes(128) + b"DICM" + np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def _dicom_rle(p: Path) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(p)
    ds.compress(RLELossless)
    ds.save_as(p, enforce_file_format=True)


def _strip_preamble_and_meta(p: Path) -> None:
    """Implicit VR dataset with no preamble, no DICM and no file meta (old archives write these)."""
    data = p.read_bytes()
    meta_len = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL value after tag, VR and length
    p.write_bytes(data[144 + meta_len:])


def _dicom_big_endian(p: Path) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian

    ds = pydicom.dcmread(p)
    from pydicom.filewriter import dcmwrite

    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(p, ds, implicit_vr=False, little_endian=False, force_encoding=True)  # keeps preamble and meta


BUILDERS: tuple[Callable[[Folder], None], ...] = (_files_rejected, _files_scored, _names_and_links, _dicom)


def build(root: Path, data_root: Path) -> Folder:
    sm = data_root / "shenzhen_montgomery_512" / "images"
    film = cv2.imread(str(sm / "normal" / "CHNCXR_0001_0.png"), cv2.IMREAD_GRAYSCALE)
    film_tb = cv2.imread(str(sm / "tb" / "CHNCXR_0327_1.png"), cv2.IMREAD_GRAYSCALE)
    fullres = next(iter(sorted((data_root / "shenzhen_fullres" / "images").rglob("*.png"))))
    folder = Folder(root, film, film_tb, fullres)
    for b in BUILDERS:
        b(folder)
    return folder
