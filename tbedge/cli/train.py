"""``tbedge train ...`` and ``tbedge evaluate ...`` (need the build extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    DATA,
    ENGINE,
    SETS,
    _sets,
    console,
    eval_app,
    train_app,
)


@train_app.command("lungs")
def train_lungs(
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, log, resumable)."),
    epochs: int = typer.Option(16, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    exclude_site: str = typer.Option(None, "--exclude-site", help="Leave a site out (cross-site model)."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate of the cosine schedule."),
    init: Path = typer.Option(None, "--init", help="Warm start from this lung model (.keras): fine-tune."),
    base: int = typer.Option(12, "--base", min=2, help="U-Net width of the first level (FLOPs grow as its square)."),
    size: int = typer.Option(256, "--size", min=64, help="Input side in pixels."),
    stem: int = typer.Option(1, "--stem", min=1, max=4,
                             help="2: the U-Net runs at half resolution behind a strided stem (a quarter "
                                  "of the FLOPs)."),
    opacity: float = typer.Option(0.0, "--opacity", min=0.0, max=1.0,
                                  help="Share of training films given painted consolidation, cavities or white-out "
                                       "inside the lungs (the mask stays): dense lung is still lung."),
    film: float = typer.Option(0.0, "--film-look", min=0.0, max=1.0,
                               help="Film-look augmentation strength (scan resolution, film curve, grain, pen)."),
):
    """Train the lung U-Net on the real masks (resumes from OUT when interrupted).

    Example: tbedge train lungs --data ../shared/data --out runs/lungs
    """
    from ..train.lungs import train_lungs as run

    state = run(data, out, epochs=epochs, seed=seed, exclude_site=exclude_site, lr=lr, init=init, base=base,
                size=size, stem=stem, opacity=opacity, film=film)
    print(f"best val Dice {state['best']:.4f} at epoch {state['best_epoch'] + 1}; model {out / 'best.keras'}")


@train_app.command("crops")
def train_crops(
    data: Path = DATA,
    lungs: Path = typer.Option(..., "--lungs", help="Lung model (.keras or .onnx) that makes the crops."),
    output: Path = typer.Option(..., "--output", help="Crop cache to write (.npz; holds patient pixels: keep it "
                                "out of the repository)."),
    size: int = typer.Option(224, "--size", help="Crop size for the classifier."),
    sets: str = SETS,
):
    """Crop every image in DATA to its lungs once, for fast classifier training (--sets all: cache every
    set once; training picks its sets from the cache).

    Example: tbedge train crops --lungs runs/lungs/best.keras --sets all --output runs/crops/all_224.npz
    """
    from ..train.crops import build_crop_cache

    print(build_crop_cache(data, lungs, output, size=size, sets=sets))


@train_app.command("orientation")
def train_orientation(
    data: Path = DATA,
    out: Path = typer.Option(Path(__file__).resolve().parent / "models" / "orientation.npz", "--out",
                             help="Weights to write (default: the shipped ones)."),
    sets: str = typer.Option("all", "--sets", callback=_sets, help="Data sets of ../shared/data (core | all)."),
):
    """Fit the polarity/orientation layout model on upright films, with its leave-one-site-out rates.

    Example: tbedge train orientation --sets all --out runs/orientation.npz
    """
    from ..train.orientation import train_orientation as run

    meta = run(data, out, sets=sets)
    print("held-out site: share inverted / share flagged upside down, per form (film and mirror)")
    for site, r in meta["leave_one_site_out"].items():
        forms = "  ".join(f"{k} {v['inverted']:.4f}/{v['flagged']:.4f}" for k, v in r.items() if k != "films")
        print(f"  {site:<11} {r['films']:>5} films  {forms}")
    print(f"weights {out}")


@train_app.command("classifier")
def train_classifier(
    arch: str = typer.Option("resnet_s", "--arch", help="resnet_s | alexnet | googlenet | edge_irn | "
                             "inception_resnet_v2"),
    data: Path = typer.Option(..., "--data", help="A crop cache (.npz from 'tbedge train crops')."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, curves, resumable)."),
    seed: int = typer.Option(0, "--seed"),
    epochs: int = typer.Option(60, "--epochs"),
    budget_minutes: float = typer.Option(None, "--budget-minutes", help="Wall-clock training budget."),
    fold: str = typer.Option(None, "--fold", help="Hold out a site: shenzhen | montgomery | tb_more (--sets all)."),
    patience: int = typer.Option(12, "--patience", help="Early stopping patience (epochs)."),
    prep: str = typer.Option("box", "--prep", help="Crop preparation: box | masked | masked_eq."),
    size: int = typer.Option(None, "--size", help="Input size (default: the crop cache's)."),
    aug_strength: float = typer.Option(1.0, "--aug-strength", help="Scale of the photometric augmentation."),
    nih_weight: float = typer.Option(1.0, "--nih-weight", help="Loss weight of NIH films (only non-TB)."),
    nih_normal_weight: float = typer.Option(None, "--nih-normal-weight",
                                            help="Loss weight of NIH no-finding films (default: --nih-weight)."),
    nih_not_tb: str = typer.Option("none", "--nih-not-tb", help="none | all | no_finding: these NIH films "
                                   "teach normal vs other only (likelihood given not TB)."),
    nih_aug_strength: float = typer.Option(None, "--nih-aug-strength",
                                           help="Photometric strength for NIH films (default: --aug-strength)."),
    nih_adversary: float = typer.Option(0.0, "--nih-adversary", help="Strength of a training-only adversary that "
                                        "makes normal films' features hide NIH vs TB site (0 = off)."),
    lung_power: float = typer.Option(1.0, "--lung-power", help="Masked preps: head cells vote with (lung "
                                     "fraction) ** P (the shipped head uses 2; tools/lung_power.py)."),
    average_from: float = typer.Option(None, "--average-from", help="Also keep a weight average (SWA) of "
                                       "the epochs from this fraction of --epochs on: avg_best.keras."),
    mixup: float = typer.Option(0.0, "--mixup", help="Mix training batches (images, targets, weights) with "
                                "lam ~ Beta(A, A); 0 = off."),
    train_fraction: float = typer.Option(1.0, "--train-fraction", help="Train on this share of the training "
                                         "films (per site and class; a learning curve). Selection is unchanged."),
    sets: str = SETS,
    film_look: float = typer.Option(0.0, "--film-look", help="Film-look augmentation on every class (resolution, "
                                    "H&D curve, grain, sharpening, strokes), its probabilities scaled by P; 0 = off."),
    select_without: str = typer.Option("", "--select-without", help="Comma-separated sites left out of the "
                                       "selection part (e.g. tb_more,covid: acquisition tells their classes apart)."),
    site_balance: bool = typer.Option(False, "--site-balance", help="Draw training films site x class balanced "
                                      "(each class shared equally by its sites) instead of class-weighting the loss."),
):
    """Train a TB classifier (normal / TB / other) on lung crops; selection never sees test patients.

    Example: tbedge train classifier --arch resnet_s --data runs/crops/main_224.npz --out runs/cls/r0
    """
    from ..train.classifier import Experimental, TrainConfig
    from ..train.classifier import train_classifier as run

    rejected = Experimental(nih_normal_weight=nih_normal_weight, nih_not_tb=nih_not_tb,
                            nih_aug_strength=nih_aug_strength, nih_adversary=nih_adversary,
                            average_from=average_from, mixup_alpha=mixup)
    config = TrainConfig(seed=seed, epochs=epochs, budget_minutes=budget_minutes, fold=fold, patience=patience,
                         prep=prep, size=size, aug_strength=aug_strength, nih_weight=nih_weight,
                         lung_power=lung_power, train_fraction=train_fraction, sets=sets, film_look_p=film_look,
                         select_without=tuple(s for s in select_without.split(",") if s), site_balance=site_balance,
                         experimental=rejected)
    state = run(data, arch, out, config)
    print(f"best {state.get('best')} at epoch {state.get('best_epoch', -1) + 1}; model {out / 'best.keras'}")


@train_app.command("threshold")
def train_threshold(
    predictions: list[Path] = typer.Argument(..., help="predictions.csv of each fold's site_val."),
    output: Path = typer.Option(..., "--output", help="threshold.json to write (beside classifier.keras)."),
    sensitivity: float = typer.Option(0.90, "--sensitivity", help="Target sensitivity."),
    reference: list[Path] = typer.Option(None, "--reference", help="Each fold model's val predictions.csv (same "
                                         "order): carry the threshold as a quantile of their NIH scores."),
    target_val: Path = typer.Option(None, "--target-val", help="The shipped model's val predictions.csv "
                                    "(with --reference)."),
):
    """Lock the operating threshold on out-of-site validation predictions.

    Example: tbedge train threshold ev/fold_sz/predictions.csv ev/fold_mc/predictions.csv --output t.json
    """
    import json

    from ..train.threshold import write_threshold

    print(json.dumps(write_threshold(predictions, output, sensitivity, reference, target_val), indent=1))


@eval_app.command("lungs")
def evaluate_lungs(
    model: Path = typer.Argument(..., help="Lung model (.keras)."),
    data: Path = DATA,
    onnx: Path = typer.Option(None, "--onnx", help="Its ONNX export: parity and CPU latency."),
    exclude_site: str = typer.Option(None, "--exclude-site", help="The site the model never saw."),
    output: Path = typer.Option(None, "--output", help="Write the report as JSON."),
    by_batch: bool = typer.Option(False, "--by-batch", help="Also Shenzhen Dice and left-lung misses per "
                                  "50-ID annotation batch."),
):
    """Dice/IoU per part and site, native-resolution Dice, ONNX parity, CPU latency.

    Example: tbedge evaluate lungs tbedge/models/keras/lungs.keras --onnx tbedge/models/default/lungs.onnx
    """
    import json

    from ..train.lungs import lungs_report

    rep = lungs_report(model, data, onnx, exclude_site, by_batch=by_batch)
    text = json.dumps(rep, indent=1)
    if output:
        from ..fsio import atomic_write_text

        atomic_write_text(output, text)
    print(text)


@eval_app.command("classifier")
def evaluate_classifier(
    model: Path = typer.Argument(..., help="Classifier (.keras or .onnx)."),
    source: Path = typer.Option(..., "--data", help="Crop cache (.npz) or an image folder (needs --lungs)."),
    out: Path = typer.Option(..., "--out", help="Directory for metrics.json, predictions.csv, roc.png."),
    lungs: Path = typer.Option(None, "--lungs", help="Lung model to crop an image folder."),
    threshold: float = typer.Option(None, "--threshold", help="The locked threshold (else chosen here)."),
    part: str = typer.Option(None, "--part", help="val | test | site_val | site_test | all"),
    fold: str = typer.Option(None, "--fold", help="Held-out site of a cross-site model."),
    sets: str = SETS,
    audit: bool = typer.Option(False, "--audit", help="Also the acquisition-shortcut audit (audit.json): what "
                               "acquisition alone predicts, and the AUC on TB/non-TB films matched on it."),
):
    """AUC with bootstrap CI, ROC PNG, sensitivity/specificity at the threshold, confusion, per site.

    Example: tbedge evaluate classifier runs/cls/r0/best.keras --data runs/crops/main_224.npz --out ev/ --audit
    """
    import json

    from ..train.classifier_eval import evaluate_classifier as run

    rep = run(source, model, out, lungs, threshold, part, fold, sets=sets, audit=audit)
    print(json.dumps(rep, indent=1, default=str)[:4000])
    for line in rep.get("audit", {}).get("summary", []):
        print(line)


@eval_app.command("audit")
def evaluate_audit(
    data: Path = typer.Argument(None, help="Labelled films: ../shared/data, one of its sets or class folders "
                                "(normal/, tb/, other/). Optional with a predictions.csv, which has labels."),
    predictions: Path = typer.Option(None, "--predictions", help="The model's scores: predictions.csv from "
                                     "`tbedge evaluate classifier` or results.jsonl from `tbedge screen`."),
    output: Path = typer.Option(..., "--output", help="The audit report (JSON) to write."),
    sets: str = SETS,
):
    """Acquisition-shortcut audit: AUC of acquisition-only features (cross-validated), and the model's
    AUC on TB/non-TB films matched on them (caliper 0.05), per site and pooled.

    Example: tbedge evaluate audit ../shared/data/tb_more_256 --predictions r.jsonl --output audit.json
    """
    import json

    from ..fsio import atomic_write_text
    from ..train.shortcut_audit import audit_folder, summary_lines

    rep = audit_folder(data, predictions, sets, log=lambda msg: console.print(msg, markup=False, highlight=False))
    atomic_write_text(output, json.dumps(rep, indent=1))
    for line in summary_lines(rep):
        print(line)
    print(f"report -> {output}")


@eval_app.command("cam")
def evaluate_cam(
    data: Path = DATA,
    engine: Path = ENGINE,
    part: str = typer.Option("test", "--part", help="Split part of the TB films to check."),
):
    """How often the hottest TB heat-map point lies inside the ground-truth lungs (vs chance).

    Example: tbedge evaluate cam --data ../shared/data
    """
    import json

    from ..train.cam_check import cam_hit_rate

    print(json.dumps(cam_hit_rate(data, engine, part), indent=1))
