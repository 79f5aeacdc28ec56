"""What every command module shares: the typer apps, the console, the option definitions."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from .. import __version__
from ..errors import TbedgeError

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
    if value not in ("auto", "onnxruntime", "tensorrt", "triton"):
        raise typer.BadParameter(f"unknown backend {value!r}; choose auto, onnxruntime, tensorrt or triton")
    return value


BACKEND = typer.Option("auto", "--backend", callback=_backend,
                       help="auto | onnxruntime | tensorrt | triton (a Triton server: --server).")
SERVER = typer.Option(None, "--server", envvar="TBEDGE_TRITON_SERVER",
                      help="Triton server for --backend triton, grpc://HOST:PORT (docs/triton.md).")


def backend_arg(backend: str, server: str | None) -> str:
    """``--backend`` and ``--server`` as the one backend value the services pass to the pipeline."""
    from ..runtime.pipeline import join_backend

    return join_backend(backend, server)
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


eval_app = typer.Typer(help="Evaluate models on real data (needs the build extra).", no_args_is_help=True)
app.add_typer(eval_app, name="evaluate")
