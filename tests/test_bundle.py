"""Bundles: hashing, refusal of tampered/mismatched bundles, the start-up self-test, int8 builds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tbedge.runtime.bundle import BundleError, check_plan_device, load_bundle, run_self_test, sha256_file


@pytest.fixture(scope="module")
def fp32_bundle(tf_keras, data_root):
    from tbedge.build.tiny import tiny_fp32_bundle

    return tiny_fp32_bundle()


@pytest.fixture
def copy(fp32_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(fp32_bundle, dst)
    return dst


def _rewrite(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _runners(b):
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

    return {r: OnnxRuntimeRunner(b.model_path(r), name=r) for r in ("lungs", "classifier")}


def test_fp32_bundle_is_complete_and_passes_self_test(fp32_bundle):
    b = load_bundle(fp32_bundle)
    m = b.manifest
    for r in ("lungs", "classifier"):
        e = b.entry(r)
        assert e["sha256"] == sha256_file(b.model_path(r)) and e["precision"] == "fp32"
        prep = {"crop": "masked_eq"} if r == "classifier" else {}  # from classifier.json beside the .keras
        assert e["preprocessing"] == {"size": 64, "resize": "area", "range": [0, 1], **prep}
        assert e["input"]["name"] == "image" and e["parity"]["on"].endswith("real val images")
    assert m["threshold"]["classifier_sha256"] == b.entry("classifier")["sha256"]
    assert b.entry("classifier")["tb_bias"] == 0.0  # the tiny head's Dense bias starts at zero
    assert m["self_test"]["atol"] == {"lungs": 2e-3, "classifier": 2e-3}
    assert {"onnx", "onnxruntime", "tf2onnx", "tensorflow"} <= set(m["tools"])
    rs = _runners(b)
    for r in rs.values():
        r.activate()
    assert max(run_self_test(b, rs).values()) < 1e-5


def test_refuses_changed_file(copy):
    (copy / "classifier.onnx").write_bytes((copy / "classifier.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="does not match its manifest hash"):
        load_bundle(copy)


def test_refuses_threshold_of_another_classifier(copy):
    _rewrite(copy, lambda m: m["threshold"].update(classifier_sha256="0" * 64))
    with pytest.raises(BundleError, match="threshold belongs to classifier"):
        load_bundle(copy)


def test_refuses_plan_for_another_gpu_or_trt(copy):
    (copy / "lungs.int8.sm87.plan").write_bytes(b"plan")
    (copy / "classifier.int8.sm87.plan").write_bytes(b"plan")

    def add(m):
        m["plans"] = {r: {"file": f"{r}.int8.sm87.plan", "sha256": sha256_file(copy / f"{r}.int8.sm87.plan"),
                          "trt_version": "10.3.0", "cuda_version": "12.6", "gpu_name": "Orin",
                          "compute_capability": "8.7", "onnx_sha256": m["models"][r]["sha256"],
                          "precision": "int8"} for r in ("lungs", "classifier")}
    _rewrite(copy, add)
    b = load_bundle(copy)
    check_plan_device(b, "10.3.0", "8.7")
    with pytest.raises(BundleError, match="TensorRT 10.3.0"):
        check_plan_device(b, "10.4.0", "8.7")
    with pytest.raises(BundleError, match="compute capability 8.7"):
        check_plan_device(b, "10.3.0", "9.0", "H100")


def test_self_test_catches_drift_that_hashes_do_not(copy):
    """A perturbed weight, re-hashed into the manifest: only the self-test can refuse it."""
    p = copy / "lungs.onnx"
    m = onnx.load(str(p))
    head = [n for n in m.graph.node if n.op_type == "Conv"][-1]  # the mask head, +5 %
    w = next(t for t in m.graph.initializer if t.name == head.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.05), w.name))
    onnx.save(m, p)
    _rewrite(copy, lambda mf: mf["models"]["lungs"].update(sha256=sha256_file(p)))
    b = load_bundle(copy)  # hashes agree now
    rs = _runners(b)
    for r in rs.values():
        r.activate()
    with pytest.raises(BundleError, match="self-test failed for lungs"):
        run_self_test(b, rs)


def test_int8_bundle_from_fp32_bundle_without_tensorflow(fp32_bundle, data_root, tmp_path):
    """int8 from the fp32 ONNX of a bundle, one calibration, TensorRT form, gate recorded."""
    from tbedge.build.bundle_writer import build_bundle
    from tbedge.build.gate import GateFailure

    out = tmp_path / "int8"
    try:
        s = build_bundle(fp32_bundle, fp32_bundle, out, "int8", "tensorrt", data_root=data_root,
                         gate_max_images=24, build_plans=False)
    except GateFailure as e:  # random tiny weights may fail the gate: the override must then be recorded
        assert e.result.failures and not out.exists()  # nothing half-written
        s = build_bundle(fp32_bundle, fp32_bundle, out, "int8", "tensorrt", data_root=data_root,
                         gate_max_images=24, build_plans=False, allow_gate_failure=True)
        assert load_bundle(out).manifest["override"]["flag"] == "--allow-gate-failure"
    b = load_bundle(out)
    fp32 = load_bundle(fp32_bundle)
    m = b.manifest
    for r in ("lungs", "classifier"):
        e = b.entry(r)
        assert e["precision"] == "int8" and e["derived_from"] == fp32.entry(r)["sha256"]
        assert e["quantization"]["form"] == "tensorrt" and e["gate"]["n_images"] == 24
    assert m["threshold"]["classifier_sha256"] == fp32.entry("classifier")["sha256"]
    assert m["calibration"]["set_sha256"] == s["calibration_set_sha256"]
    assert set(json.loads((out / "calibration.json").read_text())["ranges"]) == {"lungs", "classifier"}
    assert "not built" in s["plans"]
    assert 1e-4 < m["self_test"]["atol"]["lungs"] and m["self_test"]["atol"]["lungs"] >= 5e-2
    rs = _runners(b)
    for r in rs.values():
        r.activate()
    run_self_test(b, rs)  # its own outputs are within its tolerance


def test_int8_refuses_calibration_crops_prepared_otherwise(fp32_bundle, data_root, tmp_path):
    """A calibration set must hold the crops the classifier takes (here masked_eq, not box)."""
    from tbedge.build.bundle_writer import BuildError, build_bundle
    from tbedge.calibration.sets import make_calibration_set

    lungs = load_bundle(fp32_bundle).model_path("lungs")
    box = make_calibration_set(data_root, lungs, tmp_path / "cal-box", 64, n_per_stratum=1, prep="box")
    assert box.manifest["crop_prep"] == "box"
    with pytest.raises(BuildError, match="masked_eq"):
        build_bundle(fp32_bundle, fp32_bundle, tmp_path / "x", "int8", "cpu", calibration=box.path)
    assert not (tmp_path / "x").exists()


def test_int8_refuses_without_calibration_or_data(fp32_bundle, tmp_path):
    from tbedge.build.bundle_writer import BuildConfig, BuildError, build_bundle

    with pytest.raises(BuildError, match="calibration"):
        build_bundle(fp32_bundle, fp32_bundle, tmp_path / "x", config=BuildConfig("int8", "cpu"))
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_build_config_takes_the_positional_and_keyword_options(tmp_path):
    """``build_bundle``'s precision/target and keyword options replace BuildConfig's fields; unknown ones,
    precisions and targets fail before anything is written."""
    from tbedge.build.bundle_writer import BuildConfig, BuildError, build_bundle

    assert BuildConfig(data_root=str(tmp_path)).checked().data_root == tmp_path
    assert BuildConfig(data_root="").checked().data_root is None
    with pytest.raises(BuildError, match="unknown precision"):
        build_bundle(tmp_path, tmp_path, tmp_path / "x", config=BuildConfig(precision="int4"))
    with pytest.raises(BuildError, match="unknown target"):
        build_bundle(tmp_path, tmp_path, tmp_path / "x", "fp16", "npu")
    with pytest.raises(TypeError, match="gate_images"):
        build_bundle(tmp_path, tmp_path, tmp_path / "x", "fp16", gate_images=3)
    assert not list(tmp_path.iterdir())


def test_add_plans_copies_once_and_replaces_old_plans(copy, tmp_path, monkeypatch):
    """The plan step itself needs TensorRT; here a stand-in writes the plan files, and what is
    checked is the bundle around them: one verified copy, plans recorded, stale plans dropped."""
    from tbedge.build import bundle_writer as BW

    def plans_for(stage, models, precision, opt_batch, max_batch, say):
        out = {}
        for role, e in models.items():
            f = stage / f"{role}.plan"
            f.write_bytes(f"plan of {role}".encode())
            out[role] = {"file": f.name, "sha256": sha256_file(f), "onnx_sha256": e["sha256"],
                         "precision": precision}
        return out

    monkeypatch.setattr(BW, "build_plans_for", plans_for)
    (copy / "stale.plan").write_bytes(b"from another GPU")
    rep = BW.add_plans(copy, out=tmp_path / "trt")
    b = load_bundle(tmp_path / "trt")
    assert b.manifest["target"] == "tensorrt" and b.has_plans() and rep["plans"] == b.manifest["plans"]
    assert not (tmp_path / "trt" / "stale.plan").exists() and (copy / "stale.plan").exists()
    assert not load_bundle(copy).has_plans()  # the source is left as it was
    BW.add_plans(tmp_path / "trt")  # in place
    assert load_bundle(tmp_path / "trt").has_plans() and rep["bundle"] == str(tmp_path / "trt")
