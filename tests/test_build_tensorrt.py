"""TensorRT builder configuration, checked against a fake ``trt`` module (no TensorRT here)."""

from __future__ import annotations

import types

import pytest

from tbedge.build import tensorrt as T


def _fake_trt(version: str, explicit_batch: bool):
    calls = []

    class Flag:
        STRONGLY_TYPED = 5
        if explicit_batch:
            EXPLICIT_BATCH = 0

    class Obj:
        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            def f(*a, **k):
                calls.append((f"{self._name}.{attr}", a, k))
                return {"parse": True, "build_serialized_network": b"PLAN", "serialize": b"CACHE"}.get(
                    attr, Obj(attr))
            return f

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls.append(("Logger", (level,), {}))

    trt = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=Flag, Logger=Logger,
                                Builder=lambda lg: Obj("builder"), OnnxParser=lambda n, lg: Obj("parser"),
                                MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"))
    return trt, calls


FLAG_CASES = [("10.3.0", True, (1 << 5) | 1), ("10.13.3", False, 1 << 5), ("11.0.0", True, 1 << 5),
              ("11.1.0", False, 1 << 5)]


@pytest.mark.parametrize("version, has_eb, want", FLAG_CASES)
def test_network_flags(version, has_eb, want):
    trt, _ = _fake_trt(version, has_eb)
    assert T.network_flags(trt) == want  # strongly typed always; explicit batch only on <= 10.x


def test_profile_from_input_spec():
    p = T.profile_for("image", [None, 256, 256, 1], opt_batch=8, max_batch=32)
    assert (p.min, p.opt, p.max) == ((1, 256, 256, 1), (8, 256, 256, 1), (32, 256, 256, 1))
    with pytest.raises(ValueError):
        T.profile_for("image", [None, 256, 256, 1], opt_batch=64, max_batch=32)
    with pytest.raises(T.TensorRTBuildError):
        T.profile_for("image", [None, None, 256, 1])


def test_build_plan_calls_and_no_precision_flags(tmp_path):
    trt, calls = _fake_trt("10.3.0", True)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    prof = T.profile_for("image", [None, 64, 64, 1], 2, 4)
    out = T.build_plan(onnx_file, tmp_path / "m.plan", prof, tmp_path / "timing.cache", trt=trt)
    assert out.read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"CACHE"
    names = [c[0] for c in calls]
    assert ("builder.create_network", ((1 << 5) | 1,), {}) in calls
    assert not any("set_flag" in n for n in names)  # FP16/INT8 builder flags are gone in TRT 11
    shape = next(c for c in calls if c[0] == "create_optimization_profile.set_shape")
    assert shape[1] == ("image", (1, 64, 64, 1), (2, 64, 64, 1), (4, 64, 64, 1))
    assert any(n == "create_builder_config.set_timing_cache" for n in names)


def test_parse_failure_is_reported(tmp_path):
    trt, _ = _fake_trt("11.0.0", False)
    trt.OnnxParser = lambda n, lg: types.SimpleNamespace(parse=lambda b: False, num_errors=1,
                                                         get_error=lambda i: "bad node")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(T.TensorRTBuildError, match="bad node"):
        T.build_plan(tmp_path / "m.onnx", tmp_path / "m.plan", T.profile_for("image", [None, 8, 8, 1], 1, 1),
                     trt=trt)


def test_plan_metadata_and_file_name():
    trt, _ = _fake_trt("10.3.0", True)
    dev = {"gpu_name": "Orin", "compute_capability": "8.7", "cuda_version": "12.6"}
    prof = T.profile_for("image", [None, 256, 256, 1])
    m = T.plan_metadata(trt, dev, T.plan_filename("lungs", "int8", "8.7"), "ab" * 32, "cd" * 32, "int8", prof)
    assert m["file"] == "lungs.int8.sm87.plan" and m["trt_version"] == "10.3.0"
    assert m["compute_capability"] == "8.7" and m["profile"]["max"] == [32, 256, 256, 1]


def test_real_tensorrt_build(tmp_path, tf_keras):
    if not T.tensorrt_available():
        pytest.skip("TensorRT is not installed on this host (CPU build host); plans are built on the device")
    from tbedge.runtime.pipeline import gpu_available

    if not gpu_available():
        pytest.skip("TensorRT is installed but no CUDA GPU answers")
    import tensorrt as trt

    from tbedge.build.tiny import tiny_fp32_bundle
    from tbedge.runtime.bundle import load_bundle

    b = load_bundle(tiny_fp32_bundle())
    prof = T.profile_for("image", b.entry("lungs")["input"]["shape"], 2, 4)
    plan = T.build_plan(b.model_path("lungs"), tmp_path / "lungs.plan", prof, tmp_path / "tc.cache", trt=trt)
    assert plan.stat().st_size > 0 and (tmp_path / "tc.cache").stat().st_size > 0
    assert T.device_info()["compute_capability"].count(".") == 1
