"""Dataset discovery and deterministic splits by site and patient.

Understands the layouts in ../shared/data (Shenzhen + Montgomery with masks, NIH ChestX-ray14
subset, and the opt-in sets ``tb_more_256`` and ``covid_256``) and any folder-per-class layout a
user brings (``normal/``, ``tb/``, ``other/``, ``unlabelled/``). Splits are by patient (every image
of a patient lands in one part), stratified by site and label, and never depend on file order or
the machine.

``discover(root)`` reads the core sets only (Shenzhen, Montgomery, NIH): the shipped models,
calibration sets and split hashes were made on exactly those. ``sets="all"`` adds ``tb_more``
and ``covid``; each of their films is its own patient (no patient IDs are known).
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
TB_MORE_DIR = "tb_more_256"
COVID_DIR = "covid_256"
# Set name -> folder under the data root. Core sets are the ones every shipped artefact was made on.
SET_DIRS = {"shenzhen_montgomery": SM_DIR, "nih": NIH_DIR, "tb_more": TB_MORE_DIR, "covid": COVID_DIR}
CORE_SETS = ("shenzhen_montgomery", "nih")
ALL_SETS = (*CORE_SETS, "tb_more", "covid")
SET_CHOICES = {"core": CORE_SETS, "all": ALL_SETS}
# Sites each set brings; set selection drops the sites of the sets left out.
SET_SITES = {"shenzhen_montgomery": ("shenzhen", "montgomery"), "nih": ("nih",), "tb_more": ("tb_more",),
             "covid": ("covid",)}
TB_SITES = ("shenzhen", "montgomery", "tb_more")  # sites with TB films: the leave-one-site-out folds
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


def _flat_samples(root: Path, site: str) -> list[Sample]:
    """tb_more_256 / covid_256: class folders + labels.csv; each film is its own patient."""
    out = []
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["filename"]
            label = "tb" if row["is_tb"] == "1" else "normal" if row["label_name"] == "normal" else "other"
            out.append(Sample(root / label / name, label, site, f"{site}:{Path(name).stem}", None,
                              f"{site}_{label}"))
    return out


def resolve_sets(sets: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"core" | "all" | set names (``SET_DIRS``) -> a tuple of set names."""
    names = SET_CHOICES.get(sets) if isinstance(sets, str) else tuple(sets)
    if names is None:
        raise ValueError(f"unknown sets {sets!r}; choose one of {sorted(SET_CHOICES)} or names from {list(SET_DIRS)}")
    bad = [n for n in names if n not in SET_DIRS]
    if bad:
        raise ValueError(f"unknown set(s) {bad}; known: {list(SET_DIRS)}")
    return tuple(names)


def excluded_sites(sets: str | tuple[str, ...] | list[str]) -> set[str]:
    """The sites of the known sets that ``sets`` leaves out (a user's own sites are never excluded)."""
    keep = resolve_sets(sets)
    return {site for name, sites in SET_SITES.items() if name not in keep for site in sites}


def select_sets(samples: list[Sample], sets: str | tuple[str, ...] | list[str]) -> list[Sample]:
    """``samples`` without the sites of the known sets that ``sets`` leaves out."""
    drop = excluded_sites(sets)
    return [s for s in samples if s.site not in drop]


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


_READERS = {"shenzhen_montgomery": _sm_samples, "nih": _nih_samples,
            "tb_more": lambda r: _flat_samples(r, "tb_more"), "covid": lambda r: _flat_samples(r, "covid")}


def discover(root: str | Path, sets: str | tuple[str, ...] | list[str] = "core") -> list[Sample]:
    """All samples under ``root``: the shared data folder, one of its sets, or a class-folder tree.

    ``sets`` picks the shared folder's sets ("core", the default and what every shipped artefact
    was made on; "all"; or names from ``SET_DIRS``). A set's own folder is always read whole."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    names = resolve_sets(sets)
    if (root / "labels.csv").exists() and (root / "masks").is_dir():
        return _sm_samples(root)
    if (root / "labels.csv").exists() and root.name.startswith("nih"):
        return _nih_samples(root)
    if (root / "labels.csv").exists() and root.name in (TB_MORE_DIR, COVID_DIR):
        return _flat_samples(root, "tb_more" if root.name == TB_MORE_DIR else "covid")
    out: list[Sample] = []
    if any((root / d).is_dir() for d in SET_DIRS.values()):  # the shared layout
        for name in names:
            if (root / SET_DIRS[name]).is_dir():
                out += _READERS[name](root / SET_DIRS[name])
        if not out:
            raise FileNotFoundError(f"none of the sets {list(names)} under {root}")
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


def loso_folds(samples: list[Sample], sites: tuple[str, ...] | None = None, seed: int = 0) -> list[Fold]:
    """Leave-one-site-out folds. Internal test patients never enter site_val (no choice uses them).

    ``sites`` None: every TB site (``TB_SITES``) present in ``samples``, so the core sets give the
    Shenzhen and Montgomery folds as before and ``sets="all"`` adds the ``tb_more`` fold."""
    present = {s.site for s in samples}
    sites = tuple(t for t in TB_SITES if t in present) if sites is None else sites
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
