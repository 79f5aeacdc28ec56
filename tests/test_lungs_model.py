"""The shipped lung model on real images: Dice, native-resolution path, QA on non-radiographs."""

import hashlib

import cv2
import numpy as np
import pytest

from tbedge.datasets import NATIVE_TEST_STEMS, discover, fullres_native, read_mask, split
from tbedge.runtime import lungs as L
from tbedge.runtime.bundle import load_bundle
from tbedge.runtime.imaging import load_image
from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def lung_runner():
    b = load_bundle()
    with OnnxRuntimeRunner(b.model_path("lungs"), threads=2) as r:
        yield lambda img: r.infer({"image": L.preprocess(img)[None]})["mask"][0, ..., 0]


def test_dice_on_held_out_test_patients(data_root, lung_runner):
    test = [s for s in split(discover(data_root))["test"] if s.mask is not None][::3]
    assert len(test) >= 30
    d = []
    for s in test:
        img = load_image(s.path).pixels
        gt = read_mask(s.mask)
        lr = L.analyse(lung_runner(img), img.shape)
        assert not lr.fallback, s.stem
        d.append(L.dice(L.mask_to_native(lr.mask, img.shape), gt))
    assert np.median(d) >= 0.95 and min(d) >= 0.85, (np.median(d), min(d))


def test_full_native_path(data_root, lung_runner):
    img = load_image(data_root / "shenzhen_fullres" / "images" / "normal" / "CHNCXR_0007_0.png").pixels
    assert img.shape == (2320, 2306) or img.shape[0] > 2000
    gt = read_mask(fullres_native(data_root)["CHNCXR_0007_0"])
    lr = L.analyse(lung_runner(img), img.shape)
    native = L.mask_to_native(lr.mask, img.shape)
    # Regression guard, not the 0.95 goal: the shipped model stops at the left hemidiaphragm's dome
    # where this annotation goes on to the costophrenic angle (Dice 0.84 measured; see the card).
    assert L.dice(native, gt) >= 0.80
    # The native path agrees with the 512² copy of the same film (same crop, same mask up to resizing).
    small = data_root / "shenzhen_montgomery_512" / "images" / "normal" / "CHNCXR_0007_0.png"
    img512 = load_image(small).pixels
    lr512 = L.analyse(lung_runner(img512), img512.shape)
    assert L.dice(native, L.mask_to_native(lr512.mask, img.shape)) >= 0.97
    x0, y0, x1, y1 = lr.box  # the crop box lies at native resolution, around the lungs
    assert x1 - x0 > 1500 and y1 - y0 > 1200
    assert gt[y0:y1, x0:x1].sum() >= 0.9 * gt.sum()
    assert "CHNCXR_0007_0" in NATIVE_TEST_STEMS  # never trained on


def test_qa_rarely_flags_real_films(data_root, lung_runner):
    films = [s.path for s in discover(data_root)][::10]
    flagged = [p.name for p in films if L.analyse(lung_runner(img := load_image(p).pixels), img.shape).fallback]
    assert len(flagged) <= 0.03 * len(films), flagged  # measured: 8 of all 1140 films (0.7 %)


def test_qa_flags_blank_and_real_photographs(lung_runner):
    import skimage.data as skd  # a [dev] dependency: real photographs that ship with the package

    blank = np.zeros((512, 512), np.float32)
    assert L.analyse(lung_runner(blank), blank.shape).fallback
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(skd, name)()
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        lr = L.analyse(lung_runner(gray), gray.shape)
        assert lr.fallback, (name, lr.qa.to_dict())


def test_segment_writes_native_masks_and_skips_bad_files(data_root, tmp_path):
    """`tbedge segment` on real films: mask (input resolution, matching the ground truth) and
    overlay per film; an unreadable file is skipped with its reason code, the rest still written."""
    from tbedge.services.segment import segment_files

    src = tmp_path / "in"
    src.mkdir()
    picks = [s for s in split(discover(data_root))["test"] if s.mask is not None][:2]
    for s in picks:
        (src / s.path.name).write_bytes(s.path.read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # PNG magic, no image
    written, skipped = segment_files([str(src)], tmp_path / "seg")
    assert sorted(p.name for p in written) == sorted(s.path.name for s in picks)
    assert sum(skipped.values()) == 1
    for s in picks:
        stem = f"{s.path.stem}_{hashlib.sha256(s.path.read_bytes()).hexdigest()[:12]}"  # per input: name + hash
        mask = cv2.imread(str(tmp_path / "seg" / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        overlay = cv2.imread(str(tmp_path / "seg" / f"{stem}_overlay.png"))
        gt = read_mask(s.mask)
        assert mask.shape == gt.shape == overlay.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert L.dice(mask > 0, gt) > 0.9
    assert not (tmp_path / "seg" / "broken_mask.png").exists()


def test_lung_reports_predict_each_film_once(data_root):
    """`tbedge evaluate lungs --by-batch`: the Shenzhen batch table reuses the val/test masks that the
    Dice report predicted (cache by stem), with the same masks as a fresh prediction."""
    from tbedge.train.lungs import cleaned_masks

    b = load_bundle()
    seen = []

    class Model:  # the two things cleaned_masks asks of a Keras model, served by the shipped ONNX
        input_shape = (None, 256, 256, 1)

        def predict(self, x, batch_size=16, verbose=0):
            seen.extend([hash(xi.tobytes()) for xi in x])
            return r.infer({"image": x.astype(np.float32)})["mask"]

    test = [s for s in split(discover(data_root))["test"] if s.mask is not None][:6]
    with OnnxRuntimeRunner(b.model_path("lungs"), threads=2) as r:
        cache: dict = {}
        first, gts = cleaned_masks(Model(), test[:4], cache)
        again, _ = cleaned_masks(Model(), test, cache)  # 4 cached + 2 new
        fresh, _ = cleaned_masks(Model(), test)
    assert len(seen) == 4 + 2 + 6 and len(cache) == 6
    for a, c in zip(again, fresh, strict=True):
        assert np.array_equal(a, c)
    assert all(np.array_equal(a, f) for a, f in zip(first, again[:4], strict=True))
    assert min(L.dice(m, g) for m, g in zip(first, gts, strict=True)) > 0.85


def test_lung_opacities_paint_inside_the_lungs_only(data_root):
    from tbedge.train.augment import lung_opacities
    from tbedge.train.lungs import load_pairs

    s = next(s for s in split(discover(data_root))["train"] if s.mask is not None)
    x8, y8 = load_pairs([s], 256)
    x, mask = x8[0].astype(np.float32) / 255.0, y8[0].astype(np.float32)
    rng = np.random.default_rng(0)
    assert lung_opacities(rng, x, mask, 0.0) is x and rng.random() == np.random.default_rng(0).random()  # p=0: no draw
    far = cv2.dilate((mask > 0.5).astype(np.uint8), np.ones((17, 17), np.uint8)) == 0  # 8 px beyond the lungs
    brighter = 0
    for seed in range(12):
        out = lung_opacities(np.random.default_rng(seed), x, mask, 1.0)
        assert out.dtype == np.float32 and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
        assert np.array_equal(out[far], x[far]), seed  # nothing painted outside the lungs
        np.testing.assert_array_equal(out, lung_opacities(np.random.default_rng(seed), x, mask, 1.0))  # seeded
        lung = mask > 0.5
        assert np.abs(out - x)[lung].max() > 0.05, seed  # every film got some density
        brighter += out[lung].mean() > x[lung].mean()
    assert brighter >= 10  # consolidation makes lung denser (a cavity can darken a little)
