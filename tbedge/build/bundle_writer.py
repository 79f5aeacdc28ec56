"""Write a versioned bundle: fp32 sources -> chosen precision/target -> gate -> self-test -> manifest.

Sources are Keras models (exported here, parity-checked on real images) or an existing fp32
bundle's ONNX, so a host with only the runtime install (no TensorFlow) can still rebuild fp16/int8
forms. Everything is written into a temporary sibling directory and swapped in at the end: a
failed gate or a crash never leaves a half-written bundle at ``out``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import datasets
from ..runtime import lungs as L
from ..runtime.bundle import (
    ROLES,
    Bundle,
    BundleError,
    default_bundle_path,
    load_bundle,
    self_test_batch,
    sha256_file,
    write_manifest,
)
from . import gate as G
from . import precision as P
from .bundle_copy import BuildError, copy_bundle, swap_in  # noqa: F401 (BuildError is re-exported)
from .sources import ProgressFn, Source, _keras_default_dir, io_spec, read_tb_bias, resolve_source, tool_versions

DEFAULT_CLASS_NAMES = list(datasets.LABELS)  # normal, tb, other: the classifier's output order
PREPROCESSING_RESIZE = "area"
# Self-test tolerance = max(floor, headroom x deviation measured at build time on the phantoms).
# fp32 floor: float noise between CPU kernels (x86 vs ARM builds of ORT) is ~1e-3 on the real lung
# model (see export.PARITY_ATOL); TensorRT fp32 plans may use TF32 on Ampere and later, so 1e-2 there.
ATOL_FLOOR = {"fp32": 2e-3, "fp16": 1e-2, "int8": 5e-2}
ATOL_FLOOR_TRT_FP32 = 1e-2
ATOL_HEADROOM = 3.0
# Reduced precision is also checked against its OWN build-time outputs: the same int8/fp16 model should give
# nearly the same numbers on every CPU. Measured on the shipped int8 phantoms: identical on emulated AVX2,
# <= 0.012 on emulated SSE4.2, while the saturating full-range form moved them 0.44-0.98 (docs/cpu-classes.md).
EXPECTED_ATOL = {"fp16": 0.05, "int8": 0.05}


# -- self-test ----------------------------------------------------------------------------
def self_test_reference(fp32: dict[str, Path], sizes: dict[str, int], model: dict[str, Path],
                        threads: int = 0, channels: dict[str, int] | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """fp32 reference outputs on the bundle's phantoms (``role/output``), the chosen models' own outputs
    (``expected/role/output``) and the chosen models' deviation from fp32."""
    from ..runtime.runners.onnxruntime import OnnxRuntimeRunner

    keys = {"lungs": "mask", "classifier": "probabilities"}
    ref, dev = {}, {}
    for role in ROLES:
        x = self_test_batch(sizes[role], (channels or {}).get(role, 1))
        with OnnxRuntimeRunner(fp32[role], threads=threads) as r:
            ref[f"{role}/{keys[role]}"] = r.infer({"image": x})[keys[role]].astype(np.float32)
        with OnnxRuntimeRunner(model[role], threads=threads) as r:
            got = r.infer({"image": x})[keys[role]].astype(np.float32)
        dev[role] = float(np.max(np.abs(got - ref[f"{role}/{keys[role]}"])))
        ref[f"expected/{role}/{keys[role]}"] = got
    return ref, dev


def self_test_atol(precision: str, deviation: dict[str, float], target: str = "cpu") -> dict[str, float]:
    floor = ATOL_FLOOR_TRT_FP32 if (precision, target) == ("fp32", "tensorrt") else ATOL_FLOOR[precision]
    return {r: float(f"{max(floor, ATOL_HEADROOM * d):.3g}") for r, d in deviation.items()}


