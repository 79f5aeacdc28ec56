"""The referral-rate check: which films count, its states, a new threshold's fresh window, resuming
from the state file, and ``tbedge watch`` warning on real films when the threshold cannot fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from watch_support import real_images

from tbedge import schema
from tbedge.build.bundle_copy import copy_bundle
from tbedge.runtime.bundle import default_bundle_path
from tbedge.services import watch as W
from tbedge.services import watch_runner as WR
from tbedge.services.refer_rate import STATE_FILE, ReferRateCheck, counted


def _res(triage="clear", threshold=0.05, **kw) -> dict:
    r = {"status": schema.STATUS_OK, "triage": triage, "threshold": threshold, "qa_flags": [],
         "duplicate_of": None}
    return {**r, **kw}


def test_only_threshold_decided_first_copies_count():
    assert counted(_res())
    assert counted(_res("refer"))
    assert not counted(_res(duplicate_of="ab" * 32))
    assert not counted(_res("refer", qa_flags=["lungs_implausible"]))  # referred whatever its score
    assert counted(_res("clear", qa_flags=["low_contrast"]))
    assert not counted(_res(None, status=schema.STATUS_ERROR))
    assert not counted(_res(None, status=schema.STATUS_REJECTED))


def test_states_follow_the_rolling_rate():
    c = ReferRateCheck(window=10, min_films=4, low=0.1, high=0.9)
    assert [c.add(_res()) for _ in range(3)] == [None, None, None]
    assert c.state == "warming_up" and "3 of 4" in c.message()
    assert c.add(_res()) == "low"  # 4 cleared films: rate 0 < 0.1
    assert "set-threshold" in c.message() and "below 0.10" in c.message()
    assert c.unsaved == 4
    assert c.add(_res("refer", qa_flags=["lungs_implausible"])) is None  # not counted: no change
    assert c.unsaved == 4  # nothing new for the owner to save
    assert c.add(_res("refer")) == "ok"  # 1 of 5 = 0.2
    for _ in range(10):
        c.add(_res("refer"))
    assert c.state == "high" and len(c.recent) == 10 and c.rate == 1.0  # the window keeps the last 10
    assert "above 0.90" in c.message()


def test_a_new_threshold_starts_a_new_window():
    c = ReferRateCheck(window=10, min_films=2)
    c.add(_res(threshold=0.05))
    c.add(_res(threshold=0.05))
    assert c.state == "low"
    assert c.add(_res("refer", threshold=0.01)) == "warming_up"  # re-locked bundle: old films say nothing
    assert c.recent == [True] and c.threshold == 0.01


def test_resume_from_the_state_file_and_bad_parameters():
    c = ReferRateCheck(window=5, min_films=2)
    for t in ("refer", "clear", "clear"):
        c.add(_res(t))
    saved = json.loads(json.dumps(c.to_dict()))
    assert saved["recent"] == "Rcc" and saved["state"] == "ok" and saved["films"] == 3
    r = ReferRateCheck.resume(saved, window=2, min_films=2)  # a smaller window keeps the newest films
    assert r.recent == [False, False] and r.state == "low" and r.threshold == 0.05
    assert ReferRateCheck.resume(None).state == "warming_up"
    with pytest.raises(ValueError):
        ReferRateCheck(window=10, min_films=20)
    with pytest.raises(ValueError):
        ReferRateCheck(low=0.5, high=0.4)
    with pytest.raises(ValueError):
        W.WatchConfig("in", "out", refer_low=0.9, refer_high=0.1)


def _with_threshold(dest, value):
    """The shipped bundle (real models: the tiny test bundle finds no plausible lungs) at ``value``."""
    copy_bundle(default_bundle_path(), dest,
                edit=lambda m, _s: {**m, "threshold": {**m["threshold"], "value": value}})
    return dest


@pytest.mark.parametrize("value, state", [(0.999999, "low"), (0.0, "high")])
def test_watch_warns_when_the_threshold_cannot_fit(data_root, tmp_path, monkeypatch, value, state):
    bundle = _with_threshold(tmp_path / "bundle", value)
    writes = []  # the state file is written on a change of state and at close, not per film

    def spy(path, data, _real=WR.atomic_write_bytes):
        writes.append(Path(path).name)
        return _real(path, data)

    monkeypatch.setattr(WR, "atomic_write_bytes", spy)
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    films = real_images(data_root, 9)
    for i, p in enumerate(films[:8]):
        shutil.copy(p, incoming / f"img_{i}{p.suffix}")
    rc = W.watch(incoming, out, bundle, backend="onnxruntime", batch=4, threads=1, once=True,
                 stable_seconds=0.05, min_free_mb=1, refer_window=20, refer_min_films=5)
    assert rc == 0
    saved = json.loads((out / STATE_FILE).read_text())
    results = [json.loads(p.read_text()) for p in (out / "results").rglob("*.json")]
    n = sum(counted(r) for r in results)
    assert n >= 5 and saved["films"] == n and saved["threshold"] == value
    assert writes.count(STATE_FILE) == (1 if n == 5 else 2)  # warming_up -> state at film 5; close
    assert saved["state"] == state
    log = (out / "logs" / "watch.log").read_text()
    assert log.count("operating point:") == 1 and "tbedge set-threshold" in log
    assert "img_" not in log  # no file names

    # A restart reminds at once; a re-locked bundle (here: the original) starts a new window.
    W.watch(incoming, out, bundle, backend="onnxruntime", once=True, stable_seconds=0.05, min_free_mb=1,
            refer_window=20, refer_min_films=5)
    assert (out / "logs" / "watch.log").read_text().count("operating point:") == 2
    shutil.copy(films[8], incoming / f"new_0{films[8].suffix}")
    W.watch(incoming, out, default_bundle_path(), backend="onnxruntime", once=True, stable_seconds=0.05, min_free_mb=1,
            refer_window=20, refer_min_films=5)
    saved = json.loads((out / STATE_FILE).read_text())
    assert saved["threshold"] != value and saved["films"] == 1 and saved["state"] == "warming_up"


def test_screen_reports_the_referral_rate(data_root, tmp_path):
    from tbedge.services.screen import screen

    films = real_images(data_root, 6, seed=3)
    low = screen(films, tmp_path / "a.jsonl", _with_threshold(tmp_path / "b1", 0.999999), backend="onnxruntime",
                 threads=1, refer_min_films=5)
    assert low.refer.state == "low" and low.refer.rate == 0.0 and len(low.refer.recent) >= 5
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(low.refer.recent) == sum(counted(r) for r in lines)
    ok = screen(films, tmp_path / "c.jsonl", default_bundle_path(), backend="onnxruntime", threads=1)
    assert ok.refer.state == "warming_up"  # 6 films < the default 50
