"""tbedge watch as a real subprocess: SIGKILL storms, SIGTERM drain, slowly written files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from watch_support import (
    check_outcome,
    expected_reason,
    place,
    prepare_inputs,
    real_images,
    result_files,
    run_watch,
)

FAST = ("--stable-seconds", "0.2", "--rescan-seconds", "0.3", "--batch", "8")


def _n_results(out: Path) -> int:
    return sum(1 for p in result_files(out) if not p.name.startswith("."))


def _wait_exit(proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_storm_exactly_once(data_root, tiny_bundle, tmp_path):
    """>= 500 real images + duplicates + malformed files, fed while the service runs, SIGKILLed >= 20
    times at progress-scheduled moments with seeded jitter; afterwards exactly one result per input."""
    t_start = time.time()
    rng = random.Random(1234)
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    plan = prepare_inputs(real_images(data_root, 500, seed=1), incoming, n_dups=25, n_bad_each=4, seed=2)
    names = list(plan)
    rng.shuffle(names)
    feed_rng = random.Random(5)
    fed = 0

    def feed(n: int) -> None:
        nonlocal fed
        for name in names[fed:fed + n]:
            place(plan[name], incoming / name, feed_rng, via_temp=feed_rng.random() < 0.5)
        fed = min(len(names), fed + n)

    feed(200)
    kills, total = 0, len(plan)
    target = rng.randint(10, 30)
    while kills < 20 or _n_results(out) < total:
        proc = run_watch(incoming, out, tiny_bundle, *FAST)
        if kills >= 20:  # the last run: let it finish, then stop it cleanly
            deadline = time.time() + 300
            while _n_results(out) < total and time.time() < deadline:
                feed(20)
                time.sleep(0.2)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert _wait_exit(proc, 60) == 0
            break
        if kills % 5 == 4:  # now and then, die while starting up or scanning
            time.sleep(rng.uniform(0.2, 2.0))
        else:
            deadline = time.time() + 60
            while _n_results(out) < min(target, total) and time.time() < deadline and proc.poll() is None:
                if fed < total and rng.random() < 0.3:
                    feed(10)
                time.sleep(0.02)
            assert proc.poll() is None, f"watch exited on its own with {proc.returncode}"
            time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        target = _n_results(out) + rng.randint(10, 30)
        feed(15)
    feed(total)
    reasons = {n: expected_reason_from_plan(plan[n]) for n in plan if plan[n][1] not in ("good", "dup")}
    counts = check_outcome(incoming, out, plan, reasons)
    elapsed = time.time() - t_start
    db = sqlite3.connect(out / "journal.sqlite")
    reclaimed = db.execute("SELECT COUNT(*) FROM (SELECT entry FROM transitions WHERE state = 'claimed' "
                           "GROUP BY entry HAVING COUNT(*) > 1)").fetchone()[0]
    db.close()
    starts = re.findall(r"(\d+) unfinished entries from before", (out / "logs" / "watch.log").read_text())
    resumed = sum(1 for n in starts if int(n) > 0)
    print(f"\ncrash test: {total} inputs, {kills} SIGKILLs, {elapsed:.0f} s, {counts}, "
          f"{resumed} restarts resumed in-flight work, {reclaimed} entries scored again after a kill")
    assert kills >= 20 and counts["results"] == total and counts["duplicates"] >= 25
    assert resumed >= 5  # the kills really landed mid-work


def expected_reason_from_plan(item) -> str:
    """Recreate the bad file (deterministically) in a scratch spot and ask the loader."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("x.dcm" if item[1] == "random" else "x.png")
        place(item, p, random.Random(0))
        reason = expected_reason(p)
    if item[1] == "empty":
        assert reason == "empty_file"
    assert reason is not None, f"the loader accepts a {item[1]} file"
    return reason


def test_sigterm_drains_current_batch(data_root, tiny_bundle, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    srcs = real_images(data_root, 80, seed=4)
    for i, s in enumerate(srcs):
        (incoming / f"{i:03d}.png").write_bytes(s.read_bytes())
    proc = run_watch(incoming, out, tiny_bundle, *FAST)
    deadline = time.time() + 60
    while _n_results(out) < 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert _wait_exit(proc, 60) == 0
    db = sqlite3.connect(out / "journal.sqlite")
    states = dict(db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state"))
    db.close()
    assert set(states) <= {"done", "seen"}, states  # nothing claimed, scored, written or moved
    done_first = states.get("done", 0)
    assert 0 < done_first < 80
    assert done_first % 8 == 0 or states.get("seen", 0) == 0  # stopped on a batch boundary
    proc = run_watch(incoming, out, tiny_bundle, "--once", *FAST)
    assert _wait_exit(proc, 120) == 0
    assert _n_results(out) == 80 and not list(incoming.iterdir())


def test_slowly_written_files_are_never_read_half_written(data_root, tiny_bundle, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    a, b = real_images(data_root, 2, seed=8)
    proc = run_watch(incoming, out, tiny_bundle, "--stable-seconds", "1.0", "--rescan-seconds", "0.2")
    try:
        time.sleep(1.5)
        shas = {}
        # One file written in place, one into a temporary name then renamed; 8 chunks over ~2.8 s.
        for src, name, tmp in ((a, "slow.png", None), (b, "slow2.png", ".slow2.png.part")):
            data = src.read_bytes()
            shas[name] = hashlib.sha256(data).hexdigest()
            target = incoming / (tmp or name)
            with open(target, "wb") as f:
                for k in range(8):
                    f.write(data[k * len(data) // 8:(k + 1) * len(data) // 8])
                    f.flush()
                    os.fsync(f.fileno())
                    time.sleep(0.35)
            if tmp:
                os.replace(target, incoming / name)
        deadline = time.time() + 60
        while _n_results(out) < 2 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert _wait_exit(proc, 60) == 0
    res = {Path(r["input"]).name: r for r in (json.loads(p.read_text()) for p in result_files(out))}
    assert set(res) == {"slow.png", "slow2.png"}
    for name, r in res.items():
        assert r["status"] == "ok", (name, r["reason"])
        assert r["sha256"] == shas[name]
