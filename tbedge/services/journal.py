"""The watch service's durable journal: one SQLite row per arrived input, advanced through states.

States, in order (each step is idempotent, so a restart after ``kill -9`` resumes at the last
committed state without losing or repeating work)::

  seen -> claimed -> scored -> written -> moved -> done
   ^         |
   +---------+  (a processing error with attempts left goes back to "seen")

- seen: the file in INCOMING is complete; its content hash, path, size and mtime are recorded.
- claimed: a batch took it; ``attempts`` counts claims, so an input that keeps failing (or keeps
  crashing the process) is quarantined after ``max_attempts`` instead of looping forever.
- scored: the result JSON, its file name and the input's destination are decided and stored here.
- written: the result file exists (atomic write). moved: the input left INCOMING. done: indexed.

Rows are keyed by an arrival id; the content hash (indexed) is the deduplication key. A SQLite
database in WAL mode with synchronous=FULL survives power loss after every committed transition.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

STATES = ("seen", "claimed", "scored", "written", "moved", "done", "vanished")
OPEN_STATES = ("seen", "claimed", "scored", "written")  # the input file is still in INCOMING
QUEUED_STATES = ("seen", "claimed")  # needs (re)scoring
FINISHING_STATES = ("scored", "written", "moved")  # scored; only idempotent file steps remain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    src TEXT NOT NULL,
    rel TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_stage TEXT,
    status TEXT,
    reason TEXT,
    sop_instance_uid TEXT,
    result_name TEXT,
    result_json TEXT,
    dest TEXT,
    duplicate_of TEXT,
    scored_at TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_sha ON entries (sha256);
CREATE INDEX IF NOT EXISTS entries_state ON entries (state);
CREATE INDEX IF NOT EXISTS entries_src ON entries (src);
CREATE INDEX IF NOT EXISTS entries_result ON entries (result_name);
CREATE INDEX IF NOT EXISTS entries_dest ON entries (dest);
CREATE TABLE IF NOT EXISTS transitions (
    entry INTEGER NOT NULL,
    state TEXT NOT NULL,
    t REAL NOT NULL
);
"""

_FIELDS = ("sha256", "size", "mtime_ns", "attempts", "last_stage", "status", "reason", "sop_instance_uid",
           "result_name", "result_json", "dest", "duplicate_of", "scored_at")


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode; every change below is one explicit transaction.
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- writes --------------------------------------------------------------------------
    def add(self, sha256: str, src: str, rel: str, size: int, mtime_ns: int) -> int:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(
                "INSERT INTO entries (sha256, src, rel, size, mtime_ns, state, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'seen', ?, ?)", (sha256, src, rel, size, mtime_ns, now, now))
            self.db.execute("INSERT INTO transitions VALUES (?, 'seen', ?)", (cur.lastrowid, now))
        return int(cur.lastrowid)

    def advance(self, entry_id: int, state: str, **fields) -> None:
        """Move an entry to ``state`` and set ``fields`` in one durable transaction."""
        if state not in STATES:
            raise ValueError(f"unknown journal state {state!r}")
        bad = set(fields) - set(_FIELDS)
        if bad:
            raise ValueError(f"unknown journal fields {sorted(bad)}")
        now = time.time()
        sets = ", ".join([f"{k} = ?" for k in fields] + ["state = ?", "updated = ?"])
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"UPDATE entries SET {sets} WHERE id = ?",
                            (*fields.values(), state, now, entry_id))
            self.db.execute("INSERT INTO transitions VALUES (?, ?, ?)", (entry_id, state, now))

    def update(self, entry_id: int, **fields) -> None:
        """Set fields without a state change (e.g. a new destination after a name collision)."""
        bad = set(fields) - set(_FIELDS)
        if bad:
            raise ValueError(f"unknown journal fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"UPDATE entries SET {sets}, updated = ? WHERE id = ?",
                            (*fields.values(), time.time(), entry_id))

    # -- reads ---------------------------------------------------------------------------
    def get(self, entry_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()

    def in_states(self, states: tuple[str, ...], limit: int | None = None) -> list[sqlite3.Row]:
        q = f"SELECT * FROM entries WHERE state IN ({','.join('?' * len(states))}) ORDER BY id"
        if limit:
            q += f" LIMIT {int(limit)}"
        return self.db.execute(q, states).fetchall()

    def count(self, states: tuple[str, ...] = STATES) -> int:
        q = f"SELECT COUNT(*) FROM entries WHERE state IN ({','.join('?' * len(states))})"
        return int(self.db.execute(q, states).fetchone()[0])

    def open_srcs(self) -> set[str]:
        """Paths in INCOMING that already belong to an unfinished entry (never registered twice)."""
        q = f"SELECT src FROM entries WHERE state IN ({','.join('?' * len(OPEN_STATES))})"
        return {r[0] for r in self.db.execute(q, OPEN_STATES)}

    def first_ok(self, sha256: str, before_id: int) -> sqlite3.Row | None:
        """The earliest scored 'ok' entry with this content (the original a duplicate points to)."""
        return self.db.execute(
            "SELECT * FROM entries WHERE sha256 = ? AND id < ? AND status = 'ok' AND duplicate_of IS NULL "
            "AND state IN ('scored', 'written', 'moved', 'done') ORDER BY id LIMIT 1",
            (sha256, before_id)).fetchone()

    def result_name_taken(self, name: str, entry_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE result_name = ? AND id != ? LIMIT 1",
                               (name, entry_id)).fetchone() is not None

    def dest_taken(self, dest: str, entry_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE dest = ? AND id != ? LIMIT 1",
                               (dest, entry_id)).fetchone() is not None

    def transitions(self, entry_id: int) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT state FROM transitions WHERE entry = ? ORDER BY rowid",
                                              (entry_id,))]
