"""The commands that make and tune bundles: build-engine, set-threshold, calibration-set."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    DATA,
    ENGINE,
    THREADS,
    UserError,
    app,
    console,
)


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

    from ..build.bundle_writer import build_engine as run

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

    from ..build.local_threshold import set_local_threshold

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

    from ..build.bundle_writer import calibration_set as run

    print(json.dumps(run(engine, out, data, classifier_size, per_stratum, threads), indent=1, default=str))
