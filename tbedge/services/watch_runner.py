"""The folder service's loop (:class:`Watcher`), shared by ``tbedge watch`` and ``tbedge listen``.

``tbedge watch INCOMING --out RESULTS``: a crash-safe folder service.

Files dropped into INCOMING are scored once each; RESULTS gets::

  results/<SOP Instance UID or sha256>.json   one result per input (atomic: temp, fsync, rename)
  index.jsonl, index.csv                       one complete line per input (append + fsync)
  processed/<YYYY-MM-DD>/...                   scored inputs (kept ``retention_days``, then deleted
                                               or moved to ``archive_dir``)
  quarantine/<reason>/...                      rejected inputs and inputs that kept failing
  quarantine/unfinished/<id>_<sha[:12]>.ext    scored inputs whose move kept failing (the queue goes on)
  dicom/<source SOP UID>_{sc,sr}.dcm           Secondary Capture + Structured Report (DICOM inputs)
  views/<sha256>_{heat,mask}.png               heat map (crop grid) and lung mask of each scored film (tbedge ui)
  logs/watch.log                               rotated; inputs named by journal id + sha256 prefix
  journal.sqlite                               the durable state machine (see journal.py)

A file counts once it is complete: its size and mtime stayed the same for ``stable_seconds``, or it
was renamed into place from a temporary name (``*.tmp``, ``*.part``, ``.name``...). Events come from
watchdog; a periodic rescan catches what network shares never report. ``kill -9`` at any moment is
safe: every step is recorded in the journal and idempotent. SIGTERM finishes the current batch and
exits 0. Logs never carry file names (they can hold patient names): inputs are ``#<id> <sha[:12]>``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import schema
from ..fsio import atomic_write_bytes, sha256_file, try_lock
from .journal import FINISHING_STATES, QUEUED_STATES, Journal
from .refer_rate import STATE_FILE, ReferRateCheck
from .watch_finish import Finishing
from .watch_intake import Intake
from .watch_store import (
    ENGINE_STATE_FILE,
    VIEWS_DIR,
    ResultsIndex,
    _is_disk_full,
    _tag,
    _Tracked,
    apply_retention,
    log,
)

LOG_MAX_BYTES = 10 * 2**20
LOG_BACKUPS = 10
RETENTION_EVERY_S = 3600.0
EX_TEMPFAIL = 75  # sysexits.h: "try again later"; what a --once run that gave up returns
REFER_SAVE_EVERY = 10  # counted films between writes of operating_point.json (also on a change and at close)


# -- the service ---------------------------------------------------------------------------------------------
@dataclass
class WatchConfig:
    incoming: Path
    out: Path
    engine: Path | None = None
    backend: str = "auto"
    batch: int = 0
    threads: int = 0
    once: bool = False
    stable_seconds: float = 2.0
    rescan_seconds: float = 30.0
    retention_days: int | None = 30
    archive_dir: Path | None = None
    processed_dir: Path | None = None
    min_free_mb: float = 500.0
    max_attempts: int = 3
    dicom_out: bool = True
    views: bool = True  # views/: heat map + lung mask per scored film, the layers `tbedge ui` draws
    use_events: bool = True
    pause_retry_seconds: float = 10.0  # while paused for space: how often to check again
    retry_seconds: float = 5.0  # after a failed step: how long to wait before the next
    once_failed_steps: int = 3  # with ``once``: this many failed steps in a row end the run (EX_TEMPFAIL)
    refer_window: int = 200  # referral-rate check over this many films (0 = off); refer_rate.py says why
    refer_min_films: int = 50
    refer_low: float = 0.05
    refer_high: float = 0.95
    strict_engine: bool = False  # refuse, rather than fall back to fp32, when the engine's self-test fails

    def __post_init__(self):
        self.incoming = Path(self.incoming)
        self.out = Path(self.out)
        self.processed_dir = Path(self.processed_dir) if self.processed_dir else self.out / "processed"
        self.archive_dir = Path(self.archive_dir) if self.archive_dir else None
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.once_failed_steps < 1:
            raise ValueError("once_failed_steps must be >= 1")
        if self.refer_window > 0:  # fail at start, not at the first film
            ReferRateCheck(self.refer_window, self.refer_min_films, self.refer_low, self.refer_high)


@dataclass
class WatchStats:
    registered: int = 0
    finished: int = 0
    status: dict = field(default_factory=dict)


class Watcher(Intake, Finishing):
    """The service loop. ``Watcher(cfg).run()`` returns the process exit code."""

    def __init__(self, cfg: WatchConfig, pipeline=None):
        self.cfg = cfg
        self.pipe = pipeline  # injected by tests; otherwise opened in run()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.tracked: dict[str, _Tracked] = {}
        self._events_lock = threading.Lock()
        self._event_paths: dict[str, bool] = {}  # path -> renamed from a temporary name
        self.paused = False
        self.stats = WatchStats()
        self.results_dir = cfg.out / "results"
        self.quarantine_dir = cfg.out / "quarantine"
        self.dicom_dir = cfg.out / "dicom"
        self.views_dir = cfg.out / VIEWS_DIR
        self.journal: Journal | None = None
        self.index: ResultsIndex | None = None
        self._last_retention = 0.0
        self._lock_fd: int | None = None
        self.refer: ReferRateCheck | None = None
        self._finish_failures: dict[int, int] = {}  # entry id -> failed tries of its file steps
        self._given_up: set[int] = set()  # entries not even quarantine could take (until the next start)

    # -- setup ------------------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        self._lock_fd = try_lock(self.cfg.out / ".watch.lock")
        if self._lock_fd is None:
            raise RuntimeError(f"another tbedge watch is already using {self.cfg.out}")

    def _open(self) -> None:
        for d in (self.cfg.out, self.results_dir, self.quarantine_dir, self.cfg.processed_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.cfg.incoming.is_dir():
            raise FileNotFoundError(f"INCOMING is not a folder: {self.cfg.incoming}")
        self._acquire_lock()
        self._remove_stale_temps()
        self.journal = Journal(self.cfg.out / "journal.sqlite")
        self.index = ResultsIndex(self.cfg.out)
        self._open_refer_check()

    def _open_refer_check(self) -> None:
        if self.cfg.refer_window <= 0:
            return
        path = self.cfg.out / STATE_FILE
        try:
            saved = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            saved = None  # unreadable: start a new window
        self.refer = ReferRateCheck.resume(saved, window=self.cfg.refer_window, min_films=self.cfg.refer_min_films,
                                           low=self.cfg.refer_low, high=self.cfg.refer_high)
        if self.refer.state in ("low", "high"):
            log.warning("operating point: %s", self.refer.message())

    def _check_refer_rate(self, result: dict) -> None:
        if self.refer is None:
            return
        changed = self.refer.add(result)
        # Saved on a change of state, every REFER_SAVE_EVERY counted films and at close: a crash
        # forgets at most a few films of a warning-only window, and the disk is not written per film.
        if changed or self.refer.unsaved >= REFER_SAVE_EVERY:
            self._save_refer_state()
        if changed in ("low", "high"):
            log.warning("operating point: %s", self.refer.message())
        elif changed == "ok":
            log.info("operating point: %s", self.refer.message())

    def _save_refer_state(self) -> None:
        if self.refer is None or not self.refer.unsaved:
            return
        try:
            atomic_write_bytes(self.cfg.out / STATE_FILE, (json.dumps(self.refer.to_dict(), indent=1) + "\n").encode())
            self.refer.unsaved = 0
        except OSError as e:  # the check must never stop scoring
            log.warning("operating point: state file not written (%s)", type(e).__name__)

    def _write_engine_state(self) -> None:
        """RESULTS/engine.json: which models score here, at what precision, and any fp32 fallback."""
        p = self.pipe
        fb = p.fallback
        state = {"bundle": str(p.bundle.path), "backend": p.backend,
                 "models": {r: m.__dict__ for r, m in p.models.items()},
                 "self_test_deviation": p.self_test_deviation,
                 "fallback": None if fb is None else {**fb.__dict__, "message": fb.message()},
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            atomic_write_bytes(self.cfg.out / ENGINE_STATE_FILE, (json.dumps(state, indent=1) + "\n").encode())
        except OSError as e:  # a health note must never stop scoring
            log.warning("engine state file not written (%s)", type(e).__name__)

    def _remove_stale_temps(self) -> None:
        """Temp files of atomic writes cut short by a crash (we hold the lock: nobody else writes here)."""
        for d in (self.results_dir, self.dicom_dir, self.views_dir):
            if d.is_dir():
                for p in d.iterdir():
                    if p.name.startswith(".") and ".tmp" in p.name:
                        p.unlink(missing_ok=True)

    def _close(self) -> None:
        self._save_refer_state()
        if self.journal:
            self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- scoring ----------------------------------------------------------------------------------------
    def _claim(self, rows) -> list:
        claimed = []
        for row in rows:
            src = Path(row["src"])
            try:
                st = src.stat()
            except FileNotFoundError:
                log.warning("%s: the input disappeared before scoring; dropped", _tag(row))
                self.journal.advance(row["id"], "vanished")
                continue
            fields = {"attempts": row["attempts"] + 1}
            if (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]) and row["size"] >= 0:
                # Rewritten after registration: score what is there now.
                fields.update(sha256=sha256_file(src), size=st.st_size, mtime_ns=st.st_mtime_ns)
            self.journal.advance(row["id"], "claimed", **fields)
            claimed.append(self.journal.get(row["id"]))
        return claimed

    def _give_up(self, row) -> None:
        """Too many attempts that never produced a result (each one crashed or was killed)."""
        stage = row["last_stage"] or "decode"
        res = schema.Result(input=row["src"], sha256=row["sha256"], status=schema.STATUS_ERROR,
                            reason=f"error_{stage}",
                            detail=f"no result after {row['attempts'] - 1} attempts (the process stopped)")
        self._record_scored(row, res)

    def _process_batch(self, rows) -> None:
        rows = self._claim(rows)
        to_score = []
        for row in rows:
            if row["attempts"] > self.cfg.max_attempts:
                self._give_up(row)
                continue
            first = self.journal.first_ok(row["sha256"], row["id"])
            if first is not None:  # identical content already scored: reuse it, do not rescore
                res = schema.Result.from_dict(json.loads(first["result_json"]))
                res.input, res.timing_ms, res.duplicate_of = row["src"], {}, None
                self._record_scored(row, res)
                continue
            to_score.append(row)
        if to_score:
            for row, s in zip(to_score, self.pipe.run([r["src"] for r in to_score]), strict=True):
                self._after_scoring(row, s)
        for row in rows:
            if self.journal.get(row["id"])["state"] in FINISHING_STATES:
                self._finish_safely(row["id"])

    def _after_scoring(self, row, s) -> None:
        r = s.result
        if r.status == schema.STATUS_ERROR:
            stage = (r.reason or "error_decode").removeprefix("error_")
            if row["attempts"] < self.cfg.max_attempts:
                log.warning("%s: %s (attempt %d of %d), will retry", _tag(row), r.reason, row["attempts"],
                            self.cfg.max_attempts)
                self.journal.advance(row["id"], "seen", last_stage=stage)
                return
        if r.sha256 and r.sha256 != row["sha256"]:
            log.warning("%s: the file changed while it was scored; scoring it again", _tag(row))
            self.journal.advance(row["id"], "seen", attempts=row["attempts"] - 1)
            return
        if self.cfg.dicom_out and r.status == schema.STATUS_OK and s.image is not None \
                and getattr(s.image, "dataset", None) is not None:
            r.outputs = self._write_dicom(row, s)
        if self.cfg.views and r.status == schema.STATUS_OK and s.cam is not None and s.lungs is not None:
            r.outputs = (r.outputs or []) + self._write_views(row, s)
        self._record_scored(row, r)

    def _write_views(self, row, s) -> list[dict]:
        """views/<sha256>_heat.png and _mask.png, before "scored" is committed (like the DICOM outputs): the
        layers a viewer draws over the film. Named by content, so a duplicate's result (a copy of the first
        one's) names the same files. A failure is recorded on the result and never loses the score."""
        from ..outputs.files import heat_png, native_mask, write_png

        records = []
        for kind, make in (("heat", heat_png), ("mask", native_mask)):
            p = self.views_dir / f"{row['sha256']}_{kind}.png"
            error = None
            try:
                write_png(p, make(s))
            except Exception as e:  # noqa: BLE001 - a view output failure must not lose the score
                if _is_disk_full(e):
                    raise
                error = type(e).__name__
                log.warning("%s: %s view output failed (%s)", _tag(row), kind, error)
            records.append({"kind": kind, "path": p.relative_to(self.cfg.out).as_posix(), "error": error})
        return records

    def _write_dicom(self, row, s) -> list[dict]:
        """SC + SR, before "scored" is committed (after a crash the entry is rescored and these rewritten);
        the result records them, a failed one with its error type."""
        from ..outputs.dicom import dicom_output_paths, write_dicom_outputs

        error = None
        try:
            write_dicom_outputs(s, self.dicom_dir)
        except Exception as e:  # noqa: BLE001 - a DICOM output failure must not lose the score
            if _is_disk_full(e):
                raise
            error = type(e).__name__
            log.warning("%s: DICOM SC/SR output failed (%s)", _tag(row), error)
        paths = dicom_output_paths(s, self.dicom_dir)
        if error is None:
            self._dicom_written(row, paths)
        return [{"kind": k, "path": p.relative_to(self.cfg.out).as_posix(), "error": error}
                for k, p in zip(("dicom_sc", "dicom_sr"), paths, strict=True)]

    def _dicom_written(self, row, paths: list[Path]) -> None:
        """Called once the SC and SR are on disk, before "scored" is committed (``listen`` queues them)."""

    # -- main loop --------------------------------------------------------------------------------------
    def _maybe_retention(self, now: float) -> None:
        if now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        try:
            days = apply_retention(self.cfg.processed_dir, self.cfg.retention_days, self.cfg.archive_dir)
        except OSError as e:
            log.warning("retention failed (%s); will try again", type(e).__name__)
            return
        if days:
            verb = "archived" if self.cfg.archive_dir else "deleted"
            log.info("retention: %s processed inputs of %d day(s) older than %d days", verb, len(days),
                     self.cfg.retention_days)

    def _step(self) -> bool:
        """One round of work; True when something was done."""
        now = time.monotonic()
        self._maybe_retention(time.time())
        if not self._space_ok():
            return False
        try:
            self._finish_pending()
            if self._rescan_due(now):
                self._scan(now)
            self._register_ready(now)
            rows = self.journal.in_states(QUEUED_STATES, limit=self.pipe.batch if self.pipe else max(1, self.cfg.batch))
            if rows:
                self._process_batch(rows)
            self._resume()
            self.failed_steps = 0
            return bool(rows)
        except Exception as e:  # noqa: BLE001 - the service outlives any one failure
            if _is_disk_full(e):
                self._pause(f"no space left writing results ({type(e).__name__})")
            else:
                self.failed_steps += 1
                # Type and errno only: exception texts carry file names, which can hold patient names.
                log.error("step failed (%s errno=%s); retrying in %g s", type(e).__name__,
                          getattr(e, "errno", None), self.cfg.retry_seconds)
                self.stop.wait(self.cfg.retry_seconds)
        return False

    failed_steps = 0  # failed steps in a row

    def _once_gives_up(self) -> str | None:
        """With ``once`` (cron), why this run should end now rather than wait: a service waits out a full
        disk or a failure that repeats, a cron run that never ends would pile up behind the lock. Nothing
        is lost either way: the journal keeps every unfinished step for the next run."""
        if self.paused:
            return "intake is paused (results filesystem full)"
        if self.failed_steps >= self.cfg.once_failed_steps:
            return f"{self.failed_steps} steps in a row failed"
        return None

    _last_scan = -1e18

    def _rescan_due(self, now: float) -> bool:
        if self.cfg.once or now - self._last_scan >= self.cfg.rescan_seconds:
            self._last_scan = now
            return True
        return False

    def _idle(self) -> bool:
        return not self.tracked and self.journal.count(QUEUED_STATES + FINISHING_STATES) <= len(self._given_up)

    def run(self) -> int:
        self._open()
        obs = None
        opened_here = self.pipe is None
        try:
            if opened_here:
                from ..runtime.pipeline import Pipeline

                self.pipe = Pipeline(self.cfg.engine, backend=self.cfg.backend, batch=self.cfg.batch,
                                     threads=self.cfg.threads, strict_engine=self.cfg.strict_engine).__enter__()
            self._write_engine_state()
            obs = self._start_observer()
            pending = self.journal.count(QUEUED_STATES + FINISHING_STATES)
            log.info("watching (%s backend, batch %d, %d unfinished entries from before)",
                     self.pipe.backend, self.pipe.batch, pending)
            tick = max(0.05, min(self.cfg.stable_seconds / 2, self.cfg.rescan_seconds, 1.0))
            while not self.stop.is_set():
                worked = self._step()
                if self.cfg.once and (why := self._once_gives_up()):
                    log.error("--once: %s; exiting with %d, the next run goes on from the journal", why,
                              EX_TEMPFAIL)
                    return EX_TEMPFAIL
                # Done only after a step that succeeded: a failed scan also finds nothing to do.
                if self.cfg.once and not worked and not self.failed_steps and self._idle():
                    break
                if not worked:
                    self.wake.wait(tick if not self.paused else max(tick, self.cfg.pause_retry_seconds))
                    self.wake.clear()
            log.info("stopped: %d inputs finished this run", self.stats.finished)
            return 0
        finally:
            if obs is not None:
                obs.stop()
                obs.join(timeout=5)
            if opened_here and self.pipe is not None:
                self.pipe.__exit__(None, None, None)
            self._close()


def setup_logging(out: Path, name: str = "watch.log") -> list[logging.Handler]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.handlers.RotatingFileHandler(out / "logs" / name, maxBytes=LOG_MAX_BYTES,
                                              backupCount=LOG_BACKUPS, encoding="utf-8")
    fh.setFormatter(fmt)
    logger = logging.getLogger("tbedge")
    logger.addHandler(fh)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return [fh]


def serve(w: Watcher, log_name: str = "watch.log", install_signal_handlers: bool = True) -> int:
    """Run ``w`` with its log file until SIGTERM/SIGINT (which finish the current batch first)."""
    handlers = setup_logging(w.cfg.out, log_name)
    old = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        def _on_signal(signum, _frame):
            log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
            w.stop.set()
            w.wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, _on_signal)
    try:
        return w.run()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for h in handlers:
            logging.getLogger("tbedge").removeHandler(h)
            h.close()
