"""Train and evaluate the TB classifier on cached lung crops (``tbedge train classifier``).

Selection never peeks: an internal run selects its epoch on the ``val`` part; a leave-one-site-out
fold trains on the other site(s) + NIH and selects on the held site's ``site_val``. The ``calib``
part (threshold/calibration) and ``test`` patients are never used for any choice here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..fsio import atomic_write_text
from ..runtime import lungs as L
from ..schema import CLASS_NAMES
from . import metrics as M
from .augment import film_look, mixup, photometric, random_affine, warp
from .classifier_config import EXPERIMENTAL_KEYS, Experimental, TrainConfig, run_config  # noqa: F401 (re-exported)
from .crops import Crops, load_crops

TB = CLASS_NAMES.index("tb")


class _BudgetSpent(Exception):
    """Raised at the start of an epoch that would overrun the wall-clock budget."""


def raw_arrays(crops: Crops, idx: np.ndarray, size: int, prep: str = "box") -> np.ndarray:
    """uint8 (n, size, size, C): the box crops (resized with area averaging when the cache has
    another size), plus for a masked ``prep`` the lung weights (all 255 for fallback boxes, whose
    mask is implausible). Augment these, then :func:`prepare` them."""
    x = crops.images[idx]
    if crops.size != size and len(x):
        interp = cv2.INTER_AREA if size < crops.size else cv2.INTER_LINEAR
        x = np.stack([cv2.resize(a, (size, size), interpolation=interp) for a in x])
    if prep == "box":
        return x[..., None] if len(x) else np.zeros((0, size, size, 1), np.uint8)
    if crops.mask is None:
        raise ValueError("this crop cache has no lung masks: rebuild it with `tbedge train crops`")
    out = np.full((len(x), size, size, 2), 255, np.uint8)
    for j, (m, fb) in enumerate(zip(crops.mask[idx], crops.fallback[idx], strict=True)):
        if not fb:
            out[j, ..., 1] = cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA)
    out[..., 0] = x
    return out


def prepare(raw: np.ndarray, prep: str) -> np.ndarray:
    """float32 (S, S, C) [0, 1] raw crop [+ lung weights] -> the model input (``lungs.stack_input``)."""
    if prep == "box":
        return raw.astype(np.float32)
    return L.stack_input(raw[..., 0], raw[..., 1], prep)


def crop_arrays(crops: Crops, idx: np.ndarray, size: int, prep: str = "box") -> np.ndarray:
    """uint8 (n, size, size, C) classifier inputs made as at runtime (C = 1 for "box", else the
    prepared crop + the lung weights)."""
    raw = raw_arrays(crops, idx, size, prep)
    if prep == "box":
        return raw
    return np.stack([np.round(prepare(r / 255.0, prep) * 255).astype(np.uint8) for r in raw]) if len(raw) \
        else raw


def class_index(labels: np.ndarray) -> np.ndarray:
    bad = sorted(set(labels.tolist()) - set(CLASS_NAMES))
    if bad:
        raise ValueError(f"training samples need labels in {CLASS_NAMES}, found {bad}")
    return np.array([CLASS_NAMES.index(c) for c in labels], np.int64)


def balanced_weights(y: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Per-sample weights that give every present class the same total weight (mean 1)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w[y].astype(np.float32)


def site_class_weights(y: np.ndarray, site: np.ndarray) -> np.ndarray:
    """Per-sample weights (mean 1): every present class the same total, shared equally by the sites that
    bring it. Within a site with both classes, TB and normal then weigh about alike, so the site's look
    says little about the label (``tb_more``: 1,600 scanned TB films against 260 digital normals)."""
    w = np.zeros(len(y))
    classes = np.unique(y)
    for c in classes:
        sites = np.unique(site[y == c])
        for s in sites:
            m = (y == c) & (site == s)
            w[m] = 1.0 / (len(classes) * len(sites) * m.sum())
    return (w * len(y)).astype(np.float32)


def predict_probabilities(model, x_uint8: np.ndarray, batch: int = 32) -> np.ndarray:
    """(n, S, S, C) uint8 inputs -> (n, 3) probabilities with a Keras model (inference mode)."""
    from keras import ops

    out = []
    for i in range(0, len(x_uint8), batch):
        xb = x_uint8[i:i + batch].astype(np.float32) / 255.0
        out.append(ops.convert_to_numpy(model(xb, training=False)[0]))
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def nih_weights(w: np.ndarray, site: np.ndarray, y: np.ndarray, nih_weight: float = 1.0,
                nih_normal_weight: float | None = None) -> np.ndarray:
    """Scale the loss weights of NIH films, renormalised to mean 1. NIH brings only non-TB films, so
    its "look" alone says "not TB"; its no-finding films (``nih_normal_weight``) teach that most."""
    normal = nih_weight if nih_normal_weight is None else nih_normal_weight
    if nih_weight == 1.0 and normal == 1.0:
        return w
    nih = site == "nih"
    scale = np.where(nih & (y == CLASS_NAMES.index("normal")), normal, np.where(nih, nih_weight, 1.0))
    w = (w * scale).astype(np.float32)
    return w * (len(w) / w.sum())


def aug_strengths(site: np.ndarray, aug_strength: float = 1.0, nih_aug_strength: float | None = None) -> np.ndarray:
    """Photometric strength per training film: NIH films may get their own, so that their look
    (NIH is the only source of "other") stops being a cue."""
    nih = aug_strength if nih_aug_strength is None else nih_aug_strength
    return np.where(site == "nih", nih, aug_strength).astype(float)


NIH_NOT_TB = ("none", "all", "no_finding")


def not_tb_flags(site: np.ndarray, y: np.ndarray, mode: str) -> np.ndarray:
    """1.0 for the training rows scored given "not TB": NIH films ("all"), or only NIH no-finding
    films ("no_finding": pneumonia keeps teaching "pneumonia is not TB")."""
    if mode not in NIH_NOT_TB:
        raise ValueError(f"nih_not_tb must be one of {NIH_NOT_TB}, not {mode!r}")
    flag = (site == "nih") & (mode != "none")
    if mode == "no_finding":
        flag &= y == CLASS_NAMES.index("normal")
    return flag.astype(np.float32)


def source_targets(site: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target, weight) of the source adversary: target 1 for NIH films; weights only on normal films,
    NIH and the TB sites' normals each half of the total (mean 1 over normals). Pneumonia (NIH only)
    and TB (TB sites only) carry no weight: there source and class are one, and hiding the source
    would hide the class."""
    normal = y == CLASS_NAMES.index("normal")
    nih = site == "nih"
    w = np.zeros(len(y), np.float32)
    for group in (normal & nih, normal & ~nih):
        if group.any():
            w[group] = normal.sum() / (2.0 * group.sum())
    return nih.astype(np.float32)[:, None], w


