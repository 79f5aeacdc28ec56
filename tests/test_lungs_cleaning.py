"""Map cleaning, QA and crop geometry on crafted masks and real masks."""

import cv2
import numpy as np
import pytest

from tbedge.runtime import lungs as L


def two_lungs(size=256, left=(80, 120), right=(176, 120), axes=(40, 80)):
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, left, axes, 0, 0, 360, 1, -1)
    cv2.ellipse(m, right, axes, 0, 0, 360, 1, -1)
    return m


def test_threshold_is_inclusive_at_half():
    heat = np.array([[0.49, 0.5, 0.51]], np.float32)
    assert L.threshold(heat).tolist() == [[0, 1, 1]]


def test_keep_two_largest_of_three_blobs():
    m = two_lungs()
    cv2.circle(m, (128, 240), 6, 1, -1)  # debris blob, third largest
    out = L.keep_largest(m)
    n, _ = cv2.connectedComponents(out)
    assert n - 1 == 2
    assert out[240, 128] == 0 and out[120, 80] == 1 and out[120, 176] == 1


def test_one_lung_kept_when_other_missing():
    m = np.zeros((256, 256), np.uint8)
    cv2.ellipse(m, (80, 120), (40, 80), 0, 0, 360, 1, -1)
    cv2.circle(m, (200, 30), 3, 1, -1)  # tiny speck: below the second-lung ratio
    out = L.keep_largest(m)
    assert cv2.connectedComponents(out)[0] - 1 == 1
    assert out[30, 200] == 0


def test_fill_holes():
    m = two_lungs()
    m[110:130, 70:90] = 0  # a hole inside the left lung
    out = L.fill_holes(m)
    assert out[120, 80] == 1
    assert out.sum() == two_lungs().sum()


def test_smooth_removes_spurs_and_keeps_area():
    m = two_lungs()
    m[120, 120:136] = 1  # one-pixel bridge between the lungs
    out = L.smooth(m, 2)
    assert out[120, 128] == 0
    assert abs(int(out.sum()) - int(two_lungs().sum())) < 0.02 * two_lungs().sum()


def test_clean_end_to_end_on_noisy_heat():
    rng = np.random.default_rng(0)
    heat = two_lungs().astype(np.float32) * 0.9 + rng.uniform(0, 0.3, (256, 256)).astype(np.float32) * 0
    heat[100:104, 60:64] = 0.1  # small hole
    heat[10:14, 10:14] = 0.95  # far-away speck
    out = L.clean(heat)
    assert out[102, 62] == 1 and out[12, 12] == 0
    assert L.dice(out, two_lungs()) > 0.98


def test_bbox_maps_back_to_native_resolution():
    m = np.zeros((256, 256), np.uint8)
    m[64:192, 32:224] = 1
    box = L.bbox(m)
    assert box == (32, 64, 224, 192)
    # native image 2560 wide x 1280 tall: x scale 10, y scale 5
    nb = L.bbox_to_native(box, (256, 256), (1280, 2560), margin=0)
    assert nb == (320, 320, 2240, 960)
    nb2 = L.bbox_to_native(box, (256, 256), (1280, 2560), margin=0.05)
    assert nb2 == (224, 288, 2336, 992)
    # margins are clipped to the image
    full = L.bbox_to_native((0, 0, 256, 256), (256, 256), (1000, 900), margin=0.1)
    assert full == (0, 0, 900, 1000)


def test_crop_is_taken_from_full_resolution():
    native = np.zeros((2000, 1000), np.float32)
    native[::2, :] = 1.0  # fine stripes a thumbnail cannot hold
    c = L.crop(native, (100, 200, 300, 400), 200)  # 1:1 -> stripes preserved
    assert c.shape == (200, 200)
    assert c[::2].mean() == 1.0 and c[1::2].mean() == 0.0


def test_qa_accepts_plausible_and_flags_blank():
    good = L.mask_qa(two_lungs())
    assert good.plausible, good.failures
    blank = L.analyse(np.zeros((256, 256), np.float32), (512, 512))
    assert blank.fallback and "empty" in blank.qa.failures
    assert blank.box == L.fallback_box((512, 512))


