"""Train the lung segmentation model on the real masks (``tbedge train lungs``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..datasets import NATIVE_TEST_STEMS, Sample, discover, read_mask, split
from ..fsio import atomic_write_text
from ..runtime import lungs as L
from ..runtime.imaging import load_image
from .augment import film_look, lung_opacities, photometric, random_affine, warp
from .unet import bce_dice_loss


def lung_parts(data: Path, exclude_site: str | None = None, seed: int = 0) -> dict[str, list[Sample]]:
    """Masked samples per part of the global split; CHNCXR_0001-0020 never train.

    With ``exclude_site`` the site leaves train/val entirely and all its masks form ``cross``.
    """
    samples = [s for s in discover(data) if s.mask is not None]
    # Split over ALL samples so lung and classifier parts agree patient by patient.
    parts = split(discover(data), seed=seed)
    keep = {s.path for s in samples}
    out = {k: [s for s in v if s.path in keep] for k, v in parts.items()}
    out["train"] = [s for s in out["train"] + out["calib"] if s.stem not in NATIVE_TEST_STEMS]
    out["val"] = [s for s in out["val"] if s.stem not in NATIVE_TEST_STEMS]
    out["native"] = [s for s in samples if s.stem in NATIVE_TEST_STEMS]
    if exclude_site:
        out["cross"] = [s for s in samples if s.site == exclude_site]
        for k in ("train", "val", "test"):
            out[k] = [s for s in out[k] if s.site != exclude_site]
    return out


def load_pairs(samples: list[Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.zeros((len(samples), size, size), np.uint8)
    ys = np.zeros((len(samples), size, size), np.uint8)
    for i, s in enumerate(samples):
        xs[i] = np.round(L.preprocess(load_image(s.path).pixels, size)[..., 0] * 255).astype(np.uint8)
        m = cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        ys[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) > 127
    return xs, ys


def predict_heat(model, xs: np.ndarray, batch: int = 16) -> np.ndarray:
    x = xs.astype(np.float32)[..., None] / 255.0
    return model.predict(x, batch_size=batch, verbose=0)[..., 0]


def dice_scores(heat: np.ndarray, ys: np.ndarray, cleaned: bool = True) -> np.ndarray:
    return np.array([L.dice(L.clean(h) if cleaned else h >= 0.5, y) for h, y in zip(heat, ys, strict=True)])


def train_lungs(data: Path, out: Path, epochs: int = 20, batch: int = 8, size: int = L.LUNG_INPUT,
                base: int = 12, seed: int = 0, exclude_site: str | None = None, patience: int = 6,
                lr: float = 2e-3, init: Path | None = None, stem: int = 1, opacity: float = 0.0,
                film: float = 0.0, log=print) -> dict:
    """Train (or, with ``init``, fine-tune a saved lung model: warm start, new cosine schedule
    from ``lr``); resumable from ``out``. ``opacity``: share of training films given painted lung opacities
    (``augment.lung_opacities``); ``film``: film-look strength (``augment.film_look``); both 0 = as before."""
    import keras

    from .loop import run_epochs
    from .unet import build_unet

    keras.utils.set_random_seed(seed)
    if init:  # the warm-start model fixes the input size the data is loaded at
        from .predict import load_keras

        model = load_keras(init)
        size, base, stem = model.input_shape[1], None, None
        log(f"lungs: warm start from {init}")
    else:
        model = build_unet(size, base, stem=stem)
    parts = lung_parts(data, exclude_site, seed)
    log(f"lungs: train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}"
        + (f", cross ({exclude_site}) {len(parts['cross'])}" if exclude_site else ""))
    xtr, ytr = load_pairs(parts["train"], size)
    xva, yva = load_pairs(parts["val"], size)

    steps = int(np.ceil(len(xtr) / batch))
    sched = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * epochs, alpha=0.05)
    model.compile(keras.optimizers.Adam(sched), loss=bce_dice_loss)

    def batches(epoch):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(xtr))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            bx = np.zeros((len(idx), size, size, 1), np.float32)
            by = np.zeros_like(bx)
            for j, k in enumerate(idx):
                m = random_affine(rng, (size, size))
                by[j, ..., 0] = warp(ytr[k].astype(np.float32), m) > 0.5
                x = lung_opacities(rng, warp(xtr[k].astype(np.float32) / 255.0, m), by[j, ..., 0], opacity)
                bx[j, ..., 0] = photometric(rng, film_look(rng, x, film))
            yield bx, by

    def evaluate(m):
        return {"val_dice": float(dice_scores(predict_heat(m, xva), yva, cleaned=False).mean())}

    # "loss" is the name the first checkpoints stored for this function.
    state = run_epochs(model, out, epochs, batches, steps, evaluate, "val_dice", patience, log,
                       custom_objects={"loss": bce_dice_loss, "bce_dice_loss": bce_dice_loss})
    atomic_write_text(out / "config.json", json.dumps({"size": size, "base": base, "stem": stem, "seed": seed,
                                                 "epochs": epochs, "batch": batch, "exclude_site": exclude_site,
                                                 "lr": lr, "init": str(init) if init else None,
                                                 "opacity": opacity, "film_look": film}, indent=1))
    return state


def cleaned_masks(model, samples: list[Sample], cache: dict | None = None) -> tuple[list, list]:
    """Cleaned predicted masks and ground-truth masks (model size) of ``samples``. ``cache`` (stem ->
    pair), shared between reports on one model, keeps a film from being predicted twice."""
    cache = {} if cache is None else cache
    todo = [s for s in samples if s.stem not in cache]
    if todo:
        xs, ys = load_pairs(todo, model.input_shape[1])
        for s, h, y in zip(todo, predict_heat(model, xs), ys, strict=True):
            cache[s.stem] = (L.clean(h), y)
    return [cache[s.stem][0] for s in samples], [cache[s.stem][1] for s in samples]


def evaluate_lungs(model, data: Path, exclude_site: str | None = None, seed: int = 0,
                   cache: dict | None = None) -> dict:
    """Dice/IoU of the cleaned mask per part and site (``cache``: see :func:`cleaned_masks`)."""
    parts = lung_parts(data, exclude_site, seed)
    res: dict = {}
    for part in ("val", "test", "cross"):
        if part not in parts:
            continue
        cl, ys = cleaned_masks(model, parts[part], cache)
        d = np.array([L.dice(c, y) for c, y in zip(cl, ys, strict=True)])
        j = np.array([L.iou(c, y) for c, y in zip(cl, ys, strict=True)])
        sites = np.array([s.site for s in parts[part]])
        res[part] = {site: {"n": int((sites == site).sum()), "dice_mean": float(d[sites == site].mean()),
                            "dice_median": float(np.median(d[sites == site])),
                            "iou_mean": float(j[sites == site].mean())} for site in sorted(set(sites))}
    return res


def evaluate_native(predict, data: Path) -> dict:
    """CHNCXR_0001-0020 (never trained on): the cleaned mask from the 512² image upsampled to each
    native mask's size; and CHNCXR_0007_0 through the full native path (native image in).

    ``predict(x)`` maps (B, 256, 256, 1) float32 -> heat (B, 256, 256).
    """
    from ..datasets import FULLRES_DIR, fullres_native

    native = fullres_native(data)
    sm = {s.stem: s for s in discover(data)}
    dices = {}
    for stem, mpath in native.items():
        gt = read_mask(mpath)
        img = load_image(sm[stem].path).pixels
        heat = predict(L.preprocess(img)[None])[0]
        dices[stem] = L.dice(L.mask_to_native(L.clean(heat), gt.shape), gt)
    out = {"n": len(dices), "dice_median": float(np.median(list(dices.values()))),
           "dice_min": float(min(dices.values())), "per_image": dices}
    full = Path(data) / FULLRES_DIR / "images" / "normal" / "CHNCXR_0007_0.png"
    if full.exists():
        img = load_image(full).pixels
        gt = read_mask(native["CHNCXR_0007_0"])
        heat = predict(L.preprocess(img)[None])[0]
        res = L.analyse(heat, img.shape)
        out["full_native_0007"] = {"shape": list(img.shape),
                                   "dice": L.dice(L.mask_to_native(res.mask, img.shape), gt)}
    return out


# A Shenzhen film's ID orders it in time; its masks were drawn in ID batches, and some batches draw
# the patient's left lung on down behind the heart to the diaphragm while most stop at the heart
# border. Grouping by ID shows how much of the Dice gap is that annotation style.
BATCH_IDS = 50
LEFT_MISS = 0.06  # missed fraction of the GT lung on the patient's left that counts as a miss
INCLUSIVE_RATE = 0.15  # a batch whose train/val masks are missed this often draws "inclusive"


def left_miss(cleaned: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of the GT lung area missed on the patient's left (image right, PA display)."""
    w = gt.shape[1] // 2
    return float((gt[:, w:] & ~cleaned[:, w:]).sum() / max(int(gt.sum()), 1))


