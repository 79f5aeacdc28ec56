"""A small, resumable epoch loop shared by the trainers: rich progress, checkpoint every epoch,
``state.json`` + ``log.csv`` so a killed run continues where it stopped."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..fsio import atomic_path, atomic_write_text


def save_model(model, path: Path) -> None:
    """Save a Keras model atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def run_epochs(model, out: Path, epochs: int, batches: Callable[[int], Iterator[tuple]],
               steps: int, evaluate: Callable[[object], dict], monitor: str, patience: int = 0,
               log: Callable[[str], None] = print, custom_objects: dict | None = None,
               best_of: Callable[[object], object] | None = None) -> dict:
    """Train ``model`` for up to ``epochs``, resuming from ``out/last.keras`` when present.

    ``batches(epoch)`` yields (x, y[, sample_weight]) for one epoch (seeded by epoch, so resume
    is reproducible); ``evaluate(model)`` returns metrics; the best ``monitor`` value (higher is
    better) is kept as ``best.keras`` (``best_of(model)`` when given: e.g. without training-only
    heads; ``last.keras`` always holds the whole model, for a resume). Early stopping after
    ``patience`` epochs without progress.
    """
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out.mkdir(parents=True, exist_ok=True)
    state_path, last, best = out / "state.json", out / "last.keras", out / "best.keras"
    state = {"epoch": -1, "best": -np.inf, "best_epoch": -1, "history": []}
    if state_path.exists() and last.exists():
        state = json.loads(state_path.read_text())
        model = keras.models.load_model(last, custom_objects=custom_objects)
        log(f"resuming after epoch {state['epoch'] + 1} (best {monitor}={state['best']:.4f})")
    start = state["epoch"] + 1
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False) as prog:
        for epoch in range(start, epochs):
            if patience and epoch - state["best_epoch"] > patience:
                log(f"early stop at epoch {epoch}: no progress in {monitor} for {patience} epochs")
                break
            task = prog.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")
            t0, losses = time.time(), []
            for batch in batches(epoch):
                loss = model.train_on_batch(*batch)
                losses.append(float(np.asarray(loss).ravel()[0]))
                prog.update(task, advance=1, info=f"loss {np.mean(losses):.4f}")
            metrics = evaluate(model)
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1),
                   **{k: float(v) for k, v in metrics.items()}}
            state["history"].append(row)
            prog.update(task, info=" ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
            if row[monitor] > state["best"]:
                state["best"], state["best_epoch"] = row[monitor], epoch
                save_model(best_of(model) if best_of else model, best)
            save_model(model, last)
            state["epoch"] = epoch
            atomic_write_text(state_path, json.dumps(state, indent=1))
            with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(state["history"][0]))
                w.writeheader()
                w.writerows(state["history"])
    return state
