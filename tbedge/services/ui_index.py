"""The read-only index ``tbedge ui`` serves: one compact row per result, read from ``watch``'s (or
``listen``'s) RESULTS/index.jsonl or from ``screen``'s JSON lines, newest first, filtered and paged.

The index files are append-only, so a refresh reads only the bytes added since the last one (a stat per
request, no re-parse: 10,000 results cost one read at start). A file that shrank or was replaced is read
again. Paths to open (a result, the film, its heat map and mask) come from these rows and nowhere else:
the web layer only ever passes an entry id. Nothing here writes anywhere.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import schema
from ..errors import TbedgeError

FILTERS = ("all", "refer", "flagged", "rejected")
PAGE_MAX = 200


class ResultsPathError(TbedgeError):
    """RESULTS is neither a watch/listen results folder nor a screen results file."""


@dataclass(frozen=True)
class Entry:
    """One input as the worklist shows it; ``ref`` locates its full result (a watch result file relative
    to RESULTS, or the byte offset of a screen line), ``film`` its input file (as the index names it)."""

    id: int
    time: str | None  # ISO 8601 with offset (watch's scored_at, UTC); None for screen lines (they carry no time)
    status: str
    reason: str | None
    tb_score: float | None
    triage: str | None
    qa_flags: tuple[str, ...]
    duplicate_of: str | None
    sha256: str | None
    uid: str | None
    ref: str | int
    film: str | None

    @property
    def key(self) -> str:
        """The film's key: SOP Instance UID, else its content hash."""
        return self.uid or self.sha256 or f"entry-{self.id}"

    @property
    def short_key(self) -> str:
        """What a row shows: a UID's last 20 characters (the full key is the row's tooltip and in the film
        view), a content hash's first 12."""
        if self.uid:
            return self.uid if len(self.uid) <= 24 else "…" + self.uid[-20:]
        return (self.sha256 or f"entry-{self.id}")[:12]

    def row(self) -> dict:
        return {"id": self.id, "time": self.time, "key": self.key, "short_key": self.short_key,
                "status": self.status, "reason": self.reason, "tb_score": self.tb_score, "triage": self.triage,
                "qa_flags": list(self.qa_flags), "duplicate_of": self.duplicate_of}

    def counted_dict(self) -> dict:
        """What ``refer_rate.counted`` reads."""
        return {"status": self.status, "duplicate_of": self.duplicate_of, "triage": self.triage,
                "qa_flags": list(self.qa_flags)}

    def matches(self, flt: str, q: str) -> bool:
        if flt == "refer" and self.triage != schema.TRIAGE_REFER:
            return False
        if flt == "flagged" and not self.qa_flags:
            return False
        if flt == "rejected" and self.status == schema.STATUS_OK:
            return False
        return not q or q in self.key.lower() or q in (self.sha256 or "")


def _watch_entry(d: dict) -> Entry | None:
    try:
        flags = tuple(f for f in (d.get("qa_flags") or "").split(";") if f)
        return Entry(id=int(d["entry"]), time=d.get("scored_at"), status=d["status"], reason=d.get("reason"),
                     tb_score=d.get("tb_score"), triage=d.get("triage"), qa_flags=flags,
                     duplicate_of=d.get("duplicate_of"), sha256=d.get("sha256"), uid=d.get("sop_instance_uid"),
                     ref=str(d["result"]), film=d.get("moved_to"))
    except (KeyError, TypeError, ValueError):
        return None


class _Lines:
    """An append-only JSON-lines file read incrementally: the complete lines added since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.ino: int | None = None
        self.offset = 0

    def new_lines(self) -> tuple[bool, list[tuple[int, dict]]]:
        """(reset, [(byte offset, parsed line)]): ``reset`` when the file shrank or was replaced, and every
        line is returned again."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            reset = self.offset != 0
            self.ino, self.offset = None, 0
            return reset, []
        reset = st.st_ino != self.ino or st.st_size < self.offset
        if reset:
            self.ino, self.offset = st.st_ino, 0
        if st.st_size == self.offset:
            return reset, []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        end = data.rfind(b"\n") + 1  # a line still being appended waits for the next refresh
        out, pos = [], self.offset
        for raw in data[:end].split(b"\n")[:-1]:
            try:
                out.append((pos, json.loads(raw)))
            except ValueError:
                pass  # not a result line (a torn line cut off by a crash is rewritten whole by its writer)
            pos += len(raw) + 1
        self.offset += end
        return reset, out