def batch_table(ids, parts, misses, dices) -> dict:
    """Per ID batch: n, miss rate and Dice; batches are called inclusive from train/val masks only,
    then the test masks are summarised per group (test only reported)."""
    ids, parts = np.asarray(ids), np.asarray(parts)
    misses, dices = np.asarray(misses, float), np.asarray(dices, float)
    batch = ids // BATCH_IDS * BATCH_IDS
    known = parts != "test"
    table, inclusive = {}, set()
    for b in np.unique(batch):
        sel = known & (batch == b)
        if not sel.any():
            continue
        rate = float((misses[sel] > LEFT_MISS).mean())
        table[f"{int(b):04d}-{int(b) + BATCH_IDS - 1:04d}"] = {
            "n": int(sel.sum()), "left_miss_rate": rate, "dice_mean": float(dices[sel].mean())}
        if rate >= INCLUSIVE_RATE:
            inclusive.add(int(b))
    test = parts == "test"
    groups = {}
    for name, sel in (("inclusive", test & np.isin(batch, list(inclusive))),
                      ("other", test & ~np.isin(batch, list(inclusive)))):
        if sel.any():
            groups[name] = {"n": int(sel.sum()), "dice_mean": float(dices[sel].mean()),
                            "dice_median": float(np.median(dices[sel])),
                            "left_miss_rate": float((misses[sel] > LEFT_MISS).mean())}
    return {"batches_train_val": table, "inclusive_batches": sorted(inclusive), "test": groups}


