"""Bundle: one directory holding the lung model and the classifier, read and verified here.

``build/`` writes bundles through :func:`write_manifest`; the runtime only reads them. Loading
refuses a bundle whose files do not match their hashes, whose threshold belongs to another
classifier, or (for TensorRT plans) that was built for another GPU or TensorRT version.

manifest.json (format_version 1)::

  {"format_version": 1, "name", "version", "created", "class_names": [...],
   "models": {"lungs"|"classifier": {"file", "sha256", "name", "version", "precision",
              "backend", "derived_from" (fp32 sha256 or null), "gate" (dict or null),
              "input": {"name", "shape", "layout", "dtype"}, "outputs": [...],
              "preprocessing": {"size", "resize", "range", "crop" (classifier: lungs.CROP_PREPS;
              absent = "box")}, "tb_bias" (classifier)}},
   "plans": {"lungs"|"classifier": {"file", "sha256", "trt_version", "cuda_version",
             "gpu_name", "compute_capability", "onnx_sha256", "precision"}},
   "threshold": {"value", "on": "tb_probability", "classifier_sha256", "chosen_on"},
   "calibration": {"file", "sha256", "set_sha256"} | null,
   "self_test": {"file", "sha256", "atol": {"lungs", "classifier"},
                 "expected_atol" (reduced precision): {"lungs", "classifier"}} | null,
   "tools": {...}, "override": null | {"flag", "reason"}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TbedgeError
from ..fsio import atomic_write_text, sha256_file  # noqa: F401 (sha256_file is re-exported)
from . import lungs as L
from .plans import REBUILD_CMD, PlanCompatError, check_plan_compat

FORMAT_VERSION = 1
ROLES = ("lungs", "classifier")


class BundleError(TbedgeError):
    """A bundle that must not be used, with the reason in words a technician can act on."""


class SelfTestError(BundleError):
    """A bundle whose outputs on this host drift from a self-test reference beyond its tolerance."""

    def __init__(self, role: str, drift: float, atol: float, against: str):
        self.role, self.drift, self.atol = role, drift, atol
        self.detail = f"{role} outputs drift by {drift:.4g} from {against} (tolerance {atol:.3g})"
        super().__init__(f"self-test failed for {role}: {self.detail[len(role) + 1:]}; "
                         "this engine must not score patients")


def default_bundle_path() -> Path:
    return Path(__file__).resolve().parents[1] / "models" / "default"


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"]["value"])

    def entry(self, role: str) -> dict:
        return self.manifest["models"][role]

    def model_path(self, role: str) -> Path:
        return self.path / self.entry(role)["file"]

    def input_size(self, role: str) -> int:
        return int(self.entry(role)["preprocessing"]["size"])

    def input_channels(self, role: str) -> int:
        """1, or 2 for a classifier that also takes the lung weights (NHWC input)."""
        return int(self.entry(role)["input"]["shape"][-1])

    @property
    def crop_prep(self) -> str:
        """How the classifier's input is made from the lung crop (``lungs.CROP_PREPS``)."""
        return self.entry("classifier")["preprocessing"].get("crop", "box")

    def plan(self, role: str) -> dict | None:
        return (self.manifest.get("plans") or {}).get(role)

    def has_plans(self) -> bool:
        return all(self.plan(r) for r in ROLES)

    def model_info(self, role: str, backend: str) -> dict:
        e = self.entry(role)
        sha = e["sha256"]
        if backend == "tensorrt" and self.plan(role):
            sha = self.plan(role)["sha256"]
        return {"name": e["name"], "version": e["version"], "sha256": sha,
                "precision": e["precision"], "backend": backend}


def model_sidecar(path: Path) -> dict:
    """``<model>.json`` beside a .keras/.onnx classifier: facts the graph cannot carry, e.g.
    ``{"crop_prep": "masked_eq"}`` (how its training crops were prepared)."""
    side = Path(path).with_suffix(".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    prep = meta.get("crop_prep", "box")
    if prep not in L.CROP_PREPS:
        raise BundleError(f"{side}: crop_prep {prep!r} is not one of {L.CROP_PREPS}")
    return {**meta, "crop_prep": prep}


def load_bundle(path: str | Path | None = None, verify: bool = True) -> Bundle:
    """Read and verify a bundle directory (the shipped default when ``path`` is None)."""
    path = Path(path) if path else default_bundle_path()
    mf = path / "manifest.json"
    if not mf.is_file():
        raise BundleError(f"not a tbedge bundle (no manifest.json): {path}")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"bundle manifest is not valid JSON: {mf}: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format {manifest.get('format_version')} is not supported "
                          f"(this tbedge reads format {FORMAT_VERSION}): {path}")
    b = Bundle(path, manifest)
    if verify:
        verify_bundle(b)
    return b


def _check_file(b: Bundle, what: str, file: str, sha: str) -> None:
    p = b.path / file
    if not p.is_file():
        raise BundleError(f"bundle {b.path}: {what} file missing: {file}")
    got = sha256_file(p)
    if got != sha:
        raise BundleError(f"bundle {b.path}: {what} file {file} does not match its manifest hash "
                          f"(tampered or corrupted; expected {sha[:12]}…, got {got[:12]}…)")


