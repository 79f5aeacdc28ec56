"""tbedge command line: parse, call one function, print. No logic lives here.

Errors the user caused print one line and exit non-zero; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from . import __version__
from .errors import TbedgeError

app = typer.Typer(
    name="tbedge",
    help="Offline TB screening of chest X-rays: lung crop, TB score 0-100, triage, heat map.\n\n"
    "Example: tbedge screen /data/xrays --output results.jsonl --overlays overlays/",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train the lung model or the TB classifier (needs the build extra).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
# soft_wrap: rich wraps at 80 columns when stderr is not a terminal, which splits a one-line error in logs.
console = Console(stderr=True, soft_wrap=True)
_state = {"verbose": False}

# Option names shared by every command (DEVELOPERS.md: same names everywhere).
ENGINE = typer.Option(None, "--engine", help="Bundle directory (default: the shipped bundle).")


def _backend(value: str) -> str:
    if value not in ("auto", "onnxruntime", "tensorrt"):
        raise typer.BadParameter(f"unknown backend {value!r}; choose auto, onnxruntime or tensorrt")
    return value


BACKEND = typer.Option("auto", "--backend", callback=_backend, help="auto | onnxruntime | tensorrt")
BATCH = typer.Option(0, "--batch", min=0, help="Images per inference batch (0 = auto: 1 on CPU, 8 on TensorRT).")
THREADS = typer.Option(0, "--threads", min=0, help="Inference threads (0 = all cores).")
STRICT = typer.Option(False, "--strict-engine", help="Refuse to start when the engine fails its self-test on this "
                      "CPU (default: score with the fp32 models shipped beside it, with a warning).")
DATA = typer.Option(Path("../shared/data"), "--data", help="Data folder (../shared/data layout or class folders).")


def _sets(value: str) -> str:
    if value not in ("core", "all"):
        raise typer.BadParameter(f"unknown sets {value!r}; choose core or all")
    return value


SETS = typer.Option("core", "--sets", callback=_sets, help="Data sets of ../shared/data: core (Shenzhen, "
                    "Montgomery, NIH: the shipped recipe) | all (+ tb_more_256 as site tb_more, covid_256 as other).")


class UserError(TbedgeError):
    """Raised for mistakes the user can fix; printed as one line."""


def _version(value: bool):
    if value:
        print(f"tbedge {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show details and tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    prog = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=False)
    task = prog.add_task(label, total=total)
    return prog, (lambda *_: prog.advance(task))


@app.command()
def screen(
    paths: list[str] = typer.Argument(..., help="Files, folders (recursive) or globs."),
    output: Path = typer.Option(..., "--output", "-o", help="Results file (JSON lines, one per input)."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    batch: int = BATCH,
    threads: int = THREADS,
    overlays: Path = typer.Option(None, "--overlays", help="Write overlay PNGs (lungs, heat map, score) here."),
    masks: Path = typer.Option(None, "--masks", help="Write lung masks at input resolution here."),
    dicom_out: Path = typer.Option(None, "--dicom-out", help="For DICOM inputs: Secondary Capture + SR here."),
    resume: bool = typer.Option(False, "--resume", help="Go on from an interrupted run's OUTPUT.partial: keep its "
                                "results, score only the inputs it lacks."),
    strict_engine: bool = STRICT,
):
    """Score chest X-rays (PNG, JPEG, DICOM).

    Example: tbedge screen ../shared/data/nih_cxr14_512 --output r.jsonl --overlays ov/
    """
    from .inputs import expand_inputs
    from .services.screen import EXIT_OUTPUTS_FAILED
    from .services.screen import screen as run_screen

    files, _ = expand_inputs(paths)
    prog, tick = _progress(len(files), "screening")
    with prog:
        s = run_screen(paths, output, engine, backend, batch, threads, overlays, masks, dicom_out, tick,
                       resume=resume, strict_engine=strict_engine)
    print(f"{s.total} inputs -> {output}" + (f" ({s.resumed} kept from the interrupted run)" if s.resumed else "")
          + ": " + ", ".join(f"{k} {v}" for k, v in sorted(s.status.items()))
          + ("; triage " + ", ".join(f"{k} {v}" for k, v in sorted(s.triage.items())) if s.triage else "")
          + ("; reasons " + ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items())) if s.reasons else "")
          + (f"; outputs failed {s.outputs_failed} (see each line's outputs)" if s.outputs_failed else ""))
    if s.refer.state in ("low", "high"):
        print(f"warning, operating point: {s.refer.message()}", file=sys.stderr)
    if s.outputs_failed:
        raise typer.Exit(EXIT_OUTPUTS_FAILED)


@app.command()
def watch(
    incoming: Path = typer.Argument(..., help="Folder the scanner or PACS drops films into."),
    out: Path = typer.Option(..., "--out", help="Results folder (results/, processed/, quarantine/, index)."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    batch: int = BATCH,
    threads: int = THREADS,
    once: bool = typer.Option(False, "--once", help="Process what is there, then exit (for cron); exit 75 on a "
                              "full disk or on steps that keep failing (the next run goes on)."),
    stable_seconds: float = typer.Option(2.0, "--stable-seconds", help="A file counts when unchanged this long."),
    rescan_seconds: float = typer.Option(30.0, "--rescan-seconds", help="Full rescan period (shares drop events)."),
    retention_days: int = typer.Option(30, "--retention-days", help="Keep processed inputs N days (0 = forever)."),
    archive_dir: Path = typer.Option(None, "--archive-dir", help="Move expired inputs here instead of deleting."),
    min_free_mb: float = typer.Option(500.0, "--min-free-mb", help="Pause intake below this free space."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Retries before an error is quarantined."),
    dicom_out: bool = typer.Option(True, "--dicom-out/--no-dicom-out", help="SC + SR for DICOM inputs."),
    refer_window: int = typer.Option(200, "--refer-window", help="Check the referral rate over the last N "
                                     "films and warn when it leaves --refer-range (0 = off)."),
    refer_min_films: int = typer.Option(50, "--refer-min-films", help="Films needed before the check speaks."),
    refer_range: tuple[float, float] = typer.Option((0.05, 0.95), "--refer-range",
                                                    help="Plausible referral rate, LOW HIGH."),
    strict_engine: bool = STRICT,
):
    """Watch INCOMING: score each film exactly once, crash-safe; SIGTERM drains and exits 0.

    Example: tbedge watch /incoming --out /results
    """
    from .services.watch import watch as run_watch

    raise typer.Exit(run_watch(incoming, out, engine, backend, batch, threads, once, stable_seconds, rescan_seconds,
                               retention_days or None, min_free_mb, max_attempts, archive_dir,
                               dicom_out=dicom_out, refer_window=refer_window, refer_min_films=refer_min_films,
                               refer_range=refer_range, strict_engine=strict_engine))


@app.command()
def segment(
    images: list[str] = typer.Argument(..., help="Image files, folders or globs."),
    out: Path = typer.Option(..., "--out", help="Output directory for masks and overlays."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    strict_engine: bool = STRICT,
):
    """Write the cleaned lung mask (input resolution) and a contour + box overlay per image.

    Example: tbedge segment xray.png --out seg/
    """
    from .services.screen import EXIT_OUTPUTS_FAILED
    from .services.segment import OUTPUT_FAILED, segment_files

    files, skipped = segment_files(images, out, engine, backend, strict_engine)
    line = f"{len(files)} images -> {out}"
    if skipped:  # reason codes only: file names may carry patient names
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        line += f"; skipped {sum(skipped.values())} ({reasons})"
    print(line)
    if skipped.get(OUTPUT_FAILED):
        raise typer.Exit(EXIT_OUTPUTS_FAILED)


@app.command()
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (docs/doctor.md)."),
    engine: Path = ENGINE,
    threads: int = THREADS,
    phantoms: int = typer.Option(20, "--phantoms", min=1, help="Synthetic films for the speed check."),
):
    """Check this host: CPU features, memory, disk, runtimes, each shipped bundle's self-test here,
    which bundle and precision `screen` will use, and its speed. Exits 1 when screening cannot work.

    Example: tbedge doctor --json
    """
    import json

    from .tools.doctor import doctor as run
    from .tools.doctor import render

    rep = run(phantoms, threads, engine, progress=None if json_out else
              (lambda m: console.print(m, markup=False, highlight=False)))
    print(json.dumps(rep, indent=1) if json_out else render(rep))
    if not rep["ok"]:
        raise typer.Exit(1)


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
):
    """Train the lung U-Net on the real masks (resumes from OUT when interrupted).

    Example: tbedge train lungs --data ../shared/data --out runs/lungs
    """
    from .train.lungs import train_lungs as run

    state = run(data, out, epochs=epochs, seed=seed, exclude_site=exclude_site, lr=lr, init=init, base=base,
                size=size)
    print(f"best val Dice {state['best']:.4f} at epoch {state['best_epoch'] + 1}; model {out / 'best.keras'}")


@app.command("check-plans")
def check_plans(bundle: Path = typer.Argument(..., help="Bundle directory with TensorRT plans.")):
    """Exit 0 when the bundle's TensorRT plans exist, verify and fit this host's TensorRT and GPU; 1 (rebuild)
    otherwise. The container entrypoint uses it to decide whether to rebuild the plans.

    Example: tbedge check-plans /engines/default
    """
    from .runtime.runners.tensorrt import plans_ok

    ok, why = plans_ok(bundle)
    print(("ok: " if ok else "rebuild: ") + why)
    raise typer.Exit(0 if ok else 1)


@app.command("build-engine")
def build_engine(
    model: Path = typer.Argument(None, help="fp32 bundle dir, or a dir with lungs.keras + classifier.keras."),
    default: bool = typer.Option(False, "--default", help="Build from the shipped models."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | int8"),
    target: str = typer.Option("cpu", "--target", help="cpu | tensorrt"),
    calibration: Path = typer.Option(None, "--calibration", help="Calibration set (tbedge calibration-set)."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    data: Path = DATA,
    threads: int = THREADS,
    allow_gate_failure: bool = typer.Option(False, "--allow-gate-failure",
                                            help="Keep a build that fails the accuracy gate (recorded)."),
):
    """Keras/ONNX -> fp32/fp16/int8 (+ TensorRT plans) in a verified bundle, with an accuracy gate.

    Example: tbedge build-engine --default --precision int8 --target cpu --out engines/int8
    """
    import json

    from .build.bundle_writer import build_engine as run

    if model is None and not default:
        raise UserError("give a MODEL or --default")
    summary = run(model, default, precision, target, calibration, out, data, threads, allow_gate_failure,
                  progress=lambda msg: console.print(msg, markup=False, highlight=False))
    print(json.dumps(summary, indent=1, default=str))


@app.command("set-threshold")
def set_threshold(
    results: Path = typer.Argument(..., help="results.jsonl from `tbedge screen` on your own films, or the "
                                   "RESULTS/results folder of `tbedge watch`."),
    labels: Path = typer.Argument(..., help="CSV: tb (1/0) and sha256 or sop_instance_uid (no patient IDs)."),
    engine: Path = ENGINE,
    out: Path = typer.Option(None, "--out", help="Bundle directory to write (a copy with the new threshold); "
                             "without it, only report how the current threshold does on these films."),
    sensitivity: float = typer.Option(0.90, "--sensitivity", help="Target sensitivity on your TB films."),
    report: Path = typer.Option(None, "--report", help="Also write local_threshold.json and roc.png here."),
):
    """Set the operating point on your own labelled films: a copy of the bundle with the threshold
    re-locked (the highest one reaching the target sensitivity). Report its accuracy on other films.

    Example: tbedge set-threshold local/results.jsonl local/labels.csv --out engines/site
    """
    import json

    from .build.local_threshold import set_local_threshold

    print(json.dumps(set_local_threshold(results, labels, engine, out, sensitivity, report_dir=report), indent=1))


@app.command("calibration-set")
def calibration_set(
    out: Path = typer.Option(..., "--out", help="Directory for the tensors and their manifest."),
    engine: Path = ENGINE,
    data: Path = DATA,
    classifier_size: int = typer.Option(224, "--classifier-size", help="Classifier input size."),
    per_stratum: int = typer.Option(16, "--per-stratum", help="Images per (site, class)."),
    threads: int = THREADS,
):
    """Pick representative real images (calib part only), preprocess them, store tensors + hash.

    Example: tbedge calibration-set --out calib/
    """
    import json

    from .build.bundle_writer import calibration_set as run

    print(json.dumps(run(engine, out, data, classifier_size, per_stratum, threads), indent=1, default=str))


@app.command()
def bench(
    images: list[str] = typer.Argument(None, help="Image folder(s) or files (default: synthetic phantoms)."),
    engine: list[Path] = typer.Option(None, "--engine", help="Bundle(s) to compare (repeatable)."),
    backend: str = BACKEND,
    precision: str = typer.Option(None, "--precision", help="e.g. int8, fp32,int8 or all (sibling bundles)."),
    batch: int = BATCH,
    threads: int = THREADS,
    duration: float = typer.Option(None, "--duration", help="Seconds per configuration and round."),
    iterations: int = typer.Option(None, "--iterations", help="Images per configuration and round."),
    warmup: int = typer.Option(16, "--warmup", help="Warm-up images."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds (medians are reported)."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the naive Keras baseline."),
    json_path: Path = typer.Option(None, "--json", help="Write the full report as JSON."),
):
    """Throughput and latency per stage, model-only speed, efficiency, peak RSS, vs a Keras baseline.

    Example: tbedge bench ../shared/data/shenzhen_montgomery_512/images --json out.json
    """
    from .tools.bench import bench as run
    from .tools.bench import print_report

    rep = run(images or None, engine or None, backend, precision, batch or 1, threads, duration, iterations, warmup,
              rounds, json_path, progress=lambda label: console.print(label, markup=False, highlight=False),
              baseline=not no_baseline)
    print_report(rep)


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
    from .train.crops import build_crop_cache

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
    from .train.orientation import train_orientation as run

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
):
    """Train a TB classifier (normal / TB / other) on lung crops; selection never sees test patients.

    Example: tbedge train classifier --arch resnet_s --data runs/crops/main_224.npz --out runs/cls/r0
    """
    from .train.classifier import Experimental, TrainConfig
    from .train.classifier import train_classifier as run

    rejected = Experimental(nih_normal_weight=nih_normal_weight, nih_not_tb=nih_not_tb,
                            nih_aug_strength=nih_aug_strength, nih_adversary=nih_adversary,
                            average_from=average_from, mixup_alpha=mixup)
    config = TrainConfig(seed=seed, epochs=epochs, budget_minutes=budget_minutes, fold=fold, patience=patience,
                         prep=prep, size=size, aug_strength=aug_strength, nih_weight=nih_weight,
                         lung_power=lung_power, train_fraction=train_fraction, sets=sets, film_look_p=film_look,
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

    from .train.threshold import write_threshold

    print(json.dumps(write_threshold(predictions, output, sensitivity, reference, target_val), indent=1))


eval_app = typer.Typer(help="Evaluate models on real data (needs the build extra).", no_args_is_help=True)
app.add_typer(eval_app, name="evaluate")


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

    from .train.lungs import lungs_report

    rep = lungs_report(model, data, onnx, exclude_site, by_batch=by_batch)
    text = json.dumps(rep, indent=1)
    if output:
        from .fsio import atomic_write_text

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

    from .train.classifier import evaluate_classifier as run

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

    from .fsio import atomic_write_text
    from .train.shortcut_audit import audit_folder, summary_lines

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

    from .train.cam_check import cam_hit_rate

    print(json.dumps(cam_hit_rate(data, engine, part), indent=1))


# OS errors about the paths a user gave are theirs to fix too.
USER_ERRORS: tuple = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, TbedgeError)


def main(argv: list[str] | None = None) -> int:
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):  # usage errors: typer's own text
            e.show()
            return getattr(e, "exit_code", 2)
        if _state["verbose"]:
            console.print_exception()
        if isinstance(e, USER_ERRORS):
            msg = e.one_line() if isinstance(e, TbedgeError) else " ".join(str(e).split())
            console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
            return getattr(e, "exit_code", 2)
        console.print(f"error: {type(e).__name__}: {e} (run with --verbose for details)", markup=False,
                      highlight=False)
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
