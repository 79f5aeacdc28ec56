"""``Pipeline`` with the TensorRT backend keeps films on the device (runtime/device_path.py).

No GPU and no TensorRT exist here, so CUDA is replaced by the CPU stand-in of fake_cuda.py (memory at
real addresses, checked; kernels run their numpy references) and the engines by ONNX Runtime runners
behind ``Runner.infer_device``'s host round trip. Everything else is the product's code, and the
results are compared with the host path (ONNX Runtime, host crops) on real films with the shipped
models. On a GPU the same tests run on real CUDA; the TensorRT engines themselves are checked by
tools/gpu-check.sh where TensorRT exists.
"""

from __future__ import annotations

from pathlib import Path

import fake_cuda
import numpy as np
import pytest

from tbedge import schema
from tbedge.runtime import lungs as L
from tbedge.runtime import pipeline as PL
from tbedge.runtime.bundle import Bundle, default_bundle_path
from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner
from tbedge.tools.bench_child import pipeline_device_ms

FP32 = default_bundle_path().parent / "fp32"  # fp32 models: tiny input differences stay tiny at the output
HOST_CROP_CODE = ("crop", "classifier_input", "mask_in_crop", "stack_input", "prepare_crop", "apply_mask", "equalize",
                  "preprocess", "resize_area")