def verify_bundle(b: Bundle) -> None:
    m = b.manifest
    for role in ROLES:
        if role not in m.get("models", {}):
            raise BundleError(f"bundle {b.path}: no {role} model")
        e = m["models"][role]
        _check_file(b, f"{role} model", e["file"], e["sha256"])
        if e["precision"] != "fp32" and not e.get("derived_from"):
            raise BundleError(f"bundle {b.path}: {e['precision']} {role} model does not record "
                              "the fp32 model it was derived from")
    for role, p in (m.get("plans") or {}).items():
        _check_file(b, f"{role} TensorRT plan", p["file"], p["sha256"])
    for key in ("calibration", "self_test"):
        if m.get(key):
            _check_file(b, key.replace("_", "-"), m[key]["file"], m[key]["sha256"])
    cls = m["models"]["classifier"]
    tied = m["threshold"]["classifier_sha256"]
    fp32_sha = cls["sha256"] if cls["precision"] == "fp32" else cls.get("derived_from")
    if tied != fp32_sha:
        raise BundleError(f"bundle {b.path}: the threshold belongs to classifier {tied[:12]}…, "
                          f"not to this bundle's classifier {str(fp32_sha)[:12]}…: recalibrate the threshold")


def check_plan_device(b: Bundle, trt_version: str, compute_capability: str, gpu_name: str = "") -> None:
    """Refuse plans built for another TensorRT version or GPU (the rule lives in ``plans``)."""
    for role in ROLES:
        p = b.plan(role)
        if not p:
            raise BundleError(f"bundle {b.path} has no TensorRT plan for {role}; rebuild with: "
                              + REBUILD_CMD.format(out=b.path))
        try:
            check_plan_compat(p, trt_version, compute_capability, out=str(b.path))
        except PlanCompatError as e:
            raise BundleError(f"{role} {e}" + (f" [{gpu_name}]" if gpu_name else "")) from e


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Atomically write manifest.json (temp, fsync, rename)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


# -- self-test -----------------------------------------------------------------------------
def phantom(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic chest-like image (two dark lung ellipses on a bright body).

    Self-test inputs are synthetic on purpose: nothing derived from patient images ships.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.75 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.55) ** 2)
    for cx in (0.32 + 0.02 * seed, 0.68 - 0.02 * seed):
        inside = ((xx - cx) / 0.14) ** 2 + ((yy - 0.48) / 0.27) ** 2 < 1
        img[inside] = 0.25 + 0.1 * yy[inside]
    img = img + 0.04 * np.sin(40 * yy + 7 * seed)  # ribs
    return np.clip(img, 0, 1).astype(np.float32)


def phantom_input(size: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """(size, size, channels) model input from :func:`phantom`; a second channel holds the phantom's
    lung weights (its two lung ellipses, slightly dilated) for classifiers that take them."""
    img = phantom(size, seed)
    if channels == 1:
        return img[..., None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    w = np.zeros_like(img)
    for cx in (0.32 + 0.02 * seed, 0.68 - 0.02 * seed):
        w[((xx - cx) / 0.16) ** 2 + ((yy - 0.48) / 0.29) ** 2 < 1] = 1
    return np.stack([img, w], axis=-1)


def self_test_batch(size: int, channels: int = 1) -> np.ndarray:
    """The two phantoms every bundle's self-test runs through a model."""
    return np.stack([phantom_input(size, s, channels) for s in (0, 1)])


def self_test_inputs(b: Bundle) -> dict[str, np.ndarray]:
    return {role: self_test_batch(b.input_size(role), b.input_channels(role)) for role in ROLES}


def _max_drift(b: Bundle, role: str, out: dict, ref, prefix: str) -> float | None:
    keys = [(name, f"{prefix}{role}/{name}") for name in b.entry(role)["outputs"]]
    drifts = [float(np.max(np.abs(out[n].astype(np.float32) - ref[k]))) for n, k in keys if k in ref.files]
    return max(drifts) if drifts else None


def run_self_test(b: Bundle, runners: dict, roles: tuple[str, ...] = ROLES) -> dict[str, float]:
    """Run the bundle's self-test vectors for ``roles`` through ``runners`` ({role: active Runner}).

    Two references: the fp32 outputs (tolerance ``atol``: what precision may cost), and for reduced
    precision on ONNX Runtime the engine's own outputs at build time (``expected_atol``, much tighter:
    the same integer model must compute the same numbers on any CPU; a saturating kernel does not).
    Returns max abs deviation from fp32 per role; raises SelfTestError beyond either tolerance.
    """
    st = b.manifest.get("self_test")
    if not st:
        return {}
    ref = np.load(b.path / st["file"])
    inputs = self_test_inputs(b)
    dev = {}
    for role in roles:
        out = runners[role].infer({b.entry(role)["input"]["name"]: inputs[role]})
        dev[role] = _max_drift(b, role, out, ref, "") or 0.0
        if dev[role] > float(st["atol"][role]):
            raise SelfTestError(role, dev[role], float(st["atol"][role]), "the fp32 reference")
        exp_atol = (st.get("expected_atol") or {}).get(role)
        own = _max_drift(b, role, out, ref, "expected/")
        if exp_atol is not None and own is not None and getattr(runners[role], "backend", "") == "onnxruntime" \
                and own > float(exp_atol):
            raise SelfTestError(role, own, float(exp_atol), "this engine's own outputs at build time")
    return dev


def fp32_fallback(b: Bundle) -> Bundle | None:
    """The fp32 bundle a reduced-precision bundle was derived from, when one is at hand: beside it
    (``fp32/`` inside or next to it) or the shipped one. Matched by the models' hashes, so a
    fallback always scores with exactly the models the reduced ones were gated against."""
    want = {r: b.entry(r).get("derived_from") for r in ROLES}
    if not all(want.values()):
        return None
    seen = set()
    for cand in (b.path / "fp32", b.path.parent / "fp32", default_bundle_path().parent / "fp32"):
        key = cand.resolve()
        if key in seen or key == b.path.resolve() or not (cand / "manifest.json").is_file():
            continue
        seen.add(key)
        try:
            fb = load_bundle(cand)
        except BundleError:
            continue
        if all(fb.entry(r)["precision"] == "fp32" and fb.entry(r)["sha256"] == want[r] for r in ROLES):
            return fb
    return None
