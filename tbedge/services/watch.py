"""``tbedge watch INCOMING --out RESULTS``: a crash-safe folder service (the loop is in watch_runner.py).

See docs/watch.md for what lands where under RESULTS and how the service behaves.
"""

from __future__ import annotations

from pathlib import Path

from .watch_runner import (  # noqa: F401 - the service's public names
    EX_TEMPFAIL,
    WatchConfig,
    Watcher,
    WatchStats,
    serve,
)


def watch(incoming: str | Path, out: str | Path, engine: str | Path | None = None, backend: str = "auto",
          batch: int = 0, threads: int = 0, once: bool = False, stable_seconds: float = 2.0,
          rescan_seconds: float = 30.0, retention_days: int | None = 30, min_free_mb: float = 500.0,
          max_attempts: int = 3, archive_dir: str | Path | None = None,
          processed_dir: str | Path | None = None, dicom_out: bool = True,
          install_signal_handlers: bool = True, refer_window: int = 200, refer_min_films: int = 50,
          refer_range: tuple[float, float] = (0.05, 0.95), strict_engine: bool = False, views: bool = True) -> int:
    """Run the folder service until SIGTERM/SIGINT (or, with ``once``, until INCOMING is empty).

    Returns the exit code: 0 after a clean stop; with ``once``, EX_TEMPFAIL (75) when the run gave up on a
    full disk or on steps that kept failing. SIGTERM and SIGINT finish the current batch first.
    """
    cfg = WatchConfig(incoming=Path(incoming), out=Path(out), engine=Path(engine) if engine else None,
                      backend=backend, batch=batch, threads=threads, once=once, stable_seconds=stable_seconds,
                      rescan_seconds=rescan_seconds, retention_days=retention_days, archive_dir=archive_dir,
                      processed_dir=processed_dir, min_free_mb=min_free_mb, max_attempts=max_attempts,
                      dicom_out=dicom_out, refer_window=refer_window, refer_min_films=refer_min_films,
                      refer_low=refer_range[0], refer_high=refer_range[1], strict_engine=strict_engine,
                      views=views)
    return serve(Watcher(cfg), "watch.log", install_signal_handlers)
