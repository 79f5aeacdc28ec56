"""GPU host check for tbedge (called by tools/gpu-check.sh).

Sections, each run when its prerequisites exist and otherwise reported as skipped with the reason:
  env        cuda-python / NVRTC / driver / GPU / TensorRT versions
  nvrtc      compile kernels.cu for this GPU's arch (compute_87 when there is no GPU)
  tables     the resize tables vs cv2 on real images (CPU only; proves the algorithm)
  kernels    GpuPreprocessor vs tbedge's CPU preprocessing on real images (max abs error <= 1/255)
  timing     H2D / resize / crop / threshold / D2H with CUDA events, vs the CPU path
  masked     the lung-masked classifier input (every crop prep) on the GPU vs its numpy reference and
             lungs.classifier_input, on real films with the shipped lung model's masks, pinned and mapped
  pipeline   the whole device path of Pipeline (two slots, streams, kernels) on CUDA, the models run by
             ONNX Runtime through Runner.infer_device's host round trip, vs the CPU pipeline
  tensorrt   fp32 plans built by `tbedge build-engine` from the fp32 bundle, parity with ONNX Runtime,
             latency per batch
  tensorrt_pipeline  Pipeline(backend="tensorrt") on those plans vs the CPU pipeline on the fp32 bundle:
             decisions equal, tb_probability within 1e-3; device ms per stage (H2D, compute, D2H)

Writes a JSON summary (--json) and exits 1 if any check that ran failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOL = 1.0 / 255
TB_TOL = 1e-3  # device pipeline vs CPU pipeline, fp32 models (issue 24)
REPO = Path(__file__).resolve().parents[1]
FP32 = REPO / "tbedge" / "models" / "fp32"
sys.path.insert(0, str(REPO))


class Skip(Exception):
    pass


def find_images(folder: Path | None, n: int) -> list[Path]:
    roots = [folder] if folder else [REPO.parent / "shared" / "data"]
    found: list[Path] = []
    for r in roots:
        if r and r.is_dir():
            found += sorted(p for p in r.rglob("*.png") if "masks" not in p.parts and "_mask" not in p.stem)
    if not found:
        raise Skip(f"no PNG images under {roots[0]} (pass a folder)")
    step = max(1, len(found) // n)
    picks = found[::step][:n]
    big = [p for p in found if "fullres" in str(p)]  # keep one native-resolution film if present
    return picks + [b for b in big[:1] if b not in picks]


def raw_image(path: Path) -> np.ndarray:
    import cv2

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError(f"cannot read {path}")
    return cv2.cvtColor(a, cv2.COLOR_BGR2GRAY) if a.ndim == 3 else a


def sec_env(ctx: dict) -> dict:
    out: dict = {"python": sys.version.split()[0]}
    try:
        import cuda.bindings

        out["cuda_python"] = cuda.bindings.__version__
    except ImportError as e:
        out["cuda_python"] = f"missing ({e})"
    try:
        from tbedge.runtime.gpu.compile import nvrtc_version

        out["nvrtc"] = ".".join(map(str, nvrtc_version()))
    except Exception as e:  # noqa: BLE001 - report, do not stop
        out["nvrtc"] = f"unavailable ({e})"
    from tbedge.runtime.gpu.device import device_info, gpu_available

    ok, why = gpu_available()
    out["gpu"] = why
    if ok:
        info = device_info(0)
        ctx["info"] = info
        out.update(gpu_name=info.name, compute_capability=info.compute_capability, integrated=info.integrated,
                   driver=info.driver_version, runtime=info.runtime_version)
    try:
        import tensorrt as trt

        out["tensorrt"] = trt.__version__
        ctx["trt"] = True
    except ImportError:
        out["tensorrt"] = "not installed"
    return out


def sec_nvrtc(ctx: dict) -> dict:
    from tbedge.runtime.gpu.compile import KERNELS, compile_ptx

    archs = [ctx["info"].arch] if "info" in ctx else ["compute_87", "compute_90"]
    res = {}
    for a in archs:
        t0 = time.perf_counter()
        ptx = compile_ptx(a)
        ms = round((time.perf_counter() - t0) * 1e3, 1)
        res[a] = {"ptx_bytes": len(ptx), "ms": ms, "kernels": len(KERNELS)}
    return res


def sec_tables(ctx: dict) -> dict:
    from tbedge.runtime import lungs
    from tbedge.runtime.gpu.plan import resize_reference, resize_tables
    from tbedge.runtime.imaging import load_image

    worst = 0.0
    for p in ctx["images"]:
        img = load_image(p).pixels
        worst = max(worst, float(np.abs(resize_reference(img, resize_tables(img.shape, 256))
                                        - lungs.preprocess(img)[..., 0]).max()))
        box = lungs.fallback_box(img.shape)
        worst = max(worst, float(np.abs(resize_reference(img, resize_tables(img.shape, 224, box))
                                        - lungs.crop(img, box, 224)).max()))
    if worst > TOL:
        raise AssertionError(f"tables differ from cv2 by {worst}")
    return {"images": len(ctx["images"]), "max_abs_err": worst}


def _need_gpu(ctx):
    if "info" not in ctx:
        raise Skip("no CUDA GPU")


def sec_kernels(ctx: dict) -> dict:
    _need_gpu(ctx)
    import cv2

    from tbedge.runtime import lungs
    from tbedge.runtime.gpu import GpuPreprocessor
    from tbedge.runtime.imaging import load_image

    res = {}
    for mode in ("pinned", "mapped"):
        if mode == "mapped" and not ctx["info"].can_map_host_memory:
            res[mode] = "skipped: device cannot map host memory"
            continue
        errs = {"lung": 0.0, "crop": 0.0, "threshold_mismatch": 0, "heat": 0.0}
        with GpuPreprocessor(max_pixels=5120 * 5120, max_side=5120, batch=1, itemsize=2, memory=mode) as gp:
            for i, p in enumerate(ctx["images"]):
                raw, img = raw_image(p), load_image(p).pixels
                gp.put(i % 2, 0, raw)
                lung_err = float(np.abs(gp.lung_input(i % 2)[0] - lungs.preprocess(img)).max())
                errs["lung"] = max(errs["lung"], lung_err)
                box = lungs.fallback_box(img.shape)
                gp.crop(i % 2, 0, box)
                errs["crop"] = max(errs["crop"], float(np.abs(gp.cls_input(i % 2)[0, ..., 0]
                                                              - lungs.crop(img, box, gp.cls_size)).max()))
                heat = lungs.preprocess(img)[None, ..., 0]  # any [0, 1] map exercises the threshold
                m = gp.mask(i % 2, heat=heat)
                errs["threshold_mismatch"] += int((m[0] != lungs.threshold(heat[0])).sum())
            cam = np.random.default_rng(0).random((16, 16), dtype=np.float32)
            errs["heat"] = float(np.abs(gp.resize_heat(cam, (700, 900))
                                        - cv2.resize(cam, (700, 900), interpolation=cv2.INTER_LINEAR)).max())
        res[mode] = errs
        if max(errs["lung"], errs["crop"], errs["heat"]) > TOL or errs["threshold_mismatch"]:
            raise AssertionError(f"{mode}: GPU differs from the CPU path: {errs}")
    return res


def sec_timing(ctx: dict, reps: int = 20) -> dict:
    _need_gpu(ctx)
    from tbedge.runtime import lungs
    from tbedge.runtime.gpu import GpuPreprocessor
    from tbedge.runtime.gpu import device as dv
    from tbedge.runtime.imaging import load_image

    p = max(ctx["images"], key=lambda q: raw_image(q).size)  # the largest film
    raw, img = raw_image(p), load_image(p).pixels
    out = {"image": f"{raw.shape[1]}x{raw.shape[0]} {raw.dtype}"}
    with GpuPreprocessor(max_pixels=raw.size, max_side=max(raw.shape), batch=1, itemsize=raw.itemsize) as gp:
        acc: dict[str, list[float]] = {}
        box = lungs.fallback_box(raw.shape)
        for r in range(reps + 2):
            gp.put(0, 0, raw)
            gp.crop(0, 0, box)
            gp.mask(0)
            t = gp.timings(0)
            if r >= 2:  # skip warm-up (JIT, first-touch)
                for k, v in t.items():
                    acc.setdefault(k, []).append(v)
        out["gpu_ms_median"] = {k: round(float(np.median(v)), 4) for k, v in acc.items()}
        s = gp.slots[0]
        host = np.empty((1, 256, 256, 1), np.float32)
        a, b = dv.Event(), dv.Event()
        ds = []
        for _ in range(reps):
            a.record(s.stream)
            dv.copy_d2h(host.ctypes.data, gp.lung_input_ptr(0), host.nbytes, s.stream)
            b.record(s.stream)
            b.synchronize()
            ds.append(b.elapsed_ms(a))
        out["gpu_ms_median"]["d2h_lung_input"] = round(float(np.median(ds)), 4)
        a.destroy()
        b.destroy()
        out["memory_mode"] = gp.mode
    cpu = []
    for _ in range(reps):
        t0 = time.perf_counter()
        lungs.preprocess(img)
        lungs.crop(img, box, 224)
        cpu.append((time.perf_counter() - t0) * 1e3)
    out["cpu_ms_median_resize_plus_crop"] = round(float(np.median(cpu)), 3)
    return out


def _build_plans(work: Path, ctx: dict) -> Path:
    """fp32 plans from the fp32 bundle's ONNX, via the project's CLI (the one way tbedge builds them);
    built once per run."""
    if "plans" in ctx:
        return ctx["plans"]
    out = work / "engines"
    r = subprocess.run([sys.executable, "-m", "tbedge", "build-engine", str(FP32), "--precision", "fp32",
                        "--target", "tensorrt", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"tbedge build-engine failed:\n{r.stdout}\n{r.stderr}")
    ctx["plan_source"] = f"tbedge build-engine {FP32.name} --precision fp32 --target tensorrt"
    ctx["plans"] = out
    return out


def sec_tensorrt(ctx: dict, batches=(1, 4, 8)) -> dict:
    _need_gpu(ctx)
    if not ctx.get("trt"):
        raise Skip("TensorRT is not installed")
    from tbedge.runtime import lungs
    from tbedge.runtime.bundle import ROLES, load_bundle
    from tbedge.runtime.imaging import load_image
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from tbedge.runtime.runners.tensorrt import TensorRTRunner

    b = load_bundle(FP32)
    t0 = time.perf_counter()
    eng = load_bundle(_build_plans(ctx["work"], ctx))
    res: dict = {"build_s": round(time.perf_counter() - t0, 1), "plan_source": ctx.get("plan_source")}
    imgs = [load_image(p).pixels for p in ctx["images"][:8]]
    feeds = {"lungs": np.stack([lungs.preprocess(i, b.input_size("lungs")) for i in imgs])}
    sz = b.input_size("classifier")
    feeds["classifier"] = np.stack([lungs.stack_input(lungs.crop(i, lungs.fallback_box(i.shape), sz), None,
                                                      b.crop_prep) for i in imgs])
    for role in ROLES:
        name = b.entry(role)["input"]["name"]
        with OnnxRuntimeRunner(b.model_path(role)) as o, TensorRTRunner.from_bundle(eng, role) as t:
            ref, got = o.infer({name: feeds[role]}), t.infer({name: feeds[role]})
            err = {k: float(np.abs(got[k].reshape(ref[k].shape) - ref[k]).max()) for k in ref}
            lat = {}
            for bs in batches:
                if bs > t.max_batch:
                    continue
                x = np.repeat(feeds[role][:1], bs, axis=0)
                for _ in range(3):
                    t.infer({name: x})
                ms = []
                for _ in range(20):
                    t.infer({name: x})
                    ms.append(t.last_inference_ms)
                lat[bs] = round(float(np.median(ms)), 3)
            res[role] = {"max_abs_err_vs_onnxruntime": err, "latency_ms_median_by_batch": lat,
                         "precision": eng.plan(role).get("precision")}
    return res


def _found(ctx: dict) -> list:
    """(path, image, LungResult) for the films, masks from the fp32 lung model on ONNX Runtime."""
    if "found" not in ctx:
        from tbedge.runtime import lungs
        from tbedge.runtime.bundle import load_bundle
        from tbedge.runtime.imaging import load_image
        from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

        out = []
        with OnnxRuntimeRunner(load_bundle(FP32).model_path("lungs")) as r:
            for p in ctx["images"]:
                img = load_image(p).pixels
                heat = r.infer({"image": lungs.preprocess(img)[None]})["mask"][0, ..., 0]
                out.append((p, img, lungs.analyse(heat, img.shape)))
        ctx["found"] = out
    return ctx["found"]


def sec_masked(ctx: dict, batch: int = 4) -> dict:
    """Every crop prep, pinned and mapped: GPU input vs the numpy reference (the kernels' own arithmetic:
    <= 1e-5) and vs lungs.classifier_input (<= 1e-3; masked_eq only where the crop shrinks: a rank
    transform reorders tied grey levels when OpenCV's interpolation differs by an ulp)."""
    _need_gpu(ctx)
    from tbedge.runtime import lungs
    from tbedge.runtime.gpu import GpuPreprocessor
    from tbedge.runtime.gpu import masked as MK
    from tbedge.runtime.gpu.plan import LINEAR, resize_tables

    found, res, bad = _found(ctx), {}, []
    for mode in ("pinned", "mapped"):
        if mode == "mapped" and not ctx["info"].can_map_host_memory:
            res[mode] = "skipped: device cannot map host memory"
            continue
        for prep in lungs.CROP_PREPS:
            worst = {"vs_reference": 0.0, "vs_host": 0.0, "vs_host_growing_crops": 0.0}
            crop_ms = []
            with GpuPreprocessor(max_pixels=1024 * 1024, max_side=1024, batch=batch, itemsize=4, memory=mode,
                                 crop_prep=prep) as gp:
                for i in range(0, len(found), batch):
                    chunk, slot = found[i:i + batch], (i // batch) % 2
                    gp.stage_batch(slot, [img for _, img, _ in chunk])
                    gp.crop_batch(slot, [(lr.box, None if lr.fallback else lr.mask) for _, _, lr in chunk])
                    got = gp.cls_input(slot, len(chunk))
                    crop_ms.append(gp.timings(slot, {"crop"})["crop"])
                    for k, (_, img, lr) in enumerate(chunk):
                        mask = None if lr.fallback else lr.mask
                        ref = MK.classifier_input_reference(img, lr.box, mask, gp.cls_size, prep)
                        host = lungs.classifier_input(img, lr, gp.cls_size, prep)
                        grows = resize_tables(img.shape, gp.cls_size, lr.box).mode == LINEAR
                        key = "vs_host_growing_crops" if prep == "masked_eq" and grows else "vs_host"
                        worst["vs_reference"] = max(worst["vs_reference"], float(np.abs(got[k] - ref).max()))
                        worst[key] = max(worst[key], float(np.abs(got[k] - host).max()))
            res[f"{mode}/{prep}"] = {**worst, "crop_ms_median_per_batch": round(float(np.median(crop_ms)), 4)}
            if worst["vs_reference"] > 1e-5 or worst["vs_host"] > TB_TOL:
                bad.append(f"{mode}/{prep}: {worst}")
    if bad:
        raise AssertionError("; ".join(bad))
    return {"films": len(found), "warp_rule": list(MK.warp_rule(224)), **res}


def _compare(host: list, dev: list) -> dict:
    d_tb, differ = [], []
    for h, d in zip(host, dev, strict=True):
        a, b = h.result, d.result
        same = (a.status, a.reason, a.triage, a.lungs) == (b.status, b.reason, b.triage, b.lungs)
        if not same:
            differ.append(Path(a.input).name)
        if a.tb_probability is not None and b.tb_probability is not None:
            d_tb.append(abs(a.tb_probability - b.tb_probability))
    out = {"films": len(host), "decisions_differ": differ, "max_abs_tb_probability": max(d_tb, default=None)}
    if differ or (d_tb and max(d_tb) > TB_TOL):
        raise AssertionError(f"device pipeline differs from the CPU pipeline: {out}")
    return out


def _run_pipeline(bundle, backend: str, paths: list, batch: int = 4):
    from tbedge.runtime.pipeline import Pipeline
    from tbedge.tools.bench_child import pipeline_device_ms

    with Pipeline(bundle, backend=backend, batch=batch) as p:
        out = list(p.run(paths))
        return out, pipeline_device_ms(p)


def sec_pipeline(ctx: dict) -> dict:
    """Pipeline's device path on this GPU with ONNX Runtime models (no TensorRT needed)."""
    _need_gpu(ctx)
    from tbedge.runtime import pipeline as PL
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

    host, _ = _run_pipeline(FP32, "onnxruntime", ctx["images"])
    real = PL.make_runner
    PL.make_runner = lambda bundle, role, backend, threads=0, server=None: OnnxRuntimeRunner(bundle.model_path(role),
                                                                                             name=role)
    try:
        dev, dev_ms = _run_pipeline(FP32, "tensorrt", ctx["images"])
    finally:
        PL.make_runner = real
    return {**_compare(host, dev), "device_ms": dev_ms}


def sec_tensorrt_pipeline(ctx: dict) -> dict:
    _need_gpu(ctx)
    if not ctx.get("trt"):
        raise Skip("TensorRT is not installed")
    plans = _build_plans(ctx["work"], ctx)
    host, _ = _run_pipeline(FP32, "onnxruntime", ctx["images"])
    dev, dev_ms = _run_pipeline(plans, "tensorrt", ctx["images"])
    return {**_compare(host, dev), "plan_source": ctx.get("plan_source"), "device_ms": dev_ms}


SECTIONS = ("env", "nvrtc", "images", "tables", "kernels", "timing", "masked", "pipeline", "tensorrt",
            "tensorrt_pipeline")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", type=Path,
                    help="folder of PNG chest X-rays (default ../shared/data)")
    ap.add_argument("--n", type=int, default=8, help="number of images to check")
    ap.add_argument("--only", default=None, help=f"comma-separated sections to run (of {', '.join(SECTIONS[3:])}); "
                                                 "env, nvrtc and images always run")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args(argv)
    only = set(SECTIONS[:3]) | set((a.only or ",".join(SECTIONS)).split(","))
    if only - set(SECTIONS):
        ap.error(f"unknown sections {sorted(only - set(SECTIONS))}")
    ctx: dict = {}
    summary: dict = {}
    failed = False
    steps = {"env": lambda: sec_env(ctx), "nvrtc": lambda: sec_nvrtc(ctx),
             "images": lambda: {"n": len(ctx.setdefault("images", find_images(a.images, a.n)))},
             "tables": lambda: sec_tables(ctx), "kernels": lambda: sec_kernels(ctx),
             "timing": lambda: sec_timing(ctx), "masked": lambda: sec_masked(ctx),
             "pipeline": lambda: sec_pipeline(ctx), "tensorrt": lambda: sec_tensorrt(ctx),
             "tensorrt_pipeline": lambda: sec_tensorrt_pipeline(ctx)}
    with tempfile.TemporaryDirectory() as td:
        ctx["work"] = Path(td)
        for name in SECTIONS:
            if name not in only:
                continue
            if name not in ("env", "nvrtc", "images") and "images" not in ctx:
                summary[name] = {"status": "skipped", "reason": "no images"}
            else:
                try:
                    summary[name] = {"status": "ok", **steps[name]()}
                except Skip as e:
                    summary[name] = {"status": "skipped", "reason": str(e)}
                except Exception as e:  # noqa: BLE001 - every section reports, the run goes on
                    summary[name] = {"status": "FAILED", "error": f"{type(e).__name__}: {e}"}
                    failed = True
            s = summary[name]
            detail = {k: v for k, v in s.items() if k != "status"}
            print(f"[{s['status']:>7}] {name}: {json.dumps(detail, default=str)}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
