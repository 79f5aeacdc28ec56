"""tbedge watch: exactly-once processing, deduplication, quarantine, retries, crash points, disk-full
pause, index recovery, retention, and parity with ``screen``. Uses the tiny test bundle and real images."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import random
import sqlite3
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from watch_support import (
    check_outcome,
    expected_reason,
    place,
    prepare_inputs,
    real_images,
    validate_result,
)

from tbedge.fsio import sha256_file
from tbedge.runtime.pipeline import Pipeline
from tbedge.services import watch as W
from tbedge.services import watch_finish as WF
from tbedge.services import watch_store as WS
from tbedge.services.journal import Journal


def _populate(data_root: Path, incoming: Path, n: int = 12, dups: int = 2, bad: int = 1, seed: int = 0):
    plan = prepare_inputs(real_images(data_root, n, seed), incoming, dups, bad, seed)
    rng = random.Random(seed)
    for name, item in plan.items():
        place(item, incoming / name, rng)
    reasons = {name: expected_reason(incoming / name) for name, (_, k) in plan.items()
               if k not in ("good", "dup")}
    return plan, reasons


def _cfg(incoming, out, bundle, **kw) -> W.WatchConfig:
    base = dict(engine=bundle, backend="onnxruntime", batch=4, threads=1, once=True, stable_seconds=0.05,
                rescan_seconds=0.1, min_free_mb=1, max_attempts=3, use_events=False,
                pause_retry_seconds=0.2)
    base.update(kw)
    return W.WatchConfig(incoming, out, **base)


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    with Pipeline(tiny_bundle, backend="onnxruntime", batch=4, threads=1) as p:
        yield p


def test_once_exactly_one_result_per_input(data_root, tiny_bundle, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    plan, reasons = _populate(data_root, incoming)
    assert reasons["bad_empty_0.png"] == "empty_file"
    rc = W.watch(incoming, out, tiny_bundle, backend="onnxruntime", batch=4, threads=1, once=True,
                 stable_seconds=0.05, min_free_mb=1)
    assert rc == 0
    counts = check_outcome(incoming, out, plan, reasons)
    assert counts["duplicates"] >= 2
    # A second run over an empty INCOMING changes nothing.
    assert W.watch(incoming, out, tiny_bundle, backend="onnxruntime", once=True, stable_seconds=0.05,
                   min_free_mb=1) == 0
    check_outcome(incoming, out, plan, reasons)
    log = (out / "logs" / "watch.log").read_text()
    assert "img_" not in log and "bad_" not in log and "again_" not in log  # no file names in logs
    assert log.count("quarantined") == len(reasons)


def test_views_are_written_per_content_and_can_be_turned_off(data_root, pipe, tmp_path):
    """views/<sha256>_heat.png (the heat map on its crop grid) and _mask.png (the lung mask at the film's size)
    for each scored film: the layers tbedge ui draws; a duplicate's result names the same files."""
    from tbedge.outputs.files import HEAT_GRID

    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    src = real_images(data_root, 1, seed=5)[0]
    (incoming / "a.png").write_bytes(src.read_bytes())
    (incoming / "b.png").write_bytes(src.read_bytes())
    (incoming / "empty.png").write_bytes(b"")
    W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    res = [json.loads(p.read_text()) for p in (out / "results").iterdir()]
    ok = [r for r in res if r["status"] == "ok"]
    assert len(ok) == 2 and [r["outputs"] for r in res if r["status"] != "ok"] == [None]
    for r in ok:
        validate_result(r)
        kinds = {o["kind"]: out / o["path"] for o in r["outputs"] if o["error"] is None}
        assert set(kinds) == {"heat", "mask"} and kinds["heat"].name == f"{r['sha256']}_heat.png"
        heat = cv2.imread(str(kinds["heat"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(kinds["mask"]), cv2.IMREAD_UNCHANGED)
        assert heat.dtype == np.uint8 and heat.ndim == 2 and heat.max() in (0, 255) and heat.shape[0] <= HEAT_GRID
        assert mask.shape == cv2.imread(str(src), cv2.IMREAD_GRAYSCALE).shape and set(np.unique(mask)) <= {0, 255}
    assert len(list((out / "views").iterdir())) == 2
    out2 = tmp_path / "out2"
    (incoming / "c.png").write_bytes(src.read_bytes())
    W.Watcher(_cfg(incoming, out2, None, views=False), pipeline=pipe).run()
    (r,) = [json.loads(p.read_text()) for p in (out2 / "results").iterdir()]
    assert r["status"] == "ok" and r["outputs"] is None and not (out2 / "views").exists()


def test_identical_content_again_later_is_a_duplicate(data_root, pipe, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    src = real_images(data_root, 1, seed=3)[0]
    (incoming / "first.png").write_bytes(src.read_bytes())
    (incoming / "empty_a.png").write_bytes(b"")
    W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    (incoming / "second.png").write_bytes(src.read_bytes())
    (incoming / "empty_b.png").write_bytes(b"")
    W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    res = {Path(r["input"]).name: r for r in
           (json.loads(p.read_text()) for p in (out / "results").iterdir())}
    assert res["second.png"]["duplicate_of"] == res["first.png"]["sha256"]
    assert res["first.png"]["duplicate_of"] is None
    assert res["second.png"]["tb_probability"] == res["first.png"]["tb_probability"]
    assert res["empty_a.png"]["duplicate_of"] is None and res["empty_b.png"]["duplicate_of"] is None
    assert (out / "quarantine" / "empty_file" / "empty_a.png").exists()
    assert (out / "quarantine" / "empty_file" / "empty_b.png").exists()
    # Same name again in processed/ on the same day: deterministic, collision-free name.
    (incoming / "first.png").write_bytes(src.read_bytes())
    W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    day = dt.date.today().isoformat()
    names = sorted(p.name for p in (out / "processed" / day).iterdir())
    assert names == ["first.5.png", "first.png", "second.png"]


class _Crash(BaseException):
    """Stands in for kill -9: escapes every handler, nothing after it runs."""


@pytest.mark.parametrize("state", ["claimed", "scored", "written", "moved", "done"])
def test_crash_between_effect_and_journal_record(data_root, pipe, tmp_path, monkeypatch, state):
    """Die right after a step's file effect but before the journal records it; a restart must finish
    the work exactly once."""
    incoming, out = tmp_path / "in", tmp_path / "out"
    plan, reasons = _populate(data_root, incoming, n=6, dups=1, bad=1, seed=5)
    real = Journal.advance
    calls = {"n": 0}

    def advance(self, entry_id, st, **fields):
        if st == state:
            calls["n"] += 1
            if calls["n"] == 3:  # mid-batch, not the first entry
                raise _Crash()
        return real(self, entry_id, st, **fields)

    monkeypatch.setattr(Journal, "advance", advance)
    with pytest.raises(_Crash):
        W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    monkeypatch.setattr(Journal, "advance", real)
    if state == "done":  # the index line was appended; cut it in half as a crash mid-append would
        data = (out / "index.jsonl").read_bytes()
        (out / "index.jsonl").write_bytes(data + data.splitlines(keepends=True)[-1][:17])
    W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run()
    check_outcome(incoming, out, plan, reasons)


class _Flaky:
    """Wraps a pipeline; makes chosen inputs fail in 'classify' for their first ``fails`` attempts."""

    def __init__(self, pipe, fails: dict[str, int]):
        self.pipe, self.fails, self.backend, self.batch = pipe, dict(fails), pipe.backend, pipe.batch

    def __getattr__(self, name):  # bundle, models, fallback...: the wrapped pipeline's (engine.json reads them)
        return getattr(self.pipe, name)

    def run(self, paths):
        for s in self.pipe.run(paths):
            name = Path(s.result.input).name
            if self.fails.get(name, 0) > 0:
                self.fails[name] -= 1
                r = s.result
                r.status, r.reason, r.detail = "error", "error_classify", "injected"
                r.tb_score = r.tb_probability = r.class_probabilities = r.triage = None
            yield s


def test_errors_are_retried_then_quarantined(data_root, pipe, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    a, b, c = real_images(data_root, 3, seed=9)
    for name, src in (("flaky.png", a), ("broken.png", b), ("fine.png", c)):
        (incoming / name).write_bytes(src.read_bytes())
    flaky = _Flaky(pipe, {"flaky.png": 1, "broken.png": 99})
    W.Watcher(_cfg(incoming, out, None, max_attempts=3), pipeline=flaky).run()
    res = {Path(r["input"]).name: r for r in (json.loads(p.read_text()) for p in (out / "results").iterdir())}
    assert len(res) == 3
    assert res["flaky.png"]["status"] == "ok" and res["fine.png"]["status"] == "ok"
    assert res["broken.png"]["status"] == "error" and res["broken.png"]["reason"] == "error_classify"
    assert (out / "quarantine" / "error_classify" / "broken.png").is_file()
    assert flaky.fails["broken.png"] == 99 - 3  # exactly max_attempts tries
    db = sqlite3.connect(out / "journal.sqlite")
    attempts = dict(db.execute("SELECT rel, attempts FROM entries"))
    assert attempts == {"flaky.png": 2, "broken.png": 3, "fine.png": 1}


def test_crash_looping_input_is_quarantined(data_root, pipe, tmp_path):
    """An input claimed max_attempts times without a result (each time the process died) is given up."""
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    (incoming / "poison.png").write_bytes(real_images(data_root, 1, seed=11)[0].read_bytes())
    out.mkdir()
    with Journal(out / "journal.sqlite") as j:
        p = incoming / "poison.png"
        st = p.stat()
        eid = j.add(sha256_file(p), str(p), "poison.png", st.st_size, st.st_mtime_ns)
        j.advance(eid, "claimed", attempts=2, last_stage="segment")
    W.Watcher(_cfg(incoming, out, None, max_attempts=2), pipeline=pipe).run()
    r = json.loads(next((out / "results").iterdir()).read_text())
    validate_result(r)
    assert r["status"] == "error" and r["reason"] == "error_segment"
    assert (out / "quarantine" / "error_segment" / "poison.png").is_file()


def test_disk_full_pauses_and_resumes(data_root, pipe, tmp_path, monkeypatch, caplog):
    incoming, out = tmp_path / "in", tmp_path / "out"
    plan, reasons = _populate(data_root, incoming, n=5, dups=0, bad=0, seed=13)
    w = W.Watcher(_cfg(incoming, out, None, once=False, min_free_mb=1e12), pipeline=pipe)
    caplog.set_level(logging.INFO, logger="tbedge")
    t = threading.Thread(target=w.run)
    t.start()
    try:
        time.sleep(1.5)
        assert not (out / "results").exists() or not list((out / "results").iterdir())
        assert [r.message for r in caplog.records].count(
            next(r.message for r in caplog.records if r.message.startswith("intake paused"))) == 1
        # ENOSPC on the first result writes: pause again, lose nothing.
        real = WF.atomic_write_bytes
        fails = {"n": 2}

        def flaky_write(path, data):
            if fails["n"] > 0:
                fails["n"] -= 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data)

        monkeypatch.setattr(WF, "atomic_write_bytes", flaky_write)
        w.cfg.min_free_mb = 1
        w.wake.set()
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / "results").glob("*.json"))) < len(plan):
            time.sleep(0.1)
    finally:
        w.stop.set()
        w.wake.set()
        t.join(60)
    assert not t.is_alive()
    check_outcome(incoming, out, plan, reasons)
    msgs = [r.message for r in caplog.records]
    assert sum(m.startswith("intake paused") for m in msgs) == 2  # free-space check, then ENOSPC
    assert sum(m.startswith("intake resumed") for m in msgs) == 2
    assert fails["n"] == 0


@pytest.mark.parametrize("fault", ["unreadable_incoming", "disk_full"])
def test_once_gives_up_on_a_lasting_fault_and_the_next_run_goes_on(data_root, pipe, tmp_path, monkeypatch, caplog,
                                                                    fault):
    """A cron run (--once) must end even when every step fails or the disk stays full: it exits
    EX_TEMPFAIL, writes nothing half, and the next run scores every film exactly once."""
    incoming, out = tmp_path / "in", tmp_path / "out"
    plan, reasons = _populate(data_root, incoming, n=4, dups=1, bad=1, seed=17)
    caplog.set_level(logging.INFO, logger="tbedge")
    if fault == "unreadable_incoming":
        def denied(self, now):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(W.Watcher, "_scan", denied)
        kw = dict(retry_seconds=0.01, once_failed_steps=3)
    else:
        kw = dict(min_free_mb=1e12)
    t0 = time.monotonic()
    assert W.Watcher(_cfg(incoming, out, None, **kw), pipeline=pipe).run() == W.EX_TEMPFAIL
    assert time.monotonic() - t0 < 30
    assert not (out / "results").exists() or not list((out / "results").iterdir())
    assert len([p for p in incoming.rglob("*") if p.is_file()]) == len(plan)  # nothing moved or lost
    gave_up = [r.message for r in caplog.records if r.message.startswith("--once:")]
    assert len(gave_up) == 1 and ("3 steps in a row failed" if fault != "disk_full" else "paused") in gave_up[0]
    monkeypatch.undo()
    assert W.Watcher(_cfg(incoming, out, None), pipeline=pipe).run() == 0
    check_outcome(incoming, out, plan, reasons)


def test_once_failed_steps_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="once_failed_steps"):
        _cfg(tmp_path / "in", tmp_path / "out", None, once_failed_steps=0)