@pytest.mark.parametrize("mask, failure", [
    (lambda: two_lungs(axes=(8, 16)), "area"),
    (lambda: two_lungs(left=(40, 40), right=(100, 40), axes=(25, 35)), "position"),
])
def test_qa_failures(mask, failure):
    assert failure in L.mask_qa(mask()).failures


def test_qa_cut_off_needs_an_edge_run_and_small_lungs():
    """A lung cut by the film's side edge fails only when the lung fields are small (part of a chest); a
    tightly cut film with large lungs along the edge passes."""
    strip = two_lungs(left=(10, 90), right=(150, 90), axes=(30, 45))  # the left one runs off the edge
    assert strip[:, 0].sum() > 0.1 * 256 and strip.sum() < 0.2 * 256 * 256
    assert "cut_off" in L.mask_qa(strip).failures
    tight = two_lungs(left=(60, 128), right=(196, 128), axes=(62, 100))  # large lungs touching both edges
    assert tight[:, 0].sum() > 0.1 * 256 and tight.sum() > 0.2 * 256 * 256
    assert L.mask_qa(tight).plausible, L.mask_qa(tight).failures


def test_qa_balance():
    m = np.zeros((256, 256), np.uint8)
    cv2.ellipse(m, (80, 120), (40, 80), 0, 0, 360, 1, -1)
    cv2.ellipse(m, (180, 120), (6, 12), 0, 0, 360, 1, -1)
    assert "balance" in L.mask_qa(m).failures


def test_qa_passes_every_real_mask(data_root):
    """The QA limits must accept all 704 ground-truth masks (no false alarms on real lungs)."""
    masks = sorted((data_root / "shenzhen_montgomery_512" / "masks").glob("*.png"))
    assert len(masks) == 704
    bad = []
    for p in masks:
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        m = (cv2.resize(m, (256, 256), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
        qa = L.mask_qa(L.clean(m.astype(np.float32)))
        if not qa.plausible:
            bad.append((p.name, qa.failures))
    assert not bad, bad[:5]


def test_left_miss_counts_only_the_patients_left_lung():
    from tbedge.train.lungs import left_miss

    gt = np.zeros((100, 100), bool)
    gt[20:80, 10:40] = gt[20:80, 60:90] = True  # image left = patient right, image right = patient left
    pred = gt.copy()
    pred[60:80, 60:90] = False  # the retrocardiac / lower part of the patient's left lung missed
    assert left_miss(pred, gt) == pytest.approx(600 / 3600)
    pred = gt.copy()
    pred[60:80, 10:40] = False  # the same miss on the patient's right does not count
    assert left_miss(pred, gt) == 0.0


def test_batch_table_calls_batches_from_train_val_and_only_reports_test():
    from tbedge.train.lungs import LEFT_MISS, batch_table

    ids = [10, 20, 30, 40, 60, 70, 80, 90, 15, 65]
    parts = ["train"] * 8 + ["test", "test"]
    hit, miss = LEFT_MISS / 2, LEFT_MISS * 2
    # batch 0000-0049: 2 of 4 train masks missed -> inclusive; batch 0050-0099: none -> other.
    misses = [miss, miss, hit, hit, hit, hit, hit, hit, miss, miss]
    dices = [0.9, 0.9, 0.97, 0.97, 0.98, 0.98, 0.98, 0.98, 0.91, 0.92]
    t = batch_table(ids, parts, misses, dices)
    assert t["inclusive_batches"] == [0]
    assert t["batches_train_val"]["0000-0049"] == {"n": 4, "left_miss_rate": 0.5, "dice_mean": pytest.approx(0.935)}
    assert t["batches_train_val"]["0050-0099"]["left_miss_rate"] == 0.0
    # Test masks never decide a batch's group: the test miss in batch 0050-0099 stays "other".
    assert t["test"]["inclusive"]["n"] == 1 and t["test"]["inclusive"]["dice_mean"] == pytest.approx(0.91)
    assert t["test"]["other"] == {"n": 1, "dice_mean": pytest.approx(0.92), "dice_median": pytest.approx(0.92),
                                  "left_miss_rate": 1.0}
