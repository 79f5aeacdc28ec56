"""Fuzzing (issue 21): coverage-guided atheris runs of the image/DICOM loader and the lung QA, each in a
child process for a bounded time, with its corpus seeded from inputs made here (real films, shrunk, in
every container the loader reads, and the hostile kinds' headers). A crash, a broken invariant or an
allocation over the RSS bound is a failure. Property tests (hypothesis) for crop geometry, the polarity
check and output naming are in tests/test_properties.py.

Time per fuzzer: TBEDGE_FUZZ_SECONDS, default 60 under CI=true and 5 otherwise. All are marked `fuzz`
(`pytest -m fuzz` runs them alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bombs import PNG_SIG, png_bomb, png_chunk, png_ihdr, zlib_of_zeros
from conftest import IN_CI, _missing, fresh_process
from dicom_factory import make_dicom, to_bits

REPO = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("TBEDGE_FUZZ_SECONDS") or (60 if IN_CI else 5))
# The loader's decode budget is 320 MiB; the interpreter, OpenCV, pydicom and libFuzzer take ~250 MB more.
RSS_LIMIT_MB = 768
# The lung target runs ~4,500 inputs a second and the fuzzing harness itself grows ~4 KB an input (770 MB after
# 150 k inputs); lungs.analyse alone stays flat (46 -> 48 MB over 60 k random calls). Its RSS bound is set for a
# 60 s run; a single allocation over RSS_LIMIT_MB still fails it (-malloc_limit_mb).
LUNGS_RSS_LIMIT_MB = 3072
pytestmark = pytest.mark.fuzz


def _atheris():
    try:
        import atheris  # noqa: F401
    except ImportError:
        _missing("atheris is not installed (pip install -e '.[dev]')")


def run_fuzzer(target: str, corpus: Path, tmp_path: Path, max_len: int, rss_limit_mb: int = RSS_LIMIT_MB) -> None:
    _atheris()
    art = tmp_path / "artifacts"
    art.mkdir()
    cmd = [sys.executable, str(REPO / "tests" / "fuzz_targets.py"), target, str(corpus),
           f"-max_total_time={SECONDS}", "-seed=1", f"-rss_limit_mb={rss_limit_mb}", f"-malloc_limit_mb={RSS_LIMIT_MB}",
           "-timeout=20", f"-max_len={max_len}", f"-artifact_prefix={art}/", "-print_final_stats=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(fresh_process(cmd), capture_output=True, text=True, timeout=SECONDS + 300, env=env,
                         cwd=tmp_path)
    found = sorted(p.name for p in art.iterdir())
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0 and not found, f"fuzzer finding {found} (inputs kept under {art}):\n{tail}"
    assert "Done " in tail, tail  # it ran to its time limit


def _seed_images(corpus: Path, data_root: Path) -> None:
    """Small, valid and broken inputs of every kind the loader reads (a 160x160 film keeps each run fast)."""
    film = cv2.imread(str(data_root / "shenzhen_montgomery_512" / "images" / "normal" / "CHNCXR_0001_0.png"),
                      cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(film, (160, 160), interpolation=cv2.INTER_AREA)
    seeds = {
        "grey.png": cv2.imencode(".png", small)[1].tobytes(),
        "grey16.png": cv2.imencode(".png", to_bits(small, 12))[1].tobytes(),
        "rgba.png": cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_GRAY2BGRA))[1].tobytes(),
        "grey.jpg": cv2.imencode(".jpg", small)[1].tobytes(),
        "rgb.jpg": cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))[1].tobytes(),
        "bomb.png": png_bomb(10000, 10000),
        "huge_header.png": PNG_SIG + png_ihdr(30000, 30000, 1) + png_chunk(b"IDAT", zlib_of_zeros(2, bytes(3751)))
        + png_chunk(b"IEND", b""),
        "text": b"not an image\n",
    }
    for enc in ("explicit", "implicit", "jpegls", "jpeg2000"):
        p = make_dicom(corpus / f"{enc}.dcm", to_bits(small, 12), bits_stored=12, encoding=enc,
                       extra={"PatientName": "DOE^JANE"})
        seeds[f"{enc}.dcm"] = p.read_bytes()
    make_dicom(corpus / "mono1.dcm", 4095 - to_bits(small, 12), bits_stored=12, photometric="MONOCHROME1",
               window=(2048, 4096))
    make_dicom(corpus / "rgb.dcm", np.dstack([small] * 3), bits_stored=8, photometric="RGB")
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)
        (corpus / f"half_{name}").write_bytes(data[:len(data) // 2])


def test_fuzz_load_image(data_root, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _seed_images(corpus, data_root)
    run_fuzzer("imaging", corpus, tmp_path, max_len=200_000)


def test_fuzz_lung_analysis(tmp_path):
    """Heat maps of any size and content: real-looking two-lung maps, empty, full and noise seeds."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    yy, xx = np.mgrid[:64, :64]
    lungs = sum((((xx - cx) / 10.0) ** 2 + ((yy - 32) / 22.0) ** 2 < 1) for cx in (20, 44)) > 0
    rng = np.random.default_rng(0)
    heats = {"lungs": lungs * 255, "empty": np.zeros((64, 64)), "full": np.full((64, 64), 255),
             "noise": rng.integers(0, 256, (64, 64))}
    for name, heat in heats.items():  # a few size bytes, then the map: the fuzzer mutates from there
        (corpus / name).write_bytes(bytes([63, 63, 255, 7, 255, 7]) + heat.astype(np.uint8).tobytes())
    run_fuzzer("lungs", corpus, tmp_path, max_len=10_000, rss_limit_mb=LUNGS_RSS_LIMIT_MB)


# -- findings, kept as regression tests (their inputs are made here, never committed) ----------------
def test_finding_malformed_transfer_syntax_uid(data_root, tmp_path):
    """Found by test_fuzz_load_image: a DICOM whose Transfer Syntax UID is not one ('1.,.840...') escaped
    load_image as a ValueError (a processing error, status error) instead of a rejection."""
    from tbedge.runtime.imaging import load_image
    from tbedge.schema import TbedgeInputError

    p = make_dicom(tmp_path / "ts.dcm", np.full((160, 160), 100, np.uint16), bits_stored=12)
    data = p.read_bytes()
    p.write_bytes(data.replace(b"1.2.840.10008.1.2.1\0", b"1.,.840.10008.1.2.1\0", 1))
    with pytest.raises(TbedgeInputError) as e:
        load_image(p)
    assert e.value.reason == "unsupported_format"