def test_index_recovery_cuts_partial_line_and_never_duplicates(tmp_path):
    out = tmp_path
    idx = WS.ResultsIndex(out)
    row = dict.fromkeys(WS.INDEX_COLUMNS, None) | {"entry": 1, "input": "a,\nb.png", "status": "ok"}
    idx.append(row)
    idx.append(row)  # already there: skipped
    with open(out / "index.jsonl", "ab") as f:
        f.write(b'{"entry": 2, "inp')
    with open(out / "index.csv", "ab") as f:
        f.write(b"2,2026-")
    idx = WS.ResultsIndex(out)
    assert idx.jsonl.keys == {1} and idx.csv.keys == {1}
    idx.append(row | {"entry": 2})
    lines = (out / "index.jsonl").read_text().splitlines()
    assert [json.loads(x)["entry"] for x in lines] == [1, 2]
    csv_lines = (out / "index.csv").read_text().splitlines()
    assert csv_lines[0].startswith("entry,") and len(csv_lines) == 3  # the newline in the name is flattened


def test_retention_deletes_or_archives_old_days(tmp_path):
    processed = tmp_path / "processed"
    today = dt.date(2025, 3, 31)
    for d in ("2025-02-01", "2025-03-01", "2025-03-30", "notes"):
        (processed / d).mkdir(parents=True)
        (processed / d / "x.png").write_bytes(b"x")
    assert WS.apply_retention(processed, 30, today=today) == ["2025-02-01"]
    assert sorted(p.name for p in processed.iterdir()) == ["2025-03-01", "2025-03-30", "notes"]
    archive = tmp_path / "archive"
    assert WS.apply_retention(processed, 10, archive=archive, today=today) == ["2025-03-01"]
    assert (archive / "2025-03-01" / "x.png").is_file()
    assert WS.apply_retention(processed, 0, today=today) == []  # 0 disables retention


