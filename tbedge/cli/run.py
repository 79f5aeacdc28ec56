"""The commands that score films and check a host: screen, watch, segment, doctor, check-plans, bench."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .common import (
    BACKEND,
    BATCH,
    ENGINE,
    SERVER,
    STRICT,
    THREADS,
    _progress,
    app,
    backend_arg,
    console,
)


@app.command()
def screen(
    paths: list[str] = typer.Argument(..., help="Files, folders (recursive) or globs."),
    output: Path = typer.Option(..., "--output", "-o", help="Results file (JSON lines, one per input)."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    server: str = SERVER,
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
    from ..inputs import expand_inputs
    from ..services.screen import EXIT_OUTPUTS_FAILED
    from ..services.screen import screen as run_screen

    spec = backend_arg(backend, server)
    files, _ = expand_inputs(paths)
    prog, tick = _progress(len(files), "screening")
    with prog:
        s = run_screen(paths, output, engine, spec, batch, threads, overlays, masks,
                       dicom_out, tick, resume=resume, strict_engine=strict_engine)
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
    server: str = SERVER,
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
    views: bool = typer.Option(True, "--views/--no-views", help="views/: heat map and lung mask of each scored "
                               "film, for `tbedge ui`."),
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
    from ..services.watch import watch as run_watch

    raise typer.Exit(run_watch(incoming, out, engine, backend_arg(backend, server), batch, threads, once,
                               stable_seconds, rescan_seconds, retention_days or None, min_free_mb, max_attempts,
                               archive_dir,
                               dicom_out=dicom_out, refer_window=refer_window, refer_min_films=refer_min_films,
                               refer_range=refer_range, strict_engine=strict_engine, views=views))


@app.command()
def segment(
    images: list[str] = typer.Argument(..., help="Image files, folders or globs."),
    out: Path = typer.Option(..., "--out", help="Output directory for masks and overlays."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    server: str = SERVER,
    strict_engine: bool = STRICT,
):
    """Write the cleaned lung mask (input resolution) and a contour + box overlay per image.

    Example: tbedge segment xray.png --out seg/
    """
    from ..services.screen import EXIT_OUTPUTS_FAILED
    from ..services.segment import OUTPUT_FAILED, segment_files

    files, skipped = segment_files(images, out, engine, backend_arg(backend, server), strict_engine)
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

    from ..tools.doctor import doctor as run
    from ..tools.doctor import render

    rep = run(phantoms, threads, engine, progress=None if json_out else
              (lambda m: console.print(m, markup=False, highlight=False)))
    print(json.dumps(rep, indent=1) if json_out else render(rep))
    if not rep["ok"]:
        raise typer.Exit(1)


@app.command("check-plans")
def check_plans(bundle: Path = typer.Argument(..., help="Bundle directory with TensorRT plans.")):
    """Exit 0 when the bundle's TensorRT plans exist, verify and fit this host's TensorRT and GPU; 1 (rebuild)
    otherwise. The container entrypoint uses it to decide whether to rebuild the plans.

    Example: tbedge check-plans /engines/default
    """
    from ..runtime.runners.tensorrt import plans_ok

    ok, why = plans_ok(bundle)
    print(("ok: " if ok else "rebuild: ") + why)
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    images: list[str] = typer.Argument(None, help="Image folder(s) or files (default: synthetic phantoms)."),
    engine: list[Path] = typer.Option(None, "--engine", help="Bundle(s) to compare (repeatable)."),
    backend: str = BACKEND,
    server: str = SERVER,
    precision: str = typer.Option(None, "--precision", help="e.g. int8, fp32,int8 or all (sibling bundles)."),
    batch: int = BATCH,
    threads: int = THREADS,
    duration: float = typer.Option(None, "--duration", help="Seconds per configuration and round."),
    iterations: int = typer.Option(None, "--iterations", help="Images per configuration and round."),
    warmup: int = typer.Option(16, "--warmup", help="Warm-up images."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds (medians are reported)."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the naive Keras baseline."),
    json_path: Path = typer.Option(None, "--json", help="Write the full report as JSON."),
    clients: str = typer.Option("1,4,8", "--clients", help="--backend triton: concurrent client counts."),
):
    """Throughput and latency per stage, model-only speed, efficiency, peak RSS, vs a Keras baseline.
    With --backend triton: 1, 4 and 8 concurrent clients against the server (docs/triton.md).

    Example: tbedge bench ../shared/data/shenzhen_montgomery_512/images --json out.json
    """
    from ..tools.bench import bench as run
    from ..tools.bench import print_report

    spec = backend_arg(backend, server)  # refuses --server without --backend triton
    if backend == "triton":
        from ..tools.bench_triton import bench_clients, render

        try:
            counts = [int(c) for c in clients.split(",") if c.strip()]
        except ValueError as e:
            raise typer.BadParameter(f"--clients {clients!r}: give counts like 1,4,8") from e
        rep = bench_clients(images or None, engine[0] if engine else None, spec, counts,
                            batch or 8, threads, duration or 10.0, warmup, json_path,
                            progress=lambda label: console.print(label, markup=False, highlight=False))
        print(render(rep))
        return
    rep = run(images or None, engine or None, backend, precision, batch or 1, threads, duration, iterations, warmup,
              rounds, json_path, progress=lambda label: console.print(label, markup=False, highlight=False),
              baseline=not no_baseline)
    print_report(rep)
