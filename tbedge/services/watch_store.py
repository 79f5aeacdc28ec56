"""What ``tbedge watch`` keeps on disk besides its journal: the results index (JSONL + CSV), retention of
processed inputs, file naming, and the small helpers its steps share."""

from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import json
import logging
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..fsio import NAME_MAX_BYTES, cut_name

log = logging.getLogger("tbedge.watch")

TEMP_PREFIXES = (".", "~")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", ".download")
INDEX_COLUMNS = ("entry", "scored_at", "input", "status", "reason", "tb_score", "triage", "qa_flags",
                 "duplicate_of", "sha256", "sop_instance_uid", "result", "moved_to")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UNFINISHED_DIR = "unfinished"  # quarantine/unfinished/: inputs whose file steps kept failing
ENGINE_STATE_FILE = "engine.json"  # which models score here (watch_runner writes it, tbedge ui reads it)
VIEWS_DIR = "views"  # <sha256>_heat.png, <sha256>_mask.png per scored film (watch_runner._write_views)


def with_entry_id(dest: Path, entry_id: int) -> Path:
    """``<stem>.<id><suffix>``, the stem cut so the name still fits NAME_MAX (a 255-byte name arriving twice)."""
    tail = f".{entry_id}{dest.suffix}"
    return dest.with_name(cut_name(dest.stem, NAME_MAX_BYTES - len(tail.encode())) + tail)


def is_temp_name(p: Path) -> bool:
    return p.name.startswith(TEMP_PREFIXES) or p.suffix.lower() in TEMP_SUFFIXES


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()


@dataclass
class _Tracked:
    size: int
    mtime_ns: int
    since: float
    ready: bool = False  # renamed into place from a temporary name: complete now


def _tag(row) -> str:
    """How logs name an input: journal id + content hash prefix (+ SOP Instance UID), never the file name."""
    t = f"#{row['id']} {row['sha256'][:12]}"
    if row["sop_instance_uid"]:
        t += f" uid={row['sop_instance_uid']}"
    return t


# -- results index ----------------------------------------------------------------------------------------
class LineFile:
    """An append-only file of complete lines; on open a trailing partial line (crash mid-append) is cut
    off, and the keys already present are read so a restart never appends a line twice."""

    def __init__(self, path: Path, key_of, header: str | None = None):
        self.path = path
        self.keys: set[int] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            with open(path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            data = data[:cut]
        lines = data.decode("utf-8", "replace").splitlines()
        if header is not None:
            if not lines:
                self._append(header)
            lines = lines[1:]
        for line in lines:
            k = key_of(line)
            if k is not None:
                self.keys.add(k)

    def _append(self, line: str) -> None:
        with open(self.path, "ab") as f:
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, key: int, line: str) -> None:
        if key in self.keys:
            return
        self._append(line)
        self.keys.add(key)


def _jsonl_key(line: str) -> int | None:
    try:
        return int(json.loads(line)["entry"])
    except (ValueError, KeyError, TypeError):
        return None


def _csv_key(line: str) -> int | None:
    try:
        return int(next(csv.reader([line]))[0])
    except (ValueError, IndexError, StopIteration):
        return None


class ResultsIndex:
    """RESULTS/index.jsonl and RESULTS/index.csv: one complete line per input, never a duplicate."""

    def __init__(self, out: Path):
        self.jsonl = LineFile(out / "index.jsonl", _jsonl_key)
        self.csv = LineFile(out / "index.csv", _csv_key, header=",".join(INDEX_COLUMNS))

    def append(self, row: dict) -> None:
        self.jsonl.append(row["entry"], json.dumps(row, sort_keys=False, separators=(",", ":")))
        buf = io.StringIO()
        # One physical line per record: newlines in a file name must not split a CSV row.
        vals = [str(row[c] if row[c] is not None else "").replace("\r", " ").replace("\n", " ")
                for c in INDEX_COLUMNS]
        csv.writer(buf, lineterminator="").writerow(vals)
        self.csv.append(row["entry"], buf.getvalue())


# -- retention ---------------------------------------------------------------------------------------------
def apply_retention(processed: Path, days: int | None, archive: Path | None = None,
                    today: dt.date | None = None) -> list[str]:
    """Delete (or move to ``archive``) the day folders of ``processed`` older than ``days`` days.

    ``processed/<YYYY-MM-DD>/`` is named by the day an input was scored, so retention never depends
    on file mtimes (copies often keep the sender's old timestamps). Returns the day folders handled.
    """
    if not days or days <= 0 or not processed.is_dir():
        return []
    today = today or dt.date.today()
    cutoff = today - dt.timedelta(days=days)
    done = []
    for d in sorted(processed.iterdir()):
        try:
            day = dt.date.fromisoformat(d.name)
        except ValueError:
            continue
        if not d.is_dir() or day >= cutoff:
            continue
        if archive is not None:
            target = archive / d.name
            if target.exists():  # a half-finished earlier archive move: merge file by file
                for f in sorted(p for p in d.rglob("*") if p.is_file()):
                    dest = target / f.relative_to(d)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(f), str(dest))
                shutil.rmtree(d)
            else:
                archive.mkdir(parents=True, exist_ok=True)
                shutil.move(str(d), str(target))
        else:
            shutil.rmtree(d)
        done.append(d.name)
    return done
