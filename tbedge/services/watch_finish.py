"""``tbedge watch``'s finishing steps for one scored input: the result file, the move out of INCOMING, the
index lines, and quarantine when a step keeps failing. A mixin of :class:`~tbedge.services.watch.Watcher`."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from pathlib import Path

from .. import schema
from ..fsio import NAME_MAX_BYTES, atomic_write_bytes, cut_name, fsync_dir, sha256_file
from .journal import FINISHING_STATES
from .watch_store import _UID_RE, UNFINISHED_DIR, _is_disk_full, _tag, log, with_entry_id


class Finishing:
    # -- per-entry steps (each idempotent) --------------------------------------------------------
    def _result_name(self, row, result: schema.Result) -> str:
        uid = result.sop_instance_uid
        key = uid if uid and _UID_RE.match(uid) and len(uid) <= 64 else row["sha256"]
        name = f"{key}.json"
        if (result.duplicate_of or result.status != schema.STATUS_OK
                or self.journal.result_name_taken(name, row["id"])
                or ((self.results_dir / name).exists() and not self._result_is_ours(name, row))):
            name = f"{key}-{row['id']}.json"  # deterministic: the arrival id makes it unique
        return name

    def _result_is_ours(self, name: str, row) -> bool:
        try:
            return json.loads((self.results_dir / name).read_text()).get("input") == row["src"]
        except (OSError, ValueError):
            return False

    def _dest(self, row, result: schema.Result, day: str) -> str:
        if result.status == schema.STATUS_OK:
            base = self.cfg.processed_dir / day
        else:
            base = self.quarantine_dir / (result.reason or "unknown")
        dest = base / row["rel"]
        if dest.exists() or self.journal.dest_taken(str(dest), row["id"]):
            dest = with_entry_id(dest, row["id"])
        return str(dest)

    def _record_scored(self, row, result: schema.Result) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        result.sha256 = row["sha256"]  # rejected inputs may come back without one; ours is the content hash
        first = self.journal.first_ok(row["sha256"], row["id"]) if result.status == schema.STATUS_OK else None
        if first is not None:
            result.duplicate_of = Path(first["result_name"]).stem
        name = self._result_name(row, result)
        dest = self._dest(row, result, now.date().isoformat())
        self.journal.advance(row["id"], "scored", status=result.status, reason=result.reason,
                             sop_instance_uid=result.sop_instance_uid, result_name=name,
                             result_json=result.to_json(), dest=dest, duplicate_of=result.duplicate_of,
                             scored_at=now.isoformat(timespec="seconds"))

    def _write_result(self, row) -> None:
        path = self.results_dir / row["result_name"]
        if not path.exists():
            atomic_write_bytes(path, (row["result_json"] + "\n").encode())
        self.journal.advance(row["id"], "written")

    def _move(self, row) -> None:
        src, dest = Path(row["src"]), Path(row["dest"])
        if src.exists():
            if dest.exists():
                if sha256_file(dest) == row["sha256"]:
                    src.unlink()  # an interrupted cross-filesystem move had already copied it
                else:
                    dest = with_entry_id(dest, row["id"])
                    self.journal.update(row["id"], dest=str(dest))
            if src.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(src, dest)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    # fixed name: a rerun overwrites a stale one
                    tmp = dest.with_name("." + cut_name(dest.name, NAME_MAX_BYTES - 5) + ".tmp")
                    shutil.copy2(src, tmp)
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
                    os.replace(tmp, dest)
                    src.unlink()
                fsync_dir(dest.parent)
                fsync_dir(src.parent)
        elif not dest.exists():
            log.warning("%s: the input disappeared before it could be moved", _tag(row))
        self.journal.advance(row["id"], "moved")

    def _index(self, row) -> None:
        r = json.loads(row["result_json"])
        out = self.cfg.out
        dest = Path(row["dest"])
        try:
            moved_to = dest.relative_to(out).as_posix()
        except ValueError:
            moved_to = str(dest)
        self.index.append({
            "entry": row["id"], "scored_at": row["scored_at"], "input": row["rel"], "status": r["status"],
            "reason": r["reason"], "tb_score": r["tb_score"], "triage": r["triage"],
            "qa_flags": ";".join(r["qa_flags"]), "duplicate_of": r["duplicate_of"], "sha256": row["sha256"],
            "sop_instance_uid": r["sop_instance_uid"], "result": f"results/{row['result_name']}",
            "moved_to": moved_to})
        self.journal.advance(row["id"], "done")
        self._check_refer_rate(r)
        self.stats.finished += 1
        self.stats.status[r["status"]] = self.stats.status.get(r["status"], 0) + 1
        if r["status"] == schema.STATUS_OK:
            dup = f" (duplicate of {r['duplicate_of'][:12]})" if r["duplicate_of"] else ""
            log.info("%s: ok, TB score %s, %s%s", _tag(row), r["tb_score"], r["triage"], dup)
        else:
            log.warning("%s: %s (%s), quarantined", _tag(row), r["status"], r["reason"])

    def _finish(self, entry_id: int) -> None:
        """Run the remaining idempotent steps of a scored entry: write, move, index."""
        row = self.journal.get(entry_id)
        if row["state"] == "scored":
            self._write_result(row)
            row = self.journal.get(entry_id)
        if row["state"] == "written":
            self._move(row)
            row = self.journal.get(entry_id)
        if row["state"] == "moved":
            self._index(row)

    def _finish_pending(self) -> None:
        for row in self.journal.in_states(FINISHING_STATES):
            if row["id"] not in self._given_up:
                self._finish_safely(row["id"])

    def _finish_safely(self, entry_id: int) -> None:
        """:meth:`_finish`, one entry at a time: an entry whose file steps keep failing (a name the file
        system refuses, a file where a folder should be) is quarantined under a short name after
        ``max_attempts`` tries, so the queue behind it goes on. A full disk still pauses intake."""
        try:
            self._finish(entry_id)
            self._finish_failures.pop(entry_id, None)
            return
        except Exception as e:  # noqa: BLE001 - one entry never blocks the others
            if _is_disk_full(e):
                raise
            n = self._finish_failures[entry_id] = self._finish_failures.get(entry_id, 0) + 1
            log.warning("%s: finishing failed (%s errno=%s), try %d of %d", _tag(self.journal.get(entry_id)),
                        type(e).__name__, getattr(e, "errno", None), n, self.cfg.max_attempts)
            if n < self.cfg.max_attempts:
                return
        self._quarantine_unfinished(entry_id)

    def _quarantine_unfinished(self, entry_id: int) -> None:
        row = self.journal.get(entry_id)
        suffix = Path(row["src"]).suffix if len(Path(row["src"]).suffix) <= 16 else ""
        dest = self.quarantine_dir / UNFINISHED_DIR / f"{entry_id}_{row['sha256'][:12]}{suffix}"
        self.journal.update(entry_id, dest=str(dest))
        try:
            self._finish(entry_id)
        except Exception as e:  # noqa: BLE001
            if _is_disk_full(e):
                raise
            self._given_up.add(entry_id)  # until the next start: the journal keeps it
            log.error("%s: could not be finished, not even into quarantine (%s); left for the next start",
                      _tag(row), type(e).__name__)
            return
        log.warning("%s: its file steps kept failing; the input is in quarantine/%s", _tag(row), UNFINISHED_DIR)
