"""``tbedge screen``: score files, folders (recursive) or globs; one JSON line per input."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import schema
from ..fsio import sha256_file
from ..inputs import expand_inputs, input_key
from ..outputs.files import JsonlWriter, native_mask, output_stem, relative_name, render_overlay, write_png
from ..runtime.pipeline import Pipeline
from .refer_rate import ReferRateCheck

log = logging.getLogger("tbedge.screen")
# The exit code of a run whose every input has its line but some output files failed (README).
EXIT_OUTPUTS_FAILED = 3
def _sha(p: Path) -> str | None:
    try:
        return sha256_file(p)
    except OSError:
        return None


def resume_split(files: list[Path], prior: list[dict]) -> tuple[list[Path], set[int]]:
    """(inputs still to score, indexes of stale prior lines) for ``--resume``.

    A prior line covers an input with the same resolved path and content hash (paths as given differ
    between runs: relative, absolute, another folder); one whose file changed since is stale and scored
    again. A prior line no input matches by path (a run from another working folder) covers one input
    with its content hash."""
    by_path = {input_key(Path(r["input"])): i for i, r in enumerate(prior)}
    todo, stale, used = [], set(), set()
    for f in files:
        i = by_path.get(input_key(f))
        if i is not None and (prior[i].get("sha256") is None or prior[i]["sha256"] == _sha(f)):
            used.add(i)
            continue
        if i is not None:
            stale.add(i)
        todo.append(f)
    orphans: dict[str, list[int]] = {}
    for i, r in enumerate(prior):
        if i not in used and i not in stale and r.get("sha256"):
            orphans.setdefault(r["sha256"], []).append(i)
    if not orphans:
        return todo, stale
    left = []
    for f in todo:
        match = orphans.get(_sha(f) or "")
        if match:
            match.pop()
        else:
            left.append(f)
    return left, stale


@dataclass
class ScreenSummary:
    total: int = 0
    status: Counter = field(default_factory=Counter)
    triage: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    refer: ReferRateCheck = field(default_factory=ReferRateCheck)  # over the films the threshold decided
    resumed: int = 0  # results kept from an interrupted run (--resume), not scored again
    outputs_failed: int = 0  # overlay / mask / DICOM files that could not be written (named on their lines)

    def add(self, r: dict) -> None:
        self.status[r["status"]] += 1
        self.outputs_failed += sum(o["error"] is not None for o in r.get("outputs") or [])
        if r.get("triage"):
            self.triage[r["triage"]] += 1
        if r.get("reason"):
            self.reasons[r["reason"]] += 1
        self.refer.add(r)


def _planned_outputs(s, stem: Path, overlays: Path | None, masks: Path | None,
                     dicom_out: Path | None) -> list[tuple[tuple[str, ...], list[Path], Callable[[], object]]]:
    """(kinds, paths, write) for each output asked for: the paths are known before anything is built,
    so a failed output is still named on the result line."""
    plan = []
    if overlays:
        p = overlays / f"{stem}_overlay.png"
        plan.append((("overlay",), [p], lambda: write_png(p, render_overlay(s))))
    if masks:
        q = masks / f"{stem}_mask.png"
        plan.append((("mask",), [q], lambda: write_png(q, native_mask(s))))
    if dicom_out and s.image is not None and s.image.dataset is not None:
        from ..outputs.dicom import dicom_output_paths, write_dicom_outputs

        plan.append((("dicom_sc", "dicom_sr"), dicom_output_paths(s, dicom_out),
                     lambda: write_dicom_outputs(s, dicom_out)))
    return plan


def write_extras(s, rel: Path, overlays: Path | None, masks: Path | None,
                 dicom_out: Path | None) -> list[dict] | None:
    """Write the outputs asked for; returns their records for ``Result.outputs`` (None: none asked).
    A failure is recorded and logged by content hash, and never loses the score."""
    if s.result.status != schema.STATUS_OK:
        return None
    records = []
    for kinds, paths, write in _planned_outputs(s, output_stem(rel, s.result.sha256), overlays, masks, dicom_out):
        error = None
        try:
            write()
        except Exception as e:  # noqa: BLE001 - an output failure must not lose the score
            error = type(e).__name__  # the type only: messages carry paths, and paths patient names
            log.warning("%s output failed for input %s: %s", "+".join(kinds), (s.result.sha256 or "?")[:12], error)
        records += [{"kind": k, "path": str(p), "error": error} for k, p in zip(kinds, paths, strict=True)]
    return records or None


def screen(inputs: list[str | Path], output: Path, engine: Path | None = None, backend: str = "auto",
           batch: int = 0, threads: int = 0, overlays: Path | None = None, masks: Path | None = None,
           dicom_out: Path | None = None, progress=None, refer_min_films: int = 50,
           resume: bool = False, strict_engine: bool = False) -> ScreenSummary:
    """Score ``inputs`` into ``output``. With ``resume``, an interrupted run's results (``output``.partial)
    are kept and their inputs (same resolved path and content, :func:`resume_split`) are not scored again."""
    files, roots = expand_inputs(inputs)
    if not files:
        raise FileNotFoundError("no input files found")
    summary = ScreenSummary(total=len(files), refer=ReferRateCheck(window=max(len(files), refer_min_films),
                                                                   min_films=refer_min_films))
    # The writer first: a stale .partial is refused before any model loads.
    with JsonlWriter(output, resume=resume) as out, \
            Pipeline(engine, backend=backend, batch=batch, threads=threads, strict_engine=strict_engine) as pipe:
        todo, stale = resume_split(files, out.prior)
        out.drop_prior(stale)
        for r in out.prior:
            summary.add(r)
        summary.resumed = len(files) - len(todo)
        for _ in range(summary.resumed if progress else 0):
            progress(None)
        for s in pipe.run(todo):
            s.result.outputs = write_extras(s, relative_name(Path(s.result.input), roots), overlays, masks,
                                            dicom_out)
            out.write(s.result.to_json())
            summary.add(s.result.to_dict())
            if progress:
                progress(s)
    return summary