def _tb_auc(y: np.ndarray, probs: np.ndarray) -> float:
    t = y == TB
    if t.all() or not t.any():
        return 0.5  # undefined on one class (tiny smoke sets): neutral, never "best" by accident
    return M.roc_auc(t, probs[:, TB])


def best_averaged(history: list[dict]) -> dict | None:
    """The epoch row with the highest ``avg_auc`` (epochs before averaging starts log NaN); None before any."""
    scored = [r for r in history if not math.isnan(r.get("avg_auc", math.nan))]
    return max(scored, key=lambda r: r["avg_auc"]) if scored else None


def cosine_lr(lr: float, progress: float, floor: float = 0.02) -> float:
    p = min(max(progress, 0.0), 1.0)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] + 1 for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    a.plot(ep, [r["loss"] for r in history], label="train loss (weighted, augmented)")
    if "sel_loss" in history[0]:
        a.plot(ep, [r["sel_loss"] for r in history], label="selection loss")
    a.set(xlabel="epoch", title="loss")
    a.legend(fontsize=8)
    for k in ("sel_auc", "avg_auc", "val_auc"):
        if k in history[0]:
            b.plot(ep, [r[k] for r in history], label=k)
    b.set(xlabel="epoch", title="TB-vs-rest AUC", ylim=(0.4, 1.0))
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return M.save_figure(fig, path)