def test_temp_names_are_not_inputs():
    for n in (".x.png", "x.png.part", "x.tmp", "~x.png", "x.crdownload"):
        assert WS.is_temp_name(Path(n))
    assert not WS.is_temp_name(Path("x.png")) and not WS.is_temp_name(Path("x.dcm"))


def test_watch_scores_equal_screen_scores(data_root, tiny_bundle, tmp_path):
    from tbedge.services.screen import screen

    srcs = real_images(data_root, 10, seed=21)
    a, incoming, out = tmp_path / "a", tmp_path / "in", tmp_path / "out"
    a.mkdir()
    incoming.mkdir()
    for i, s in enumerate(srcs):
        (a / f"{i}.png").write_bytes(s.read_bytes())
        (incoming / f"{i}.png").write_bytes(s.read_bytes())
    screen([a], tmp_path / "screen.jsonl", engine=tiny_bundle, backend="onnxruntime", batch=3, threads=1)
    W.watch(incoming, out, tiny_bundle, backend="onnxruntime", batch=4, threads=1, once=True,
            stable_seconds=0.05, min_free_mb=1)
    by_sha_screen = {}
    for line in (tmp_path / "screen.jsonl").read_text().splitlines():
        r = json.loads(line)
        validate_result(r)
        by_sha_screen[r["sha256"]] = r
    watched = [json.loads(p.read_text()) for p in (out / "results").iterdir()]
    assert len(watched) == len(by_sha_screen) == 10
    for r in watched:
        s = by_sha_screen[r["sha256"]]
        assert r["status"] == s["status"] == "ok"
        assert abs(r["tb_probability"] - s["tb_probability"]) <= 1e-5
        for c, v in s["class_probabilities"].items():
            assert abs(r["class_probabilities"][c] - v) <= 1e-5
        assert r["triage"] == s["triage"] and r["lungs"]["bbox"] == s["lungs"]["bbox"]


