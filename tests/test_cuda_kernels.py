"""GPU preprocessing: NVRTC compiles (everywhere, never skipped), the host-side tables reproduce
OpenCV on real images (everywhere), and the kernels match tbedge's CPU path (GPU hosts only)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from tbedge.runtime import lungs
from tbedge.runtime.gpu import compile as cc
from tbedge.runtime.gpu import plan as P
from tbedge.runtime.imaging import load_image

TOL = 1.0 / 255  # the contract: GPU output within one 8-bit grey level of the CPU path
EXACT = 2e-6  # the host tables reproduce cv2 INTER_AREA to float32 rounding; hold them to that
# INTER_LINEAR: the tables follow OpenCV's portable code (float32 source positions, as aarch64/Jetson
# builds run it); x86 builds with IPP compute positions in double, ~1e-5 apart. Bit-exact with
# cv2.setUseOptimized(False). Either way 400x inside the 1/255 contract.
LINEAR_TOL = 5e-5


def _images(root, n=4):
    sm = sorted((root / "shenzhen_montgomery_512" / "images").glob("*/*.png"))
    full = sorted((root / "shenzhen_fullres" / "images").glob("*/*.png"))
    nih = sorted((root / "nih_cxr14_512" / "images").glob("*.png"))
    picks = sm[:: max(1, len(sm) // n)][:n] + nih[:1] + full[:1]
    assert picks, f"no images under {root}"
    return picks


def _raw(path) -> np.ndarray:
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
    return a


def _boxes(shape, rng, n=4):
    h, w = shape
    out = [lungs.fallback_box(shape), (0, 0, w, h)]
    while len(out) < n + 2:
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(x0 + 8, w + 1)), int(rng.integers(y0 + 8, h + 1))
        out.append((x0, y0, x1, y1))
    return out


# -- NVRTC: must compile here, on a CPU-only machine ---------------------------------------------
@pytest.mark.parametrize("arch", ["compute_87", "compute_90"])
def test_every_kernel_compiles_to_ptx(arch):
    ptx = cc.compile_ptx(arch)  # raises NvrtcError (with the log) on any error or warning
    assert f".target sm_{arch[-2:]}".encode() in ptx
    params = cc.ptx_params(ptx)
    assert set(params) == set(cc.KERNELS)
    for name, sig in cc.SIGNATURES.items():
        # The launcher packs arguments by these letters; a mismatch would corrupt every launch.
        assert params[name] == [cc.PTX_PARAM_TYPES[k] for k in sig], name


def test_compile_error_raises_with_log():
    with pytest.raises(cc.NvrtcError, match="expected an expression"):
        cc.compile_ptx("compute_87", source='extern "C" __global__ void k(float* p) { p[0] = ; }')
    with pytest.raises(cc.NvrtcError, match="warning"):
        cc.compile_ptx("compute_87", source='extern "C" __global__ void k() { int unused; }')
    with pytest.raises(ValueError):
        cc.compile_ptx("ampere")


def test_import_pulls_in_no_cuda():
    code = ("import sys, tbedge.runtime.gpu, tbedge.runtime.runners.tensorrt; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('cuda', 'tensorrt', 'cupy', 'pycuda')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- resize tables vs OpenCV on real images (the algorithm, proven without a GPU) ----------------
def test_lung_resize_tables_match_cv2(data_root):
    for path in _images(data_root):
        img = load_image(path).pixels
        t = P.resize_tables(img.shape, lungs.LUNG_INPUT)
        assert t.mode == P.AREA
        ref = lungs.preprocess(img)[..., 0]
        got = P.resize_reference(img, t)
        assert np.abs(got - ref).max() <= EXACT, path.name
        # Same result from the raw 8-bit pixels scaled inside the kernel arithmetic.
        raw = _raw(path)
        s, o = P.value_map(raw.dtype)
        assert np.abs(P.resize_reference(raw, t, s, o) - ref).max() <= EXACT
        # And from 16-bit pixels holding the same grey levels (v * 257 / 65535 == v / 255).
        r16 = raw.astype(np.uint16) * 257
        s, o = P.value_map(r16.dtype)
        assert np.abs(P.resize_reference(r16, t, s, o) - ref).max() <= EXACT


def test_crop_tables_match_cv2(data_root):
    rng = np.random.default_rng(7)
    modes = set()
    for path in _images(data_root, n=3):
        img = load_image(path).pixels
        for box in _boxes(img.shape, rng):
            for size in (224, 64):
                t = P.resize_tables(img.shape, size, box)
                modes.add(t.mode)
                ref = lungs.crop(img, box, size)
                tol = EXACT if t.mode == P.AREA else LINEAR_TOL
                assert np.abs(P.resize_reference(img, t) - ref).max() <= tol, (path.name, box, size)
    assert modes == {P.AREA, P.LINEAR}  # both branches of lungs.resize_area were exercised


def test_heat_resize_tables_match_cv2_linear():
    rng = np.random.default_rng(3)
    for (h, w), (dw, dh) in [((16, 16), (224, 224)), ((7, 7), (1931, 2040)), ((14, 14), (300, 411)),
                             ((256, 256), (100, 90)), ((5, 9), (5, 9))]:
        cam = rng.random((h, w), dtype=np.float32)
        t = P.resize_tables((h, w), (dw, dh), mode=P.LINEAR)
        ref = cv2.resize(cam, (dw, dh), interpolation=cv2.INTER_LINEAR)
        assert np.abs(P.resize_reference(cam, t) - ref).max() <= LINEAR_TOL, (h, w, dw, dh)


def test_linear_tables_are_opencv_portable_code():
    rng = np.random.default_rng(4)
    img = rng.random((256, 256), dtype=np.float32)
    was = cv2.useOptimized()
    try:
        cv2.setUseOptimized(False)  # the generic C++ path, the one every platform has
        for dst in [(100, 90), (224, 300), (513, 257)]:
            ref = cv2.resize(img, dst, interpolation=cv2.INTER_LINEAR)
            t = P.resize_tables(img.shape, dst, mode=P.LINEAR)
            assert np.abs(P.resize_reference(img, t) - ref).max() <= 5e-7, dst
    finally:
        cv2.setUseOptimized(was)


@pytest.mark.parametrize("mode", [P.AREA, P.LINEAR])
def test_axis_tables_are_normalised_and_bounded(mode):
    rng = np.random.default_rng(11)
    sizes = [(1, 1), (2, 1), (7, 7), (512, 256), (2306, 256), (4892, 256), (997, 224), (225, 224)]
    sizes += [(int(s), int(rng.integers(1, s + 1))) for s in rng.integers(2, 3000, 30)]
    for ssize, dsize in sizes:
        if mode == P.LINEAR:
            dsize = int(rng.integers(1, 3 * ssize + 2))
        t = P.axis_table(ssize, dsize, mode)
        assert t.dsize == dsize and t.start[0] == 0 and t.start[-1] == t.entries
        assert np.all(np.diff(t.start) >= 1)
        assert t.idx.min() >= 0 and t.idx.max() < ssize
        assert t.entries <= P.max_table_entries(ssize, dsize)
        sums = np.add.reduceat(t.w.astype(np.float64), t.start[:-1])
        # OpenCV drops partial area cells under 1e-3 of a pixel, so a row may sum to 1 - 2e-3.
        assert np.allclose(sums, 1.0, atol=2e-3 if mode == P.AREA else 1e-6), (ssize, dsize)


def test_area_axis_rejects_upscaling_and_modes():
    with pytest.raises(ValueError):
        P.area_axis(10, 11)
    with pytest.raises(ValueError):
        P.axis_table(10, 5, "cubic")
    with pytest.raises(ValueError):
        P.resize_tables((100, 100), 32, box=(50, 50, 50, 60))
    with pytest.raises(ValueError):
        P.resize_tables((100, 100), 32, box=(0, 0, 101, 50))


def test_resize_mode_follows_cpu_rule():
    assert P.resize_mode((512, 512), (256, 256)) == P.AREA
    assert P.resize_mode((256, 256), (256, 256)) == P.AREA
    assert P.resize_mode((300, 200), (224, 224)) == P.LINEAR  # one axis grows -> linear on both
    assert P.resize_mode((100, 100), (224, 224)) == P.LINEAR


def test_pack_tables_round_trip():
    t = P.resize_tables((2320, 2306), 224, box=(100, 200, 1900, 2100))
    buf, offs = P.pack_tables(t)
    for axis in ("x", "y"):
        a = getattr(t, axis)
        for field, dt in (("start", np.int32), ("idx", np.int32), ("w", np.float32)):
            arr = getattr(a, field)
            o = offs[f"{axis}_{field}"]
            assert o % 4 == 0
            np.testing.assert_array_equal(buf[o:o + arr.nbytes].view(dt), arr)
    assert buf.nbytes <= 2 * P.table_bytes(2320, 224)
    with pytest.raises(ValueError):
        P.pack_tables(t, np.empty(16, np.uint8))


def test_value_map():
    assert P.value_map(np.uint8) == (1 / 255, 0.0)
    assert P.value_map(np.uint16) == (1 / 65535, 0.0)
    assert P.value_map(np.uint16, bits=12) == (1 / 4095, 0.0)
    assert P.value_map(np.float32) == (1.0, 0.0)
    s, o = P.value_map(np.uint8, invert=True)
    assert s * 255 + o == 0.0 and s * 0 + o == 1.0
    with pytest.raises(ValueError):
        P.value_map(np.int32)
    assert P.pixel_type(np.uint16) == "u16"
    with pytest.raises(ValueError):
        P.pixel_type(np.float64)


# -- launch geometry, buffers, memory mode --------------------------------------------------------
@pytest.mark.parametrize("w,h", [(256, 256), (224, 224), (1, 1), (33, 9), (4020, 4892)])
def test_launch_2d_covers_exactly(w, h):
    (gx, gy, gz), (bx, by, bz) = P.launch_2d(w, h, batch=3)
    assert bx * by * bz <= 1024 and bx == 32
    assert gx * bx >= w > (gx - 1) * bx and gy * by >= h > (gy - 1) * by and gz == 3


def test_launch_limits():
    with pytest.raises(ValueError):
        P.launch_2d(0, 10)
    with pytest.raises(ValueError):
        P.launch_2d(10, 10, block=(64, 32))
    (g, _, _), (b, _, _) = P.launch_1d(256 * 256 * 8)
    assert g * b >= 256 * 256 * 8
    (g, _, _), _ = P.launch_1d(10**12)
    assert g == 65535 * 8  # capped; the kernel strides over the rest
    with pytest.raises(ValueError):
        P.launch_1d(0)


@pytest.mark.parametrize("mode", [P.PINNED, P.MAPPED])
def test_buffer_plan_is_aligned_and_disjoint(mode):
    batch, px, side = 4, 2320 * 2306, 2320
    p = P.plan_buffers(batch, px, side, itemsize=2, lung_size=256, cls_size=224, mode=mode)
    for arena in (p.host, p.device):
        regions = sorted(arena.values(), key=lambda r: r.offset)
        for a, b in zip(regions, regions[1:], strict=False):
            assert a.end <= b.offset
        assert all(r.offset % P.ALIGN == 0 for r in regions)
    assert all(p.host[f"image_{i}"].nbytes >= px * 2 for i in range(batch))
    assert p.device["lung_input"].nbytes == batch * 256 * 256 * 4
    assert p.device["cls_input"].nbytes == batch * 224 * 224 * 4
    assert p.device["mask"].nbytes == batch * 256 * 256
    worst = P.resize_tables((side, side), 224, box=(0, 0, side, side))
    assert P.pack_tables(worst)[0].nbytes <= p.host["crop_tables_0"].nbytes
    has_images = any(k.startswith("image_") for k in p.device)
    assert has_images == (mode == P.PINNED)  # zero-copy: images stay in host memory
    if mode == P.MAPPED:
        assert p.device_bytes < 4 * 1024 * 1024


def test_buffer_plan_rejects_nonsense():
    with pytest.raises(ValueError):
        P.plan_buffers(0, 100, 10, 1)
    with pytest.raises(ValueError):
        P.plan_buffers(1, 100, 10, 3)
    with pytest.raises(ValueError):
        P.plan_buffers(1, 10_000, 50, 1)  # 50x50 cannot hold 10 000 pixels
    with pytest.raises(ValueError):
        P.plan_buffers(1, 100, 10, 1, mode="unified")


def test_memory_mode():
    assert P.memory_mode(integrated=True, can_map_host_memory=True) == P.MAPPED
    assert P.memory_mode(integrated=False, can_map_host_memory=True) == P.PINNED
    assert P.memory_mode(integrated=True, can_map_host_memory=False) == P.PINNED
    assert P.memory_mode(False, True, override=P.MAPPED) == P.MAPPED
    with pytest.raises(ValueError):
        P.memory_mode(False, False, override=P.MAPPED)
    with pytest.raises(ValueError):
        P.memory_mode(True, True, override="managed")


def test_nvrtc_driver_check():
    P.check_nvrtc_driver((12, 6), 12060)
    P.check_nvrtc_driver((12, 2), 12060)
    with pytest.raises(RuntimeError, match="newer than the CUDA driver"):
        P.check_nvrtc_driver((13, 0), 12060)
    with pytest.raises(RuntimeError):
        P.check_nvrtc_driver((12, 8), 12060)


# -- on a GPU: the kernels against tbedge's CPU path ----------------------------------------------
def _gpu_or_skip():
    from tbedge.runtime.gpu.device import gpu_available

    ok, why = gpu_available()
    if not ok:
        pytest.skip(f"needs a CUDA GPU: {why}")


@pytest.fixture(scope="module", params=[P.PINNED, P.MAPPED])
def gp(request):
    _gpu_or_skip()
    from tbedge.runtime.gpu import GpuPreprocessor
    from tbedge.runtime.gpu.device import device_info

    if request.param == P.MAPPED and not device_info().can_map_host_memory:
        pytest.skip("this GPU cannot map host memory")
    with GpuPreprocessor(max_pixels=2400 * 2400, max_side=2400, batch=2, itemsize=4, cls_size=224,
                         memory=request.param) as g:
        yield g


@pytest.mark.gpu
def test_gpu_lung_resize_matches_cpu(gp, data_root):
    for i, path in enumerate(_images(data_root)):
        raw = _raw(path)
        ref = lungs.preprocess(load_image(path).pixels)
        for j, arr in enumerate((raw, raw.astype(np.uint16) * 257, raw.astype(np.float32) / 255)):
            slot, k = (i + j) % 2, j % 2
            gp.put(slot, k, arr)
            got = gp.lung_input(slot)[k]
            err = np.abs(got - ref).max()
            assert err <= TOL, (path.name, arr.dtype, err)


@pytest.mark.gpu
def test_gpu_double_buffering_keeps_slots_apart(gp, data_root):
    paths = _images(data_root)[:4]
    raws = [_raw(p) for p in paths]
    for i, r in enumerate(raws):  # submit everything before reading anything back
        gp.put(i % 2, (i // 2) % 2, r)
    for i in (2, 3):  # slots hold the last two submissions
        ref = lungs.preprocess(load_image(paths[i]).pixels)
        assert np.abs(gp.lung_input(i % 2)[(i // 2) % 2] - ref).max() <= TOL
    assert {"h2d", "resize"} <= set(gp.timings(0))


@pytest.mark.gpu
def test_gpu_crop_matches_cpu(gp, data_root):
    rng = np.random.default_rng(5)
    for path in _images(data_root, n=2):
        raw = _raw(path)
        img = load_image(path).pixels
        gp.put(0, 0, raw)
        for box in _boxes(img.shape, rng):
            gp.crop(0, 0, box)
            got = gp.cls_input(0)[0, ..., 0]
            ref = lungs.crop(img, box, gp.cls_size)
            assert np.abs(got - ref).max() <= TOL, (path.name, box)


@pytest.mark.gpu
def test_gpu_threshold_and_heat_resize(gp):
    rng = np.random.default_rng(9)
    heat = rng.random((gp.batch, gp.lung_size, gp.lung_size), dtype=np.float32)
    heat[0, :3, :3] = 0.5  # the boundary value counts as lung, as in lungs.threshold
    masks = gp.mask(1, heat=heat)
    for i in range(gp.batch):
        np.testing.assert_array_equal(masks[i], lungs.threshold(heat[i]))
    cam = rng.random((16, 16), dtype=np.float32)
    got = gp.resize_heat(cam, (411, 300))
    ref = cv2.resize(cam, (411, 300), interpolation=cv2.INTER_LINEAR)
    assert np.abs(got - ref).max() <= 1e-5