def train_subset(idx: np.ndarray, site: np.ndarray, label: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the training indices, drawn per (site, label) stratum (at least one each) with
    ``seed``, in their original order: a smaller training set with the same mix, for a learning curve."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = []
    for key in sorted({(s, lab) for s, lab in zip(site, label, strict=True)}):
        members = np.flatnonzero((site == key[0]) & (label == key[1]))
        keep.append(rng.choice(members, max(1, round(fraction * len(members))), replace=False))
    return np.asarray(idx)[np.sort(np.concatenate(keep))]


@dataclass
class _Data:
    """The arrays of one training run: raw training crops (augmented, then prepared, per batch), the
    prepared selection crops, targets and loss weights."""

    crops: Crops
    size: int
    sel_name: str
    tr: np.ndarray
    sel: np.ndarray
    xtr: np.ndarray
    ytr: np.ndarray
    xse: np.ndarray
    yse: np.ndarray
    extra: tuple[np.ndarray, np.ndarray] | None  # (x, y) of the other sites' val in a fold: logged only
    strength: np.ndarray
    wtr: np.ndarray
    wse: np.ndarray
    ytrue: np.ndarray
    sample_p: np.ndarray | None = None  # site x class balanced sampling: draw probabilities (loss weights 1)


def _load_data(crops_npz: str | Path, cfg: TrainConfig, log: Callable[[str], None]) -> _Data:
    """Read the crop cache and make the training and selection arrays (never the calib or test parts)."""
    x = cfg.experimental
    crops = load_crops(crops_npz)
    size = cfg.size or crops.size
    sets = cfg.sets
    if crops.missing_sets(sets):  # asked for a set the cache never cropped: stop rather than train without it
        raise ValueError(f"this crop cache has no {crops.missing_sets(sets)} films: rebuild it with "
                         "`tbedge train crops --sets all`")
    if crops.left_out(sets):
        log(f"sets {sets}: {crops.left_out(sets)} films of this cache left out")
    parts = crops.parts(cfg.fold, seed=cfg.split_seed, sets=sets)
    sel_name = "site_val" if cfg.fold else "val"
    tr, sel = parts["train"], parts[sel_name]
    if cfg.select_without:
        sel = sel[~np.isin(crops.site[sel], list(cfg.select_without))]
        log(f"selection on {sel_name} without {', '.join(cfg.select_without)}: {len(sel)} films")
    if cfg.train_fraction != 1.0:  # train_subset refuses a share outside (0, 1]
        tr = train_subset(tr, crops.site[tr], crops.label[tr], cfg.train_fraction, cfg.seed)
    xtr, ytr = raw_arrays(crops, tr, size, cfg.prep), class_index(crops.label[tr])  # augmented, then prepared
    xse, yse = crop_arrays(crops, sel, size, cfg.prep), class_index(crops.label[sel])
    extra = None
    if cfg.fold:  # in-distribution val of the other sites: logged only, never selects
        extra = (crop_arrays(crops, parts["val"], size, cfg.prep), class_index(crops.label[parts["val"]]))
    strength = aug_strengths(crops.site[tr], cfg.aug_strength, x.nih_aug_strength)
    wtr = site_class_weights(ytr, crops.site[tr]) if cfg.site_balance else balanced_weights(ytr)
    wtr = nih_weights(wtr, crops.site[tr], ytr, cfg.nih_weight, x.nih_normal_weight)
    sample_p = None
    if cfg.site_balance:  # draw by weight instead of weighting the loss: a Montgomery TB film weighs ~40x
        sample_p = wtr.astype(np.float64)  # a tb_more one: resample it
        sample_p, wtr = sample_p / sample_p.sum(), np.ones_like(wtr)
    wse = balanced_weights(yse)
    ytrue = np.eye(len(CLASS_NAMES), dtype=np.float32)[ytr]
    if x.nih_not_tb != "none":  # a 4th column flags the rows the loss scores given "not TB"
        ytrue = np.concatenate([ytrue, not_tb_flags(crops.site[tr], ytr, x.nih_not_tb)[:, None]], axis=1)
    return _Data(crops, size, sel_name, tr, sel, xtr, ytr, xse, yse, extra, strength, wtr, wse, ytrue, sample_p)


def _compile_model(arch: str, d: _Data, cfg: TrainConfig) -> tuple:
    """(model, describe(model), targets, weights, shipped): the compiled training model, its per-output
    targets and loss weights (probabilities, cam[, source]) and what ``best.keras`` keeps of it."""
    import keras

    from .classifier_models import (
        NotTbCrossentropy,
        build_classifier,
        describe,
        with_source_adversary,
        without_source_adversary,
    )

    x = cfg.experimental
    model = build_classifier(arch, d.size, lung_channel=L.input_channels(cfg.prep) == 2, lung_power=cfg.lung_power)
    info = describe(model)
    loss = [NotTbCrossentropy(cfg.label_smoothing) if x.nih_not_tb != "none"
            else keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), None]
    targets, weights = [d.ytrue, None], [d.wtr, None]  # per output: probabilities, cam[, source]
    if x.nih_adversary:
        src, wsrc = source_targets(d.crops.site[d.tr], d.ytr)
        model = with_source_adversary(model, x.nih_adversary)
        loss.append(keras.losses.BinaryCrossentropy(from_logits=True))
        targets.append(src)
        weights.append(wsrc)
    model.compile(keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay), loss=loss,
                  run_eagerly=cfg.run_eagerly)
    shipped = without_source_adversary if x.nih_adversary else None  # what best.keras / avg_best.keras hold
    return model, info, targets, weights, shipped


