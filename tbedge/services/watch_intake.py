"""``tbedge watch``'s intake: file-system events and rescans, stable-file detection, and pausing when the
disk runs short. A mixin of :class:`~tbedge.services.watch.Watcher` (it uses the watcher's state)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from ..fsio import sha256_file
from .watch_store import TEMP_PREFIXES, _Tracked, is_temp_name, log


class _StopRaceFilter(logging.Filter):
    """watchdog logs an ERROR when an inotify event reaches an emitter that is stopping, which happened at
    clean SIGTERM stops; nothing is lost then (the rescan finds every file), so the record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


_STOP_RACE_FILTER = _StopRaceFilter()


class Intake:
    # -- discovery ----------------------------------------------------------------------------------------
    def on_event(self, path: str, from_temp: bool) -> None:
        with self._events_lock:
            self._event_paths[path] = self._event_paths.get(path, False) or from_temp
        self.wake.set()

    def _start_observer(self):
        if not self.cfg.use_events or self.cfg.once:
            return None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: relying on the periodic rescan only")
            return None
        watcher = self
        logging.getLogger("watchdog.observers.inotify").addFilter(_STOP_RACE_FILTER)  # once: a set

        class Handler(FileSystemEventHandler):
            def on_created(self, event):
                if not event.is_directory:
                    watcher.on_event(event.src_path, False)

            def on_modified(self, event):
                if not event.is_directory:
                    watcher.on_event(event.src_path, False)

            def on_closed(self, event):
                if not event.is_directory:
                    watcher.on_event(event.src_path, False)

            def on_moved(self, event):
                if not event.is_directory:
                    watcher.on_event(event.dest_path, is_temp_name(Path(event.src_path)))

        obs = Observer()
        obs.schedule(Handler(), str(self.cfg.incoming), recursive=True)
        obs.daemon = True
        obs.start()
        return obs

    def _observe(self, p: Path, now: float, from_temp: bool = False) -> None:
        key = str(p)
        try:
            st = p.stat()
        except OSError:
            self.tracked.pop(key, None)
            return
        t = self.tracked.get(key)
        if t is None or (t.size, t.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.tracked[key] = _Tracked(st.st_size, st.st_mtime_ns, now, from_temp)
        elif from_temp:
            t.ready = True

    def _scan(self, now: float) -> None:
        """Full walk of INCOMING (the rescan: network shares drop events)."""
        for dirpath, dirnames, filenames in os.walk(self.cfg.incoming):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(TEMP_PREFIXES))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if not is_temp_name(p) and p.is_file():
                    self._observe(p, now)

    def _register_ready(self, now: float) -> int:
        """Journal every tracked file that is complete; returns how many were registered."""
        with self._events_lock:
            events, self._event_paths = self._event_paths, {}
        for path, from_temp in events.items():
            p = Path(path)
            if not is_temp_name(p) and p.is_file():
                self._observe(p, now, from_temp)
        open_srcs = self.journal.open_srcs()
        n = 0
        for key in sorted(self.tracked):
            t = self.tracked[key]
            if key in open_srcs:
                del self.tracked[key]
                continue
            if not (t.ready or now - t.since >= self.cfg.stable_seconds):
                continue
            p = Path(key)
            try:
                sha = sha256_file(p)
                st = p.stat()
            except FileNotFoundError:
                del self.tracked[key]
                continue
            except OSError as e:  # unreadable: register it anyway so it is quarantined, not retried forever
                log.warning("cannot read an incoming file (%s); it will be quarantined", type(e).__name__)
                sha, st = hashlib.sha256(key.encode()).hexdigest(), None
            if st is not None and (st.st_size, st.st_mtime_ns) != (t.size, t.mtime_ns):
                self.tracked[key] = _Tracked(st.st_size, st.st_mtime_ns, now)  # still being written
                continue
            rel = p.relative_to(self.cfg.incoming).as_posix()
            eid = self.journal.add(sha, key, rel, st.st_size if st else -1, st.st_mtime_ns if st else -1)
            log.debug("registered #%d %s", eid, sha[:12])
            del self.tracked[key]
            n += 1
        self.stats.registered += n
        return n

    # -- disk space -----------------------------------------------------------------------------------
    def _free_mb(self) -> float:
        return shutil.disk_usage(self.cfg.out).free / 2**20

    def _space_ok(self) -> bool:
        free = self._free_mb()
        if free < self.cfg.min_free_mb:
            self._pause(f"{free:.0f} MB free on the results filesystem, below the "
                        f"{self.cfg.min_free_mb:.0f} MB minimum")
            return False
        return True

    def _pause(self, why: str) -> None:
        """One log line per pause, however many retries fail while it lasts."""
        if not self.paused:
            log.error("intake paused: %s; resuming when space returns", why)
            self.paused = True

    def _resume(self) -> None:
        if self.paused:
            log.warning("intake resumed: %.0f MB free", self._free_mb())
            self.paused = False
