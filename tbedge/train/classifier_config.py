"""The options of one classifier training run (``train_classifier``), as frozen dataclasses.

``TrainConfig`` holds the recipe's options; the levers the study tried and rejected
(docs/classifier-study.md, docs/selection-rules.md) live under ``TrainConfig.experimental``
(``Experimental``), still reachable so the study's runs can be reproduced. The run's config.json
stays flat: ``run_config`` writes the same keys, in the same order, as before the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Experimental:
    """Levers the study tried and did not adopt (each off by default; docs/classifier-study.md).

    ``nih_normal_weight`` (default: ``nih_weight``): the loss weight of NIH no-finding films alone.
    ``nih_not_tb`` (``classifier.NIH_NOT_TB``): which NIH films are scored by their class likelihood
    given "not TB" (``classifier_models.NotTbCrossentropy``): they teach normal vs other, never "not TB".
    ``nih_aug_strength`` (default: ``aug_strength``): the photometric strength of NIH films
    (``classifier.aug_strengths``). ``nih_adversary`` > 0: train with a source adversary of that
    strength on normal films (``classifier_models.with_source_adversary``, ``classifier.source_targets``);
    the saved ``best.keras`` is the classifier alone. ``average_from`` (a fraction of ``epochs``): also
    average the weights of every epoch from there on (``averaging.WeightAverage``), log the averaged
    model's selection AUC as ``avg_auc`` and keep its best as ``avg_best.keras``; the plain model and
    its selection are unchanged, so one run measures both. ``mixup_alpha`` > 0: mix each training
    batch (``augment.mixup``: images, targets and loss weights, lam ~ Beta(alpha, alpha)).
    """

    nih_normal_weight: float | None = None
    nih_not_tb: str = "none"
    nih_aug_strength: float | None = None
    nih_adversary: float = 0.0
    average_from: float | None = None
    mixup_alpha: float = 0.0

    def __post_init__(self):
        if self.mixup_alpha > 0 and (self.nih_not_tb != "none" or self.nih_adversary):
            raise ValueError("mixup blends targets; it is not defined with --nih-not-tb or --nih-adversary")


EXPERIMENTAL_KEYS = frozenset(f.name for f in fields(Experimental))


@dataclass(frozen=True)
class TrainConfig:
    """How to train (``train_classifier``); the defaults are the CLI's.

    ``fold`` None = internal split (select on ``val``); a site name = LOSO fold (select on that
    site's ``site_val``; for it, use crops from the lung model trained without that site).
    ``size`` None: the crop cache's. ``budget_minutes`` caps train+eval wall time over all sessions:
    an epoch that would overrun it is not started, and the cosine learning rate follows
    max(epoch, time) progress, so a compute-matched run still anneals. ``run_eagerly`` skips graph
    tracing (~20 s per session on 2 CPU cores): only for smoke tests. ``prep``: the crop preparation
    (``lungs.CROP_PREPS``; masked preps add the lung-weight channel and the lung-pooled head).
    ``nih_weight`` scales the loss weight of NIH films. ``lung_power``: masked preps' head cells vote
    with (lung fraction) ** P. ``train_fraction`` in (0, 1): train on that share of the training films
    only (``classifier.train_subset``, for a learning curve); selection and test parts are unchanged.
    ``sets`` ("core" | "all" | set names, ``datasets.SET_DIRS``): the data sets of the cache to use;
    "core" (Shenzhen, Montgomery, NIH) is the shipped recipe whatever else the cache holds, "all" adds
    tb_more (a TB site: its own fold) and covid ("other"). ``film_look_p``: film-look augmentation
    (``augment.film_look``), its probabilities scaled by P; 0 = off. ``select_without``: sites left out of
    the selection part (e.g. ("tb_more", "covid"): their val films are told apart by acquisition, so an
    epoch chosen on them rewards the shortcut). ``site_balance``: draw training films with probability by
    ``classifier.site_class_weights`` (each class's weight shared equally by its sites) instead of
    class-weighting the loss. ``experimental``: the rejected
    levers (``Experimental``; a mapping of its field names is accepted and converted).
    """

    seed: int = 0
    size: int | None = None
    epochs: int = 60
    budget_minutes: float | None = None
    fold: str | None = None
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    label_smoothing: float = 0.05
    aug_strength: float = 1.0
    split_seed: int = 0
    max_steps_per_epoch: int | None = None
    run_eagerly: bool = False
    prep: str = "box"
    nih_weight: float = 1.0
    lung_power: float = 1.0
    train_fraction: float = 1.0
    sets: str | tuple = "core"
    film_look_p: float = 0.0
    select_without: tuple = ()
    site_balance: bool = False
    experimental: Experimental = field(default_factory=Experimental)

    def __post_init__(self):
        if isinstance(self.experimental, Mapping):  # a dict of Experimental's fields: unknown keys fail here
            object.__setattr__(self, "experimental", _experimental(self.experimental))
        elif not isinstance(self.experimental, Experimental):
            raise TypeError(f"experimental must be an Experimental or a mapping, not {type(self.experimental)}")

    @classmethod
    def from_options(cls, **options: Any) -> TrainConfig:
        """A config from flat keyword options (the pre-dataclass ``train_classifier`` keywords):
        ``Experimental``'s field names fill ``experimental``; an unknown name is a TypeError."""
        return cls().with_options(**options)

    def with_options(self, **options: Any) -> TrainConfig:
        """This config with flat keyword options replaced (as ``from_options``)."""
        if not options:
            return self
        exp = {k: options.pop(k) for k in list(options) if k in EXPERIMENTAL_KEYS}
        unknown = sorted(set(options) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}")
        if exp:
            base = options.pop("experimental", self.experimental)
            base = base if isinstance(base, Experimental) else _experimental(base)
            options["experimental"] = replace(base, **exp)
        return replace(self, **options)

    def flat(self) -> dict:
        """Every option as one flat dict (``experimental``'s fields beside the others)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "experimental"}
        return {**d, **asdict(self.experimental)}


def _experimental(options: Mapping) -> Experimental:
    unknown = sorted(set(options) - EXPERIMENTAL_KEYS)
    if unknown:
        raise TypeError(f"unknown experimental option(s) {unknown}; known: {sorted(EXPERIMENTAL_KEYS)}")
    return Experimental(**options)


def run_config(cfg: TrainConfig, arch: str, size: int, selection: str) -> dict:
    """The options part of a run's config.json: flat, the keys and order it always had (readers:
    ``classifier_eval.model_prep``, tools/ship.sh, tools/lung_power.py, research/swa_gains.py...)."""
    x = cfg.experimental
    return {"arch": arch, "size": size, "seed": cfg.seed, "fold": cfg.fold, "selection": selection,
            "epochs": cfg.epochs, "budget_minutes": cfg.budget_minutes, "batch": cfg.batch, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
            "aug_strength": cfg.aug_strength, "split_seed": cfg.split_seed, "prep": cfg.prep,
            "nih_weight": cfg.nih_weight, "nih_normal_weight": x.nih_normal_weight, "nih_not_tb": x.nih_not_tb,
            "nih_aug_strength": x.nih_aug_strength, "nih_adversary": x.nih_adversary,
            "film_look_p": cfg.film_look_p, "lung_power": cfg.lung_power, "average_from": x.average_from,
            "mixup_alpha": x.mixup_alpha, "train_fraction": cfg.train_fraction,
            "sets": cfg.sets if isinstance(cfg.sets, str) else list(cfg.sets),
            "select_without": list(cfg.select_without), "site_balance": cfg.site_balance}