class _Clock:
    """Wall-clock time over all sessions of a run (the epochs' ``seconds`` in state.json + this one)."""

    def __init__(self, out: Path, budget_minutes: float | None):
        self.state_path = out / "state.json"
        self.budget_s = budget_minutes * 60 if budget_minutes else None
        self.t0, self.prior = time.time(), 0.0

    def history(self) -> list[dict]:
        return json.loads(self.state_path.read_text())["history"] if self.state_path.exists() else []

    def start_epoch(self) -> None:
        """Restart the count; raise ``_BudgetSpent`` when another epoch like the last would overrun."""
        hist = self.history()
        self.prior, self.t0 = sum(r["seconds"] for r in hist), time.time()
        if self.budget_s and hist and self.prior + hist[-1]["seconds"] > self.budget_s:
            raise _BudgetSpent

    def progress(self, epochs: int) -> float:
        """max(epoch, time) progress after the epoch now ending (for the learning rate)."""
        done = len(self.history()) + 1
        spent = self.prior + time.time() - self.t0
        return max(done / epochs, spent / self.budget_s if self.budget_s else 0.0)


def _augmented(rng: np.random.Generator, raw: np.ndarray, size: int, strength: float, film_look_p: float,
               prep: str) -> np.ndarray:
    """One training input: geometric + film-look + photometric augmentation of a raw uint8 crop (the
    lung weights move with it, untouched otherwise), then prepared exactly as at runtime."""
    img = raw.astype(np.float32) / 255.0  # (S, S, C): raw crop [+ lung weights]
    img = warp(img, random_affine(rng, (size, size), rot=5.0, shift=0.04, scale=(0.93, 1.07)))
    img = img.reshape(size, size, -1)  # OpenCV drops a single channel axis
    img[..., 0] = photometric(rng, film_look(rng, img[..., 0], film_look_p), strength)  # not the mask
    return prepare(img, prep)  # then masked / equalised exactly as at runtime


