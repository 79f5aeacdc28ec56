"""An engine that fails its self-test on this CPU: the runtime scores with the fp32 models shipped beside it
(one warning, the precision recorded per result), or refuses with --strict-engine. The failure is forced
by a copy of the shipped default whose self-test tolerance is 0 (its models and their hashes unchanged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from watch_support import real_images, validate_result

from tbedge.runtime.bundle import SelfTestError, default_bundle_path, fp32_fallback, load_bundle
from tbedge.runtime.cpu import probe
from tbedge.runtime.pipeline import Pipeline

FP32 = default_bundle_path().parent / "fp32"


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tbedge", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def drifting(tmp_path):
    """The shipped int8 default with a zero self-test tolerance: its self-test fails on every CPU."""
    b = tmp_path / "engines" / "int8"
    shutil.copytree(default_bundle_path(), b)
    m = json.loads((b / "manifest.json").read_text())
    m["self_test"]["atol"] = {"lungs": 0.0, "classifier": 0.0}
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_fallback_finds_the_fp32_models_it_was_derived_from(drifting):
    fb = fp32_fallback(load_bundle(drifting))
    assert fb is not None and fb.path.resolve() == FP32.resolve()
    for role in ("lungs", "classifier"):
        assert fb.entry(role)["sha256"] == load_bundle(drifting).entry(role)["derived_from"]


def test_a_bundle_without_matching_fp32_models_refuses(drifting):
    m = json.loads((drifting / "manifest.json").read_text())
    m["models"]["lungs"]["derived_from"] = "0" * 64  # derived from models nobody has
    m["threshold"]["classifier_sha256"] = m["models"]["classifier"]["derived_from"]
    (drifting / "manifest.json").write_text(json.dumps(m))
    assert fp32_fallback(load_bundle(drifting)) is None
    with pytest.raises(SelfTestError, match="self-test failed"), Pipeline(drifting, backend="onnxruntime"):
        pass


def test_strict_engine_refuses(drifting):
    with pytest.raises(SelfTestError) as e, Pipeline(drifting, backend="onnxruntime", strict_engine=True):
        pass
    assert e.value.drift > 0 and e.value.atol == 0.0


def test_screen_falls_back_with_one_warning_and_records_the_precision(data_root, drifting, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i, p in enumerate(real_images(data_root, 3, seed=7)):
        shutil.copy(p, inp / f"{i}.png")
    out = tmp_path / "r.jsonl"
    r = _cli("screen", str(inp), "--output", str(out), "--engine", str(drifting))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "self-test failed on this CPU" in line]
    assert len(warnings) == 1, r.stderr
    assert probe().cpu_class in warnings[0] and "drift by" in warnings[0] and "fp32" in warnings[0]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for res in lines:
        validate_result(res)
        assert res["status"] == "ok"
        for role in ("lungs", "classifier"):
            assert res["models"][role]["precision"] == "fp32"
            assert res["models"][role]["fallback_from"] == "int8"
            assert res["models"][role]["sha256"] == load_bundle(FP32).entry(role)["sha256"]

    r = _cli("screen", str(inp), "--output", str(tmp_path / "s.jsonl"), "--engine", str(drifting), "--strict-engine")
    assert r.returncode == 2 and "self-test failed for" in r.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_watch_records_the_fallback_in_its_engine_state(data_root, drifting, tmp_path):
    inc, out = tmp_path / "incoming", tmp_path / "results"
    inc.mkdir()
    shutil.copy(real_images(data_root, 1, seed=3)[0], inc / "a.png")
    r = _cli("watch", str(inc), "--out", str(out), "--once", "--engine", str(drifting), "--min-free-mb", "1")
    assert r.returncode == 0, r.stderr
    state = json.loads((out / "engine.json").read_text())
    assert state["fallback"]["precision"] == "int8" and state["fallback"]["role"] in ("lungs", "classifier")
    assert state["models"]["lungs"]["precision"] == "fp32"
    assert Path(state["bundle"]).resolve() == FP32.resolve()
    r = _cli("watch", str(inc), "--out", str(tmp_path / "r2"), "--once", "--engine", str(drifting),
             "--min-free-mb", "1", "--strict-engine")
    assert r.returncode == 2 and "self-test failed" in r.stderr


class _Shifted:
    """The real classifier runner, its probabilities moved by a fixed amount: what a kernel that computes the
    same int8 model differently (a saturating one) does, smaller than the fp32 tolerance allows."""

    def __init__(self, runner, shift: float):
        self.runner, self.shift, self.backend = runner, shift, runner.backend

    def infer(self, feed):
        out = dict(self.runner.infer(feed))
        out["probabilities"] = out["probabilities"] + np.float32(self.shift)
        return out


def test_the_own_output_reference_catches_a_drift_the_fp32_tolerance_allows():
    from tbedge.runtime.bundle import run_self_test
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

    b = load_bundle(default_bundle_path())
    st = b.manifest["self_test"]
    assert st["expected_atol"]["classifier"] < st["atol"]["classifier"]
    shift = (st["expected_atol"]["classifier"] + st["atol"]["classifier"] - st["measured"]["classifier"]) / 2
    with OnnxRuntimeRunner(b.model_path("lungs")) as lr, OnnxRuntimeRunner(b.model_path("classifier")) as cr:
        assert run_self_test(b, {"lungs": lr, "classifier": cr})["classifier"] == pytest.approx(
            st["measured"]["classifier"], abs=0.05)
        with pytest.raises(SelfTestError, match="own outputs at build time") as e:
            run_self_test(b, {"lungs": lr, "classifier": _Shifted(cr, shift)})
    assert e.value.role == "classifier" and e.value.drift == pytest.approx(shift, abs=1e-4)
