"""A durable outbox of DICOM objects to send to one node by C-STORE, with retries and backoff.

``RESULTS/outbox.sqlite`` holds one row per file (path relative to RESULTS). A row is added before the
scored entry is committed (so a crash can only add it twice, which the primary key absorbs) and marked
sent only after the receiver answered Success. A node that is down, refuses or times out costs a retry
after ``base * 2**attempts`` seconds (at most ``max_backoff``); nothing is dropped. A row sent twice after
a crash carries the same UIDs, which a PACS files as one instance.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import TbedgeError

log = logging.getLogger("tbedge.listen")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    path TEXT PRIMARY KEY,          -- relative to RESULTS
    added REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    sent REAL,                      -- NULL until the node answered Success
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sent, next_try);
"""

# What the SCU proposes: the objects dicom_out writes (RGB Secondary Capture, Comprehensive SR).
SEND_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33")
SEND_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AE``."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2] or len(parts[2]) > 16:
            raise TbedgeError(f"--send-to wants HOST:PORT:AE_TITLE, got {text!r}")
        return cls(parts[0], int(parts[1]), parts[2])


class Outbox:
    def __init__(self, path: Path):
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def add(self, rel_path: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO outbox (path, added) VALUES (?, ?)", (rel_path, time.time()))

    def due(self, now: float, limit: int = 32) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute("SELECT * FROM outbox WHERE sent IS NULL AND next_try <= ? ORDER BY added "
                                   "LIMIT ?", (now, limit)).fetchall()

    def pending(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()[0]

    def next_due(self) -> float | None:
        with self._lock:
            return self.db.execute("SELECT MIN(next_try) FROM outbox WHERE sent IS NULL").fetchone()[0]

    def mark_sent(self, rel_path: str) -> None:
        with self._lock:
            self.db.execute("UPDATE outbox SET sent = ?, last_error = NULL WHERE path = ?", (time.time(), rel_path))

    def mark_failed(self, row, error: str, base: float, max_backoff: float) -> float:
        delay = min(max_backoff, base * 2 ** row["attempts"])
        with self._lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE path = ?",
                            (time.time() + delay, error, row["path"]))
        return delay


class Sender(threading.Thread):
    """Sends what is due in the outbox to ``dest``, one association per round; wakes on :meth:`poke`."""

    def __init__(self, out: Path, outbox: Outbox, dest: Destination, calling_ae: str, base: float = 2.0,
                 max_backoff: float = 300.0, timeout_s: float = 30.0):
        super().__init__(name="tbedge-outbox", daemon=True)
        self.out, self.outbox, self.dest, self.calling_ae = out, outbox, dest, calling_ae
        self.base, self.max_backoff, self.timeout_s = base, max_backoff, timeout_s
        self.stop = threading.Event()
        self._wake = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                rows = self.outbox.due(time.time())
                if rows:
                    self._send(rows)
                    continue
                nxt = self.outbox.next_due()
                wait = 5.0 if nxt is None else min(5.0, max(0.05, nxt - time.time()))
            except Exception as e:  # noqa: BLE001 - the sender must outlive any one failure
                log.error("outbox: round failed (%s); retrying", type(e).__name__)
                wait = self.base
            self._wake.wait(wait)
            self._wake.clear()

    def _fail_all(self, rows, why: str) -> None:
        delay = 0.0
        for row in rows:
            delay = self.outbox.mark_failed(row, why, self.base, self.max_backoff)
        log.warning("outbox: %s at %s:%d (%s); %d object(s) wait, next try in %.1f s", why, self.dest.host,
                    self.dest.port, self.dest.ae_title, len(rows), delay)

    def _send(self, rows) -> None:
        from pydicom import dcmread
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        for sop in SEND_SOP_CLASSES:
            ae.add_requested_context(sop, list(SEND_TRANSFER_SYNTAXES))
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout_s
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            self._fail_all(rows, "association not established")
            return
        try:
            for row in rows:
                if self.stop.is_set():
                    break
                path = self.out / row["path"]
                if not path.is_file():
                    log.error("outbox: %s is gone; dropped", row["path"])
                    self.outbox.mark_sent(row["path"])
                    continue
                ds = dcmread(path)
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                uid = ds.SOPInstanceUID
                if code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF):
                    self.outbox.mark_sent(row["path"])
                    log.info("outbox: sent uid=%s to %s", uid, self.dest.ae_title)
                elif code is None:  # no answer: the association broke
                    self._fail_all([row], "no C-STORE response")
                    break
                else:
                    self._fail_all([row], f"C-STORE status 0x{code:04X}")
        finally:
            assoc.release()