def _batch_maker(d: _Data, cfg: TrainConfig, targets: list, weights: list, steps: int, clock: _Clock):
    """``batches(epoch)`` for ``loop.run_epochs``: seeded by (seed, epoch), so a resume is reproducible."""
    mixup_alpha = cfg.experimental.mixup_alpha

    def batches(epoch):
        clock.start_epoch()
        rng = np.random.default_rng([cfg.seed, epoch])
        if d.sample_p is None:
            order = rng.permutation(len(d.xtr))[:steps * cfg.batch]
        else:
            order = rng.choice(len(d.xtr), steps * cfg.batch, p=d.sample_p)
        for i in range(0, len(order), cfg.batch):
            idx = order[i:i + cfg.batch]
            bx = np.empty((len(idx), *d.xtr.shape[1:]), np.float32)
            for j, k in enumerate(idx):
                bx[j] = _augmented(rng, d.xtr[k], d.size, d.strength[k], cfg.film_look_p, cfg.prep)
            ys = [None if t is None else t[idx] for t in targets]
            ws = [None if w is None else w[idx] for w in weights]
            if mixup_alpha > 0:  # after preparing, so masked crops blend as the network sees them
                bx, ys[0], ws[0] = mixup(rng, bx, ys[0], ws[0], mixup_alpha)
            yield bx, tuple(ys), tuple(ws)

    return batches


class _Averaged:
    """``--average-from``: the weight average of the epochs from ``average_from * epochs`` on, scored on
    the selection part each epoch (``avg_auc``); its best is kept as ``avg_best.keras``."""

    def __init__(self, out: Path, d: _Data, cfg: TrainConfig, clock: _Clock, shipped):
        from .averaging import WeightAverage

        self.out, self.d, self.cfg, self.clock, self.shipped = out, d, cfg, clock, shipped
        self.avg = WeightAverage(out / "avg.npz", int(cfg.experimental.average_from * cfg.epochs))
        self.model, self.x_bn = None, None

    def evaluate(self, m, res: dict) -> None:
        import keras

        from .loop import save_model

        hist = self.clock.history()
        if not self.avg.update(m, len(hist)):
            res["avg_auc"] = float("nan")
            return
        if self.model is None:
            self.model = keras.models.clone_model(m)
            self.x_bn = crop_arrays(self.d.crops, self.d.tr, self.d.size, self.cfg.prep)  # un-augmented
        self.avg.apply(self.model, self.x_bn)
        res["avg_auc"] = _tb_auc(self.d.yse, predict_probabilities(self.model, self.d.xse))
        top = best_averaged(hist)
        if top is None or res["avg_auc"] > top["avg_auc"]:
            save_model(self.shipped(self.model) if self.shipped else self.model, self.out / "avg_best.keras")


def _evaluator(d: _Data, cfg: TrainConfig, clock: _Clock, averaged: _Averaged | None):
    """``evaluate(model)`` for ``loop.run_epochs``: selection metrics, then the next epoch's learning rate."""

    def evaluate(m):
        p = predict_probabilities(m, d.xse)
        ce = -np.log(np.clip(p[np.arange(len(d.yse)), d.yse], 1e-7, 1))
        res = {"sel_auc": _tb_auc(d.yse, p), "sel_loss": float(np.sum(d.wse * ce) / np.sum(d.wse)),
               "sel_bal_acc": float(np.mean([np.mean(p[d.yse == c].argmax(1) == c) for c in np.unique(d.yse)]))}
        if d.extra is not None:
            res["val_auc"] = _tb_auc(d.extra[1], predict_probabilities(m, d.extra[0]))
        if averaged is not None:
            averaged.evaluate(m, res)
        # Learning rate for the next epoch, from epoch and wall-clock progress.
        m.optimizer.learning_rate.assign(cosine_lr(cfg.lr, clock.progress(cfg.epochs)))
        res["lr_next"] = float(m.optimizer.learning_rate)
        return res

    return evaluate


def _finish(out: Path, state: dict, stopped: str, config: dict, arch: str, size: int, cfg: TrainConfig) -> dict:
    """Record how the run stopped, plot its curves and write result.json (config + outcome)."""
    state["stopped"] = stopped
    if state["history"]:
        plot_curves(state["history"], out / "curves.png",
                    f"{arch}@{size} fold={cfg.fold or 'internal'} seed={cfg.seed} "
                    f"(best epoch {state['best_epoch'] + 1})")
        state["train_seconds"] = sum(r["seconds"] for r in state["history"])
    result = {**config, "best_epoch": state["best_epoch"], "best_sel_auc": state["best"], "stopped": stopped,
              "epochs_done": state["epoch"] + 1}
    top = best_averaged(state["history"])
    if top is not None:
        result.update(avg_best_epoch=top["epoch"], avg_best_sel_auc=top["avg_auc"])
    atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    return state