# -- the build ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildConfig:
    """How to build a bundle (``build_bundle``); the defaults are ``tbedge build-engine``'s.

    ``precision`` (``precision.PRECISIONS``) and ``target`` (``precision.TARGETS``): the models' form.
    ``calibration``: a calibration-set directory (make_calibration_set), required for int8 unless
    ``data_root`` is given (a set is then made from its ``calib`` part). ``threshold``: the locked
    TB threshold (float or {"value", "chosen_on"}); taken from the source bundle when omitted.
    ``data_root``: the data folder for parity on real images, the int8 calibration set and the accuracy
    gate. ``allow_gate_failure``: keep a reduced-precision build that fails the gate (or has no data to
    run it), recorded as the manifest's ``override``. ``name``, ``version`` (default: today),
    ``class_names`` (default: the source's, else ``DEFAULT_CLASS_NAMES``): the manifest's.
    ``build_plans``: TensorRT plans for target tensorrt (default: when TensorRT is importable), built
    for ``opt_batch``/``max_batch``. ``gate_max_images``: cap the gate's val images (tests).
    """

    precision: str = "fp32"
    target: str = "cpu"
    calibration: str | Path | None = None
    threshold: float | dict | None = None
    data_root: str | Path | None = None
    threads: int = 0
    allow_gate_failure: bool = False
    name: str = "tbedge"
    version: str | None = None
    class_names: list[str] | None = None
    build_plans: bool | None = None
    opt_batch: int = 8
    max_batch: int = 32
    gate_max_images: int | None = None

    def checked(self) -> BuildConfig:
        """This config with ``data_root`` as a Path (or None); BuildError on an unknown precision/target."""
        if self.precision not in P.PRECISIONS:
            raise BuildError(f"unknown precision {self.precision!r}; choose one of {', '.join(P.PRECISIONS)}")
        if self.target not in P.TARGETS:
            raise BuildError(f"unknown target {self.target!r}; choose one of {', '.join(P.TARGETS)}")
        return replace(self, data_root=Path(self.data_root) if self.data_root else None)


