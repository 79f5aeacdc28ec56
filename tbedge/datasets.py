"""Dataset discovery and deterministic splits by site and patient.

Understands the layouts in ../shared/data (Shenzhen + Montgomery with masks, NIH ChestX-ray14
subset) and any folder-per-class layout a user brings (``normal/``, ``tb/``, ``other/``,
``unlabelled/``). Splits are by patient (every image of a patient lands in one part), stratified
by site and label, and never depend on file order or the machine.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}
LABELS = ("normal", "tb", "other")
SM_DIR = "shenzhen_montgomery_512"
NIH_DIR = "nih_cxr14_512"
FULLRES_DIR = "shenzhen_fullres"
# Their native-resolution masks are the native test of the lung model: never train on them.
NATIVE_TEST_STEMS = tuple(f"CHNCXR_{i:04d}_0" for i in range(1, 21))

PARTS = ("train", "val", "calib", "test")
DEFAULT_FRACTIONS = {"train": 0.65, "val": 0.15, "calib": 0.05, "test": 0.15}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str | None  # normal | tb | other | None (unlabelled)
    site: str  # shenzhen | montgomery | nih | a user folder name
    patient: str
    mask: Path | None = None
    source: str = ""  # finer than site, e.g. nih_no_finding / nih_pneumonia

    @property
    def stem(self) -> str:
        return self.path.stem


def _sm_samples(root: Path) -> list[Sample]:
    out = []
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["filename"]
            label = "tb" if row["label"] == "1" else "normal"
            img = root / "images" / label / name
            mask = root / "masks" / name
            site = row["source"]
            out.append(Sample(img, label, site, f"{site}:{Path(name).stem[:-2]}",
                              mask if row.get("has_mask") == "1" and mask.exists() else None,
                              f"{site}_{label}"))
    return out


def _nih_samples(root: Path) -> list[Sample]:
    out = []
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name, lab = row["filename"], row["label_name"]
            label = "other" if lab == "pneumonia" else "normal"
            out.append(Sample(root / "images" / lab / name, label, "nih",
                              f"nih:{row['nih_patient_id']}", None, f"nih_{lab}"))
    return out


def _folder_samples(root: Path) -> list[Sample]:
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = sub.name.lower() if sub.name.lower() in LABELS else None
        if label is None and sub.name.lower() != "unlabelled":
            continue
        for p in sorted(sub.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                out.append(Sample(p, label, root.name, f"{root.name}:{p.stem}", None, root.name))
    return out


def discover(root: str | Path) -> list[Sample]:
    """All samples under ``root``: the shared data folder, one of its sets, or a class-folder tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if (root / "labels.csv").exists() and (root / "masks").is_dir():
        return _sm_samples(root)
    if (root / "labels.csv").exists() and root.name.startswith("nih"):
        return _nih_samples(root)
    out: list[Sample] = []
    if (root / SM_DIR).is_dir():
        out += _sm_samples(root / SM_DIR)
    if (root / NIH_DIR).is_dir():
        out += _nih_samples(root / NIH_DIR)
    if out:
        return out
    out = _folder_samples(root)
    if not out:
        raise FileNotFoundError(f"no recognised dataset layout under {root}")
    return out


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth lung mask as a bool array at its own resolution (0/255 PNG with anti-aliased
    edges: threshold at 127). Masks are read raw, never through ``load_image``, whose polarity
    check is for radiographs and would invert them."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise FileNotFoundError(f"mask not readable: {path}")
    return m > 127


def unit_hash(key: str, seed: int = 0) -> float:
    """A stable number in [0, 1) for a key: splits never depend on order, Python or platform."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split(samples: list[Sample], fractions: dict[str, float] | None = None,
          seed: int = 0) -> dict[str, list[Sample]]:
    """Disjoint train/val/calib/test parts by patient, stratified by (site, label)."""
    fractions = fractions or DEFAULT_FRACTIONS
    strata: dict[tuple, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        strata[(s.site, s.label)][s.patient].append(s)
    parts: dict[str, list[Sample]] = {p: [] for p in fractions}
    names = list(fractions)
    for key in sorted(strata, key=str):
        patients = sorted(strata[key], key=lambda p: unit_hash(p, seed))
        n = len(patients)
        bounds, acc = [], 0.0
        for name in names:
            acc += fractions[name]
            bounds.append(round(acc * n))
        start = 0
        for name, end in zip(names, bounds, strict=True):
            for p in patients[start:end]:
                parts[name].extend(strata[key][p])
            start = end
    for name in parts:
        parts[name].sort(key=lambda s: str(s.path))
    return parts


@dataclass(frozen=True)
class Fold:
    held_site: str
    train: list[Sample]  # other sites' train part
    val: list[Sample]  # other sites' val part (early stopping inside the fold)
    site_val: list[Sample]  # held site, half of its non-test patients: selection + thresholds
    site_test: list[Sample]  # held site, the rest: reported only


def loso_folds(samples: list[Sample], sites: tuple[str, ...] = ("shenzhen", "montgomery"),
               seed: int = 0) -> list[Fold]:
    """Leave-one-site-out folds. Internal test patients never enter site_val (no choice uses them)."""
    parts = split(samples, seed=seed)
    test_patients = {s.patient for s in parts["test"]}
    folds = []
    for held in sites:
        train = [s for s in parts["train"] if s.site != held]
        val = [s for s in parts["val"] if s.site != held]
        held_samples = [s for s in samples if s.site == held]
        site_val, site_test = [], []
        for s in held_samples:
            if s.patient not in test_patients and unit_hash(s.patient, seed + 1) < 0.5:
                site_val.append(s)
            else:
                site_test.append(s)
        folds.append(Fold(held, train, val, site_val, site_test))
    return folds


def fullres_native(root: str | Path) -> dict[str, Path]:
    """Native-resolution masks of CHNCXR_0001..0020 (stem -> mask path)."""
    d = Path(root) / FULLRES_DIR / "masks"
    return {p.name.replace("_mask.png", ""): p for p in sorted(d.glob("*_mask.png"))}


def find_data_root(start: str | Path | None = None) -> Path | None:
    """../shared/data beside the repository, if present."""
    here = Path(start) if start else Path(__file__).resolve().parents[1]
    cand = here.parent / "shared" / "data"
    return cand if cand.is_dir() else None