class ResultIndex:
    """Rows of one RESULTS folder (watch, listen) or one screen results file, refreshed on demand."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            if not ((path / "index.jsonl").exists() or (path / "results").is_dir()
                    or (path / "journal.sqlite").exists()):
                raise ResultsPathError(f"{path} is not a results folder of tbedge watch or listen (no index.jsonl, "
                                       "results/ or journal.sqlite); for tbedge screen give its results file")
            self.kind, self.root = "watch", path
            self._lines = _Lines(path / "index.jsonl")
        elif path.is_file() or Path(f"{path}.partial").is_file():
            self.kind, self.root = "screen", path.parent
            self._lines = _Lines(path if path.is_file() else Path(f"{path}.partial"))
            self._final = path
        else:
            raise ResultsPathError(f"no results at {path}: give a tbedge watch/listen RESULTS folder or a tbedge "
                                   "screen results file")
        self.path = path
        self.entries: list[Entry] = []
        self._by_id: dict[int, Entry] = {}
        self.generation = 0
        self._lock = threading.Lock()
        self.refresh()

    @property
    def version(self) -> str:
        """Changes whenever the rows do: the page polls it."""
        return f"{self.generation}.{len(self.entries)}"

    def refresh(self) -> None:
        with self._lock:
            if self.kind == "screen" and self._lines.path != self._final and self._final.is_file():
                self._lines = _Lines(self._final)  # the run completed: .partial got its final name
            reset, lines = self._lines.new_lines()
            if reset:
                self.entries, self._by_id = [], {}
                self.generation += 1
            for offset, d in lines:
                e = _watch_entry(d) if self.kind == "watch" else self._screen_entry(d, offset)
                if e is not None and e.id not in self._by_id:
                    self.entries.append(e)
                    self._by_id[e.id] = e

    def _screen_entry(self, d: dict, offset: int) -> Entry | None:
        if not isinstance(d, dict) or d.get("status") not in schema.STATUSES:
            return None
        return Entry(id=len(self.entries) + 1, time=None, status=d["status"], reason=d.get("reason"),
                     tb_score=d.get("tb_score"), triage=d.get("triage"), qa_flags=tuple(d.get("qa_flags") or ()),
                     duplicate_of=d.get("duplicate_of"), sha256=d.get("sha256"), uid=d.get("sop_instance_uid"),
                     ref=offset, film=d.get("input"))

    def page(self, offset: int = 0, limit: int = 50, flt: str = "all", q: str = "") -> dict:
        """Newest first: ``limit`` rows from ``offset`` of the rows that pass the filter and the key search."""
        self.refresh()
        flt = flt if flt in FILTERS else "all"
        q = q.strip().lower()
        limit = max(1, min(int(limit), PAGE_MAX))
        offset = max(0, int(offset))
        rows = self.entries
        if flt == "all" and not q:
            total = len(rows)
            picked = rows[max(0, total - offset - limit):max(0, total - offset)][::-1]
        else:
            hits = [e for e in reversed(rows) if e.matches(flt, q)]
            total, picked = len(hits), hits[offset:offset + limit]
        return {"version": self.version, "total": total, "all": len(rows), "offset": offset, "limit": limit,
                "filter": flt, "q": q, "rows": [e.row() for e in picked]}

    def get(self, entry_id: int, refresh: bool = True) -> Entry | None:
        if refresh:
            self.refresh()
        return self._by_id.get(entry_id)

    # -- files named by an entry ----------------------------------------------------------------------------
    def inside(self, rel: str) -> Path | None:
        """A path the index gives relative to RESULTS, only when it stays inside RESULTS."""
        root = self.root.resolve()
        p = (root / rel).resolve()
        return p if p.is_relative_to(root) else None

    def named_path(self, name: str | None) -> Path | None:
        """A path as a result or index line names it. watch: relative to RESULTS (must stay inside) or absolute
        (``--processed-dir`` elsewhere); screen: as given to screen, relative to the results file's folder
        or else to the folder the viewer runs in."""
        if not name:
            return None
        p = Path(name)
        if self.kind == "watch":
            return p if p.is_absolute() else self.inside(name)
        if p.is_absolute():
            return p
        beside = self.root / p
        return beside if beside.exists() else Path(os.getcwd()) / p

    def result(self, e: Entry) -> dict | None:
        """The full result of an entry (``schema.Result.to_dict()``), or None when it cannot be read."""
        try:
            if self.kind == "watch":
                p = self.inside(str(e.ref))
                if p is None or p.parent != (self.root / "results").resolve():
                    return None
                return json.loads(p.read_text())
            with open(self._lines.path, "rb") as f:
                f.seek(int(e.ref))
                return json.loads(f.readline())
        except (OSError, ValueError):
            return None