def train_classifier(crops_npz: str | Path, arch: str = "resnet_s", out: str | Path = "runs/classifier",
                     config: TrainConfig | None = None, *, log: Callable[[str], None] = print,
                     **options) -> dict:
    """Train ``arch`` on the crops in ``crops_npz`` into ``out``; resumable (call again with the same
    ``out``). Returns the run's state (history, best epoch, how it stopped).

    ``config``: how to train (``TrainConfig``; the rejected study levers under its ``experimental``).
    ``options``: flat keyword options as before the dataclass (``seed=1, nih_adversary=0.5``...),
    applied on top of ``config`` (``TrainConfig.with_options``). Selection never peeks: an internal run
    selects its epoch on ``val``, a fold on the held site's ``site_val``. Class balance by per-sample
    weights. Writes config.json (flat, keys as always), state.json, log.csv, best/last.keras,
    curves.png and result.json.
    """
    import keras

    from .loop import run_epochs

    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__}")
    cfg = (config or TrainConfig()).with_options(**options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    d = _load_data(crops_npz, cfg, log)
    log(f"classifier {arch}@{d.size}: train {len(d.tr)} {np.bincount(d.ytr, minlength=3).tolist()}, "
        f"{d.sel_name} {len(d.sel)} {np.bincount(d.yse, minlength=3).tolist()} (classes {CLASS_NAMES})")
    model, info, targets, weights, shipped = _compile_model(arch, d, cfg)
    steps = int(np.ceil(len(d.xtr) / cfg.batch))
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    clock = _Clock(out, cfg.budget_minutes)
    averaged = _Averaged(out, d, cfg, clock, shipped) if cfg.experimental.average_from is not None else None
    config_json = {**run_config(cfg, arch, d.size, d.sel_name), "crops": str(crops_npz),
                   "crops_meta": d.crops.meta, "n_train": int(len(d.tr)), "n_select": int(len(d.sel)),
                   "class_names": list(CLASS_NAMES), **info}
    atomic_write_text(out / "config.json", json.dumps(config_json, indent=1))
    stopped = "epochs"
    try:
        state = run_epochs(model, out, cfg.epochs, _batch_maker(d, cfg, targets, weights, steps, clock), steps,
                           _evaluator(d, cfg, clock, averaged), "sel_auc", cfg.patience, log, best_of=shipped)
        if state["epoch"] < cfg.epochs - 1:
            stopped = "early_stopping"
    except _BudgetSpent:
        state, stopped = json.loads(clock.state_path.read_text()), "budget"
        log(f"budget of {cfg.budget_minutes} min reached after epoch {state['epoch'] + 1}")
    return _finish(out, state, stopped, config_json, arch, d.size, cfg)


# -- speed --------------------------------------------------------------------------------
def measure_speed(arch: str, size: int = 224, batch: int = 16, steps: int = 3, seed: int = 0,
                  jit_compile: bool | str = "auto") -> dict:
    """Training and inference images/s of ``arch`` on this machine (random inputs, after one
    warm-up step that includes graph tracing). Augmentation time is not included."""
    import keras

    from .classifier_models import build_classifier, describe

    keras.utils.set_random_seed(seed)
    model = build_classifier(arch, size)
    model.compile(keras.optimizers.AdamW(1e-3), loss=["categorical_crossentropy", None],
                  jit_compile=jit_compile)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
    model.train_on_batch(x, (y, None))
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, (y, None))
    train = batch * steps / (time.perf_counter() - t)
    model(x, training=False)
    t = time.perf_counter()
    for _ in range(steps):
        model(x, training=False)
    infer = batch * steps / (time.perf_counter() - t)
    return {"arch": arch, "size": size, "batch": batch, "first_step_s": round(first, 1),
            "train_img_s": round(train, 2),
            "infer_img_s": round(infer, 2), **describe(model)}