def build_bundle(lungs_src: str | Path, classifier_src: str | Path, out: str | Path, precision: str | None = None,
                 target: str | None = None, config: BuildConfig | None = None, *,
                 progress: ProgressFn | None = None, **options) -> dict:
    """Build a bundle at ``out`` and return a summary (sizes, parity, gate, self-test deviations).

    ``config``: how (``BuildConfig``); ``precision``, ``target`` and keyword ``options`` (its field
    names: ``calibration=``, ``threshold=``, ``data_root=``...) replace its fields, so
    ``build_bundle(lungs, cls, out, "int8", "cpu", data_root=d)`` still works. Built in a temporary
    sibling directory and swapped in at the end: a failure leaves nothing at ``out``.
    """
    if config is not None and not isinstance(config, BuildConfig):
        raise TypeError(f"config must be a BuildConfig, not {type(config).__name__}")
    given = {k: v for k, v in (("precision", precision), ("target", target)) if v is not None}
    cfg = replace(config or BuildConfig(), **given, **options).checked()
    out = Path(out)
    say = progress or (lambda _m: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    work = stage / "_work"
    work.mkdir()
    try:
        summary = _build_into(stage, work, lungs_src, classifier_src, cfg, say)
        shutil.rmtree(work)
        load_bundle(stage)  # the reader must accept what we wrote
        swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    summary["bundle"] = str(out)
    return summary


@dataclass
class _Sources:
    """The fp32 sources of both roles and what the build reads from them."""

    src: dict[str, Source]
    fp32: dict[str, Path]
    fp32_sha: dict[str, str]
    specs: dict[str, tuple[dict, list[str]]]  # role -> (input spec, output names)
    sizes: dict[str, int]
    names: list[str]  # class names
    tb_index: int
    prep: str  # the classifier's crop preparation
    thr: dict  # the locked threshold

    def channels(self) -> dict[str, int]:
        return {r: int(self.specs[r][0]["shape"][-1]) for r in ROLES}


def _read_sources(work: Path, lungs_src, classifier_src, cfg: BuildConfig, say: ProgressFn) -> _Sources:
    src = {"lungs": resolve_source(lungs_src, "lungs", work, cfg.data_root, say),
           "classifier": resolve_source(classifier_src, "classifier", work, cfg.data_root, say)}
    fp32 = {r: src[r].onnx for r in ROLES}
    fp32_sha = {r: sha256_file(fp32[r]) for r in ROLES}
    specs = {r: io_spec(fp32[r]) for r in ROLES}
    sizes = {r: int(specs[r][0]["shape"][1]) for r in ROLES}
    names = cfg.class_names or src["classifier"].class_names or DEFAULT_CLASS_NAMES
    if "tb" not in names:
        raise BuildError(f"class names {names} have no 'tb'")
    prep = src["classifier"].crop_prep
    if L.input_channels(prep) != int(specs["classifier"][0]["shape"][-1]):
        raise BuildError(f"classifier crop_prep {prep!r} needs a {L.input_channels(prep)}-channel input; "
                         f"the model takes {specs['classifier'][0]['shape']}")
    thr = _resolve_threshold(cfg.threshold, src["classifier"], fp32_sha["classifier"])
    return _Sources(src, fp32, fp32_sha, specs, sizes, names, names.index("tb"), prep, thr)


def _build_into(stage: Path, work: Path, lungs_src, classifier_src, cfg: BuildConfig, say: ProgressFn) -> dict:
    """The build, in ``stage`` (scratch files in ``work``): sources, precision, gate, files + self-test,
    plans, manifest. Returns the summary."""
    s = _read_sources(work, lungs_src, classifier_src, cfg, say)
    src = s.src
    manifest: dict = {"name": cfg.name, "version": cfg.version or _dt.date.today().strftime("%Y.%m.%d"),
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "class_names": s.names, "threshold": s.thr, "calibration": None, "plans": {},
                      "tools": {**tool_versions(), **src["lungs"].tools, **src["classifier"].tools},
                      "override": None, "target": cfg.target}
    summary: dict = {"precision": cfg.precision, "target": cfg.target, "parity": {}, "gate": None,
                     "sources": {r: f"{src[r].origin}:{src[r].name}" for r in ROLES}}
    model, quant = _chosen_precision(stage, work, s, cfg, manifest, summary, say)  # 1.
    gate = _accuracy_gate(s, model, cfg, manifest, summary, say)  # 2. (reduced precision only)
    models = _model_entries(stage, s, model, quant, gate, cfg.precision, cfg.target)  # 3. files, self-test
    summary["parity"] = {r: src[r].parity for r in ROLES}
    manifest["models"] = models
    manifest["self_test"] = summary["self_test"] = _self_test(stage, s, model, cfg)
    if cfg.target == "tensorrt":  # 4. TensorRT plans
        _tensorrt_plans(stage, models, cfg, manifest, summary, say)
    write_manifest(stage, manifest)
    summary["sizes"] = {p.name: p.stat().st_size for p in sorted(stage.iterdir()) if p.is_file()}
    summary["override"] = manifest["override"]
    return summary


def _chosen_precision(stage: Path, work: Path, s: _Sources, cfg: BuildConfig, manifest: dict, summary: dict,
                      say: ProgressFn) -> tuple[dict[str, Path], dict[str, dict | None]]:
    """(model, quant): each role's ONNX at the chosen precision and its quantization record (int8 only;
    the calibration table is written into ``stage`` and recorded in ``manifest``/``summary``)."""
    model: dict[str, Path] = {}
    quant: dict[str, dict | None] = {r: None for r in ROLES}
    if cfg.precision == "fp32":
        model = dict(s.fp32)
    elif cfg.precision == "fp16":
        for r in ROLES:
            say(f"fp16: {r}")
            model[r] = P.to_fp16(s.fp32[r], work / f"{r}.fp16.onnx")
    else:
        model, quant, cal_entry = _int8(work, stage, s.fp32, s.fp32_sha, s.sizes, cfg.target, cfg.calibration,
                                        cfg.data_root, cfg.threads, say, s.prep)
        manifest["calibration"] = cal_entry
        summary["calibration_set_sha256"] = cal_entry["set_sha256"]
    if cfg.precision != "fp32" and cfg.target == "tensorrt":  # Q/DQ rules for int8, one type per op for both
        from .trt_check import assert_trt_ready

        for r in ROLES:
            assert_trt_ready(model[r])
    return model, quant


def _accuracy_gate(s: _Sources, model: dict[str, Path], cfg: BuildConfig, manifest: dict, summary: dict,
                   say: ProgressFn) -> dict | None:
    """The gate's record for a reduced-precision build (None for fp32 or without data); a failure raises
    unless ``allow_gate_failure``, which records the manifest's ``override``."""
    if cfg.precision == "fp32":
        return None
    if cfg.data_root is None:
        gate_err = "accuracy gate not run: no data folder with val images"
        if not cfg.allow_gate_failure:
            raise BuildError(gate_err + " (give --data, or --allow-gate-failure to ship ungated)")
        manifest["override"] = {"flag": "--allow-gate-failure", "reason": gate_err}
        return None
    say("accuracy gate on the val part")
    res = G.evaluate(s.fp32, model, cfg.data_root, s.thr["value"], s.tb_index, s.sizes["classifier"], cfg.threads,
                     cfg.gate_max_images, s.prep)
    gate = res.to_dict()
    summary["gate"] = gate
    if not res.passed:
        if not cfg.allow_gate_failure:
            raise G.GateFailure(res)
        manifest["override"] = {"flag": "--allow-gate-failure", "reason": "; ".join(res.failures)}
    return gate


def _model_entries(stage: Path, s: _Sources, model: dict[str, Path], quant: dict, gate: dict | None,
                   precision: str, target: str) -> dict:
    """Copy each role's model into ``stage`` as ``ROLE.onnx`` and return the manifest's ``models``."""
    models = {}
    for r in ROLES:
        fname = f"{r}.onnx"
        shutil.copyfile(model[r], stage / fname)
        spec, outputs = s.specs[r]
        e = {"file": fname, "sha256": sha256_file(stage / fname), "name": s.src[r].name,
             "version": s.src[r].version,
             "precision": precision, "backend": "tensorrt" if target == "tensorrt" else "onnxruntime",
             "derived_from": None if precision == "fp32" else s.fp32_sha[r],
             "gate": gate, "input": spec, "outputs": outputs,
             "preprocessing": {"size": s.sizes[r], "resize": PREPROCESSING_RESIZE, "range": [0, 1],
                               **({"crop": s.prep} if r == "classifier" else {})},
             "source": s.src[r].origin, "parity": s.src[r].parity, "quantization": quant[r]}
        if r == "classifier":
            e["tb_bias"] = read_tb_bias(s.fp32[r], s.tb_index)
        models[r] = e
    return models


def _self_test(stage: Path, s: _Sources, model: dict[str, Path], cfg: BuildConfig) -> dict:
    """Write selftest.npz (fp32 reference outputs on the phantoms, + the chosen models' own outputs for
    reduced precision) and return the manifest's ``self_test``."""
    ref, dev = self_test_reference(s.fp32, s.sizes, model, cfg.threads, s.channels())
    if cfg.precision == "fp32":  # its own outputs are the reference
        ref = {k: v for k, v in ref.items() if not k.startswith("expected/")}
    with open(stage / "selftest.npz", "wb") as f:
        np.savez(f, **ref)
        f.flush()
        os.fsync(f.fileno())
    entry = {"file": "selftest.npz", "sha256": sha256_file(stage / "selftest.npz"),
             "atol": self_test_atol(cfg.precision, dev, cfg.target), "measured": dev,
             "reference": "fp32 ONNX Runtime CPU"}
    if cfg.precision != "fp32":
        entry["expected_atol"] = {r: EXPECTED_ATOL[cfg.precision] for r in ROLES}
    return entry


def _tensorrt_plans(stage: Path, models: dict, cfg: BuildConfig, manifest: dict, summary: dict,
                    say: ProgressFn) -> None:
    """Target tensorrt: build the plans here when wanted (``build_plans``), else say how to add them."""
    from .tensorrt import tensorrt_available

    want = tensorrt_available() if cfg.build_plans is None else cfg.build_plans
    if want:
        manifest["plans"] = build_plans_for(stage, models, cfg.precision, cfg.opt_batch, cfg.max_batch, say)
    else:
        summary["plans"] = ("not built: TensorRT is not installed here; on the device run "
                            "`tbedge build-engine BUNDLE --target tensorrt` to add them")


def build_plans_for(stage: Path, models: dict, precision: str, opt_batch: int, max_batch: int,
                    say: ProgressFn) -> dict:
    from . import tensorrt as T

    for r in ROLES:
        q = models[r].get("quantization")
        if q and q.get("form") != "tensorrt":
            raise BuildError(f"the int8 {r} model is the {q.get('form')} Q/DQ form, which TensorRT does not "
                             "take: rebuild from the fp32 bundle with --target tensorrt")
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        raise BuildError("TensorRT is not installed on this host: add the plans on the target device "
                         "(JetPack ships TensorRT)") from e
    dev = T.device_info()
    plans = {}
    cache = stage.parent / ".tbedge-trt-timing.cache"
    for r in ROLES:
        e = models[r]
        prof = T.profile_for(e["input"]["name"], e["input"]["shape"], opt_batch, max_batch)
        fname = T.plan_filename(r, precision, dev["compute_capability"])
        say(f"TensorRT: building {fname}")
        T.build_plan(stage / e["file"], stage / fname, prof, cache, trt=trt)
        plans[r] = T.plan_metadata(trt, dev, fname, sha256_file(stage / fname), e["sha256"], precision, prof)
    return plans


def add_plans(bundle: str | Path, opt_batch: int = 8, max_batch: int = 32,
              progress: ProgressFn | None = None, out: str | Path | None = None) -> dict:
    """Build TensorRT plans for an existing (already gated) bundle, on the device: in place, or into a
    copy at ``out``."""
    b = load_bundle(bundle)
    out = Path(out) if out is not None else b.path

    def with_plans(m: dict, stage: Path) -> dict:
        plans = build_plans_for(stage, m["models"], m["models"]["lungs"]["precision"], opt_batch, max_batch,
                                progress or (lambda _m: None))
        return {**m, "plans": plans, "target": "tensorrt"}

    copy_bundle(b.path, out, edit=with_plans, keep=lambda p: not p.name.endswith(".plan"))
    return {"bundle": str(out), "plans": load_bundle(out).manifest["plans"]}


def _resolve_threshold(threshold, cls_src: Source, cls_sha: str) -> dict:
    if threshold is None and cls_src.threshold is not None:
        t = dict(cls_src.threshold)
    elif threshold is None:
        raise BuildError("no locked threshold for this classifier: pass threshold= (or put threshold.json "
                         "beside the Keras classifier)")
    elif isinstance(threshold, dict):
        t = {"on": "tb_probability", "chosen_on": "unspecified", **threshold}
    else:
        t = {"value": float(threshold), "on": "tb_probability", "chosen_on": "unspecified"}
    if cls_src.threshold is not None and t.get("classifier_sha256") not in (None, cls_sha):
        raise BundleError("the source bundle's threshold belongs to another classifier")
    t["classifier_sha256"] = cls_sha
    if not 0.0 < float(t["value"]) < 1.0:
        raise BuildError(f"threshold {t['value']} is not a probability in (0, 1)")
    return t


def _int8(work, stage, fp32, fp32_sha, sizes, target, calibration, data_root, threads, say, prep="box"):
    from ..calibration import ranges as R
    from ..calibration.sets import load_calibration_set, make_calibration_set

    if calibration is not None:
        cs = load_calibration_set(calibration)
    elif data_root is not None:
        say("calibration set from the calib part")
        cs = make_calibration_set(data_root, fp32["lungs"], work / "calib-set", sizes["classifier"],
                                  threads=threads, prep=prep)
    else:
        raise BuildError("int8 needs a calibration set (--calibration) or a data folder (--data)")
    if cs.manifest["lungs_model_sha256"] != fp32_sha["lungs"]:
        raise BuildError("the calibration set's crops were made with another lung model "
                         f"({cs.manifest['lungs_model_sha256'][:12]}…); rebuild it with this one")
    if cs.manifest.get("crop_prep", "box") != prep:
        raise BuildError(f"the calibration set's crops are {cs.manifest.get('crop_prep', 'box')!r}, the classifier "
                         f"takes {prep!r} crops; rebuild the set from this bundle")
    if cs.manifest["sizes"] != sizes:
        raise BuildError(f"calibration set sizes {cs.manifest['sizes']} do not match the models {sizes}")
    prepared, rng = {}, {}
    for r in ROLES:
        say(f"int8: activation ranges for {r} (once)")
        prepared[r] = P.prepare(fp32[r], work / f"{r}.prep.onnx")
        rng[r] = R.compute_ranges(prepared[r], cs.batches(r))
    R.write_table(stage / "calibration.json", rng, cs.set_sha256, fp32_sha)
    model, quant = {}, {}
    for r in ROLES:
        say(f"int8: {target} Q/DQ form of {r}")
        model[r] = P.quantize(prepared[r], rng[r], target, work / f"{r}.int8.{target}.onnx")
        quant[r] = {"form": target, **P.FORMS[target], "method": R.METHOD}
    entry = {"file": "calibration.json", "sha256": sha256_file(stage / "calibration.json"),
             "set_sha256": cs.set_sha256, "n_images": len(cs.manifest["items"]),
             "strata": cs.manifest["strata"]}
    return model, quant, entry


# -- the CLI's entry point ----------------------------------------------------------------
def default_sources() -> tuple[Path, Path]:
    # The shipped fp32 bundle is the source of every other build (the CPU default may be int8).
    for b in (default_bundle_path().parent / "fp32", default_bundle_path()):
        if (b / "manifest.json").is_file() and load_bundle(b).entry("lungs")["precision"] == "fp32":
            return b, b
    b = default_bundle_path()
    k = _keras_default_dir()
    lungs, cls = k / "lungs.keras", k / "classifier.keras"
    if lungs.is_file() and cls.is_file():
        return lungs, cls
    raise BuildError(f"no shipped models: neither {b}/manifest.json nor {k}/{{lungs,classifier}}.keras")


def _threshold_file(classifier: Path) -> dict | None:
    side = classifier.parent / "threshold.json"
    return json.loads(side.read_text()) if classifier.suffix == ".keras" and side.is_file() else None


def build_engine(model: Path | None, default: bool, precision: str, target: str, calibration: Path | None,
                 out: Path, data_root: Path | None, threads: int = 0, allow_gate_failure: bool = False,
                 progress: ProgressFn | None = None) -> dict:
    """``tbedge build-engine [MODEL|--default]``.

    MODEL: a bundle directory (its fp32 ONNX are the sources; a bundle already at ``precision``
    with target tensorrt only gets plans added, in place when ``out`` is the bundle itself) or a
    directory holding ``lungs.keras`` + ``classifier.keras`` (+ ``threshold.json``).
    """
    if default == (model is not None):
        raise BuildError("give either MODEL or --default")
    data_root = data_root or datasets.find_data_root()
    if default:
        lungs, cls = default_sources()
    elif (Path(model) / "manifest.json").is_file():
        b: Bundle = load_bundle(model)
        same = b.entry("lungs")["precision"] == precision and precision != "fp32"
        if same and target == "tensorrt":  # already quantized and gated: only the plans are missing
            return add_plans(b.path, progress=progress, out=out)
        lungs = cls = Path(model)
    elif Path(model).is_dir():
        lungs, cls = Path(model) / "lungs.keras", Path(model) / "classifier.keras"
    else:
        raise BuildError(f"{model} is neither a bundle nor a folder with lungs.keras and classifier.keras")
    config = BuildConfig(precision, target, calibration=calibration, threshold=_threshold_file(Path(cls)),
                         data_root=data_root, threads=threads, allow_gate_failure=allow_gate_failure)
    return build_bundle(lungs, cls, out, config=config, progress=progress)


def calibration_set(lungs_model: Path | None, out: Path, data_root: Path | None, classifier_size: int,
                    n_per_stratum: int = 16, threads: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """``tbedge calibration-set``: lungs_model is an fp32 lung ONNX or a bundle (None: the default)."""
    from ..calibration.sets import make_calibration_set

    data_root = data_root or datasets.find_data_root()
    if data_root is None:
        raise BuildError("no data folder: give --data")
    lm = Path(lungs_model) if lungs_model else default_bundle_path()
    prep = "box"
    if lm.is_dir():
        b = load_bundle(lm)
        lm, prep = b.model_path("lungs"), b.crop_prep
    cs = make_calibration_set(data_root, lm, out, classifier_size, n_per_stratum, threads=threads,
                              progress=progress, prep=prep)
    return {"out": str(cs.path), "set_sha256": cs.set_sha256, "n_images": len(cs.manifest["items"]),
            "strata": cs.manifest["strata"]}
