"""The commands for a Triton Inference Server hub: export-triton, check-triton (docs/triton.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import ENGINE, UserError, app


@app.command("export-triton")
def export_triton(
    bundle: Path = typer.Argument(..., help="Bundle directory to serve (e.g. tbedge/models/fp32)."),
    out: Path = typer.Option(..., "--out", help="Model repository to write (replaced when it is an earlier export)."),
    fmt: str = typer.Option("auto", "--format", help="auto | onnx | plan (auto: the TensorRT plans when the "
                            "bundle has them)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | gpu: the instance groups' kind (auto: gpu "
                               "for plans, cpu for ONNX)."),
    instances: int = typer.Option(1, "--instances", min=1, help="Model instances per group."),
    max_batch: int = typer.Option(None, "--max-batch", min=1, help="max_batch_size (default: the plans' profile "
                                  "maximum, else 32)."),
    max_queue_delay_us: int = typer.Option(1000, "--max-queue-delay-us", min=0,
                                           help="Dynamic batching: longest wait to fill a batch."),
    version: int = typer.Option(1, "--version", min=1, help="Model version directory."),
):
    """Write a Triton model repository (tbedge_lungs, tbedge_classifier) from a bundle.

    Example: tbedge export-triton tbedge/models/fp32 --out /srv/triton/models --device gpu
    """
    from ..build.triton_export import export_triton as run

    print(json.dumps(run(bundle, out, fmt, device, instances, max_batch, max_queue_delay_us, version), indent=1))


@app.command("check-triton")
def check_triton(
    repo: Path = typer.Argument(..., help="Model repository written by export-triton."),
    engine: Path = ENGINE,
):
    """Schema-level check of a model repository: configs parse as Triton's ModelConfig; names, dims and
    dtypes match the ONNX graphs; files match their hashes. --engine: the bundle (needed for plans).

    Example: tbedge check-triton /srv/triton/models
    """
    from ..build.triton_export import check_repository

    problems = check_repository(repo, engine)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {repo}: " + "; ".join(problems))
    print(f"ok: {repo}")