def shenzhen_batches(model, data: Path, seed: int = 0, cache: dict | None = None) -> dict:
    """``batch_table`` for every Shenzhen mask outside the native test, from the cleaned masks."""
    import re

    parts = lung_parts(data, seed=seed)
    ss = [(p, s) for p in ("train", "val", "test") for s in parts[p] if s.site == "shenzhen"]
    cleaned, ys = cleaned_masks(model, [s for _, s in ss], cache)
    return batch_table([int(re.search(r"(\d{4})", s.stem).group(1)) for _, s in ss], [p for p, _ in ss],
                       [left_miss(c, y) for c, y in zip(cleaned, ys, strict=True)],
                       [L.dice(c, y) for c, y in zip(cleaned, ys, strict=True)])


def lungs_report(keras_path: Path, data: Path, onnx_path: Path | None = None,
                 exclude_site: str | None = None, threads: int = 2, by_batch: bool = False) -> dict:
    """Everything the model card reports: Dice/IoU per part and site, native-resolution Dice,
    ONNX-vs-Keras parity on real images and CPU latency of segmentation + cleaning."""
    import time

    from ..runtime.runners.onnxruntime import OnnxRuntimeRunner
    from .predict import load_keras

    model = load_keras(keras_path)
    cache: dict = {}  # --by-batch reuses the val/test masks instead of predicting them again
    rep = {"model": str(keras_path), "params": int(model.count_params()),
           "dice": evaluate_lungs(model, data, exclude_site, cache=cache)}
    rep["native"] = evaluate_native(lambda x: model.predict(x, verbose=0)[..., 0], data)
    rep["native"].pop("per_image")
    if by_batch and exclude_site is None:
        rep["shenzhen_batches"] = shenzhen_batches(model, data, cache=cache)
    if onnx_path:
        parts = lung_parts(data, exclude_site)
        xs, _ = load_pairs(parts["test"][:16], model.input_shape[1])
        x = xs.astype(np.float32)[..., None] / 255.0
        ref = model.predict(x, verbose=0)
        with OnnxRuntimeRunner(onnx_path, threads=threads) as r:
            got = r.infer({"image": x})["mask"]
            rep["onnx_max_abs_diff"] = float(np.max(np.abs(ref - got)))
            times = []
            for i in range(40):
                t0 = time.perf_counter()
                heat = r.infer({"image": x[i % len(x)][None]})["mask"][0, ..., 0]
                L.analyse(heat, (512, 512))
                times.append((time.perf_counter() - t0) * 1e3)
            rep["cpu_latency_ms_seg_clean"] = {"median": float(np.median(times[5:])), "threads": threads}
    return rep