@pytest.fixture(scope="module")
def films(data_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("films")
    imgs = sorted((data_root / "shenzhen_montgomery_512" / "images").rglob("*.png"))[::113][:5]
    imgs.insert(2, data_root / "shenzhen_fullres" / "images" / "normal" / "CHNCXR_0007_0.png")
    (d / "empty.png").write_bytes(b"")
    return [*imgs[:4], d / "empty.png", *imgs[4:]]


def _host_run(paths, batch=3, **kw):
    with PL.Pipeline(FP32, backend="onnxruntime", batch=batch, threads=2, **kw) as p:
        return list(p.run(paths))


@pytest.fixture(params=["stand-in pinned", "stand-in mapped", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """Pipeline(backend="tensorrt") runs here: TensorRT engines replaced by ONNX Runtime runners (host round
    trip), CUDA by the stand-in (pinned or mapped memory) or, on a GPU host, the real CUDA."""
    if request.param == "gpu":
        from tbedge.runtime.gpu.device import gpu_available

        ok, why = gpu_available()
        if not ok:
            pytest.skip(f"needs a CUDA GPU: {why}")
    else:
        fake_cuda.install(monkeypatch, integrated=request.param.endswith("mapped"))

    def runner(bundle, role, backend, threads=0, server=None):  # the host path gets the same ONNX Runtime runner
        return OnnxRuntimeRunner(bundle.model_path(role), threads=2, name=role)

    monkeypatch.setattr(PL, "make_runner", runner)
    return request.param


def _forbid_host_crops(monkeypatch):
    calls = []
    for name in HOST_CROP_CODE:
        def boom(*a, _name=name, **k):
            calls.append(_name)
            raise AssertionError(f"the device path called lungs.{_name}")
        monkeypatch.setattr(L, name, boom)
    return calls


def _same_scores(host, dev, tol=1e-3):
    assert [s.result.input for s in dev] == [s.result.input for s in host]
    for h, d in zip(host, dev, strict=True):
        a, b = h.result, d.result
        assert (a.status, a.reason) == (b.status, b.reason), (a.input, b.detail)
        if a.status != schema.STATUS_OK:
            continue
        assert b.lungs == a.lungs and np.array_equal(d.lungs.mask, h.lungs.mask)
        assert abs(a.tb_probability - b.tb_probability) <= tol, a.input
        assert a.triage == b.triage and a.qa_flags == b.qa_flags
        assert np.abs(d.cam - h.cam).max() <= 1e-2 * max(1.0, float(np.abs(h.cam).max()))
        assert set(b.timing_ms) == {*schema.STAGES, "total"}
        assert d.classifier_input is None  # it never left the device
        assert np.abs(d.lung_weights - L.input_lung_weights(h.classifier_input)).max() <= 1e-3


def test_tensorrt_backend_never_calls_host_crop_code(films, device, monkeypatch):
    host = _host_run(films)
    calls = _forbid_host_crops(monkeypatch)
    launches = fake_cuda.STATE["launches"] = []
    with PL.Pipeline(FP32, backend="tensorrt", batch=3) as p:
        assert p.device is not None and p.device.gp.crop_prep == "masked"  # the shipped classifier
        dev = list(p.run(films))
        assert len(p.device.timings) == 3  # 7 films (one unreadable) in batches of 3
    assert not calls
    _same_scores(host, dev, tol=1e-4)
    if device != "gpu":
        # Every film resized for the lungs and cropped on the "device", masks warped, dilated, blended.
        n_ok = sum(s.result.status == schema.STATUS_OK for s in dev)
        assert launches.count("tbedge_mask_blend") == n_ok and launches.count("tbedge_resize_f32") == 2 * n_ok


def test_device_batches_fit_the_engines_profile(films, device, monkeypatch):
    class Capped(OnnxRuntimeRunner):
        max_batch = 2  # a TensorRT plan's optimisation-profile maximum

    monkeypatch.setattr(PL, "make_runner",
                        lambda b, role, backend, threads=0, server=None: Capped(b.model_path(role), name=role))
    with PL.Pipeline(FP32, backend="tensorrt", batch=8) as p:
        assert p.batch == 2
        out = list(p.run(films))
        assert len(p.device.timings) == 4  # 7 inputs in batches of 2
    assert sum(s.result.status == schema.STATUS_OK for s in out) == len(films) - 1


def test_device_times_per_stage_in_trtexec_words(films, device):
    with PL.Pipeline(FP32, backend="tensorrt", batch=4) as p:
        list(p.run(films))
        got = pipeline_device_ms(p)
    assert set(got) == {"preprocess", "segment", "clean_crop", "classify"}
    assert set(got["preprocess"]) == {"h2d", "compute"} and set(got["classify"]) == {"compute", "d2h"}
    assert set(got["segment"]) == {"compute", "d2h"} and set(got["clean_crop"]) == {"h2d", "compute"}
    assert all(s["median"] >= 0 for kinds in got.values() for s in kinds.values())
    with PL.Pipeline(FP32, backend="onnxruntime", batch=4, threads=1) as p:
        assert p.device is None and pipeline_device_ms(p) is None


def test_masked_eq_input_on_the_device(films, device, monkeypatch):
    monkeypatch.setattr(Bundle, "crop_prep", property(lambda self: "masked_eq"))
    host = _host_run(films[:4])
    _forbid_host_crops(monkeypatch)
    with PL.Pipeline(FP32, backend="tensorrt", batch=2) as p:
        assert p.device.gp.crop_prep == "masked_eq"
        dev = list(p.run(films[:4]))
    _same_scores(host, dev)


def test_lungs_only_on_the_device(films, device, monkeypatch):
    """`tbedge segment`: same lungs as the host path, no classifier, no crop made."""
    host = _host_run(films, roles=("lungs",))
    _forbid_host_crops(monkeypatch)
    with PL.Pipeline(FP32, backend="tensorrt", batch=3, roles=("lungs",)) as p:
        assert p.device.gp.crop_prep == "box" and "classifier" not in p.runners
        dev = list(p.run(films))
    for h, d in zip(host, dev, strict=True):
        assert (h.result.status, h.result.reason) == (d.result.status, d.result.reason)
        if d.result.status == schema.STATUS_OK:
            assert d.result.lungs == h.result.lungs and np.array_equal(d.lungs.mask, h.lungs.mask)
            assert d.result.tb_probability is None and d.cam is None


def test_a_device_failure_fails_its_batch_only(films, device, monkeypatch):
    with PL.Pipeline(FP32, backend="tensorrt", batch=2) as p:
        real = p.device.classify
        seen = []

        def flaky(job):
            seen.append(job.slot)
            if len(seen) == 2:
                raise RuntimeError("cudaErrorLaunchFailure")
            return real(job)

        monkeypatch.setattr(p.device, "classify", flaky)
        out = list(p.run(films))
    assert seen[:3] == [0, 1, 0]  # batches alternate between the two slots
    bad = [s.result for s in out[2:4]]
    assert all(r.status == "error" and r.reason == "error_classify" and r.tb_score is None for r in bad)
    good = [s.result for i, s in enumerate(out) if i not in (2, 3) and Path(s.result.input).name != "empty.png"]
    assert good and all(r.status == "ok" and r.tb_score is not None for r in good)