def test_an_inotify_event_during_a_clean_stop_is_not_an_error(tmp_path, caplog):
    """watchdog logs an ERROR when an event reaches its emitter while the observer stops, which happened at
    every clean SIGTERM stop (issue 21, defect 13): nothing at ERROR level may come of it."""
    (tmp_path / "inc").mkdir()
    w = W.Watcher(W.WatchConfig(incoming=tmp_path / "inc", out=tmp_path / "out"))
    obs = w._start_observer()
    emitter = next(iter(obs.emitters))
    obs.stop()
    obs.join(timeout=5)
    caplog.set_level(logging.DEBUG)
    emitter.queue_events(0)  # what the emitter thread does when an event arrives during the stop
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_film_whose_file_steps_keep_failing_is_quarantined_and_the_queue_goes_on(data_root, tmp_path):
    """A second file with the same 255-byte name failed to move (ENAMETOOLONG) on every retry and the films
    after it were never scored (issue 21, defect 10). Now its name is cut to fit, and a film whose move
    keeps failing for another reason (a file where its folder should be) is quarantined after
    max_attempts under a short name, while the others are scored."""
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    a, b, c, d = real_images(data_root, 4, seed=13)
    long_name = "n" * 251 + ".png"
    (incoming / long_name).write_bytes(a.read_bytes())
    with Pipeline(None, batch=4, threads=1) as p:  # the shipped default bundle
        assert W.Watcher(_cfg(incoming, out, None), pipeline=p).run() == 0
        (incoming / long_name).write_bytes(b.read_bytes())  # the same name again: "<name>.<id>.png" is too long
        (incoming / "sub").mkdir()
        (incoming / "sub" / "x.png").write_bytes(c.read_bytes())
        day = dt.datetime.now(dt.timezone.utc).date().isoformat()
        (out / "processed" / day / "sub").write_text("a file in the way of the folder")
        (incoming / "later.png").write_bytes(d.read_bytes())
        assert W.Watcher(_cfg(incoming, out, None), pipeline=p).run() == 0
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    moved = {r["input"]: r["moved_to"] for r in rows}
    assert moved["later.png"] == f"processed/{day}/later.png"
    assert moved["sub/x.png"].startswith("quarantine/unfinished/") and (out / moved["sub/x.png"]).is_file()
    again = [r["moved_to"] for r in rows if r["input"] == long_name]
    assert len(again) == 2 and all((out / m).is_file() and len(Path(m).name.encode()) <= 255 for m in again)
    assert not list(incoming.rglob("*.png"))
