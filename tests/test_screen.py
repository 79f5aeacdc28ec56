"""tbedge screen stopped early, then resumed: the results file never looks complete when it is not, an
interrupted run's results are never overwritten, and --resume scores only the inputs they lack (real films)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from watch_support import real_images, validate_result

from tbedge.outputs.files import JsonlWriter
from tbedge.runtime.bundle import BundleError
from tbedge.services.screen import screen


def _inputs(data_root, tmp_path, n: int):
    inp = tmp_path / "in"
    inp.mkdir()
    for i, p in enumerate(real_images(data_root, n, seed=41)):
        (inp / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    (inp / "empty.png").write_bytes(b"")
    return inp


def test_interrupted_screen_keeps_its_results_and_resume_finishes(data_root, tiny_bundle, tmp_path):
    inp = _inputs(data_root, tmp_path, 6)
    out, partial = tmp_path / "r.jsonl", tmp_path / "r.jsonl.partial"
    kw = dict(engine=tiny_bundle, backend="onnxruntime", batch=2, threads=1)
    seen = []

    def ctrl_c_after_three(s):
        seen.append(s)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen([inp], out, progress=ctrl_c_after_three, **kw)
    assert not out.exists()  # never under the final name while incomplete
    kept = partial.read_text().splitlines()
    assert len(kept) == 3

    with pytest.raises(FileExistsError, match="--resume"):
        screen([inp], out, **kw)
    assert partial.read_text().splitlines() == kept

    with partial.open("a") as f:  # a kill in the middle of a line
        f.write('{"input": "tor')
    calls = []
    summary = screen([inp], out, progress=calls.append, resume=True, **kw)
    lines = out.read_text().splitlines()
    assert not partial.exists() and lines[:3] == kept
    results = [json.loads(line) for line in lines]
    for r in results:
        validate_result(r)
    assert sorted(r["input"] for r in results) == sorted(str(p) for p in inp.iterdir())  # once each
    assert summary.resumed == 3 and sum(c is not None for c in calls) == 4 and len(calls) == 7
    assert sum(summary.status.values()) == 7 and summary.status["rejected"] == 1


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(data_root, tiny_bundle, tmp_path):
    inp = _inputs(data_root, tmp_path, 1)
    out = tmp_path / "r.jsonl"
    with JsonlWriter(out) as first:
        first.write('{"input": "x.png"}')
        for resume in (False, True):
            with pytest.raises(FileExistsError, match="another tbedge screen is writing"):
                screen([inp], out, engine=tiny_bundle, backend="onnxruntime", threads=1, resume=resume)
    assert out.read_text() == '{"input": "x.png"}\n'


def test_a_run_that_fails_before_any_result_leaves_nothing_behind(data_root, tmp_path):
    inp = _inputs(data_root, tmp_path, 1)
    out = tmp_path / "r.jsonl"
    with pytest.raises(BundleError):
        screen([inp], out, engine=tmp_path, backend="onnxruntime")
    assert not out.exists() and not (tmp_path / "r.jsonl.partial").exists()


def test_cli_refuses_to_overwrite_an_interrupted_run(tmp_path):
    partial = tmp_path / "r.jsonl.partial"
    partial.write_text('{"input": "a.png"}\n')
    (tmp_path / "a.png").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "tbedge", "screen", str(tmp_path), "--output", str(tmp_path / "r.jsonl")],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "--resume" in r.stdout + r.stderr
    assert partial.read_text() == '{"input": "a.png"}\n'


def test_dangling_symlinks_and_loops_get_an_unreadable_line(data_root, tmp_path):
    """Every path given gets a line: a dangling symlink and a symlink loop, named or inside a folder,
    were dropped without a trace ("1 inputs" for 3 paths; issue 21, defect 8)."""
    film = real_images(data_root, 1, seed=5)[0]
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / f"film{film.suffix}").write_bytes(film.read_bytes())
    (inp / "dangling.png").symlink_to(tmp_path / "gone.png")
    (inp / "loop_a.png").symlink_to(inp / "loop_b.png")
    (inp / "loop_b.png").symlink_to(inp / "loop_a.png")
    named = tmp_path / "named_dangling.png"
    named.symlink_to(tmp_path / "also_gone.png")
    out = tmp_path / "r.jsonl"
    summary = screen([inp, named], out, threads=1)
    results = {r["input"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary.total == 5 and len(results) == 5
    for name in ("dangling.png", "loop_a.png", "loop_b.png"):
        r = results[str(inp / name)]
        assert (r["status"], r["reason"]) == ("rejected", "unreadable"), r
    assert results[str(named)]["reason"] == "unreadable"
    assert results[str(inp / f"film{film.suffix}")]["status"] == "ok"


def _two_folders_same_name(data_root, tmp_path):
    films = real_images(data_root, 2, seed=7)
    for d, film in zip("ab", films, strict=True):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(film.read_bytes())
    return str(tmp_path / "*" / "x.png")


def test_outputs_are_named_per_input_and_the_line_names_them(data_root, tmp_path):
    """A glob over folders with the same file name gave 3 results and 1 overlay (issue 21, defect 9):
    each input's overlay and mask are its own (<stem>_<sha256[:12]>), and its line names them."""
    pattern = _two_folders_same_name(data_root, tmp_path)
    long_name = tmp_path / "a" / ("é" * 125 + "y.png")  # a 255-byte name: its outputs must fit too
    long_name.write_bytes(real_images(data_root, 1, seed=8)[0].read_bytes())
    out = tmp_path / "r.jsonl"
    screen([pattern, long_name], out, overlays=tmp_path / "ov", masks=tmp_path / "mk", threads=1)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    written = []
    for r in results:
        validate_result(r)
        kinds = {o["kind"]: o for o in r["outputs"]}
        assert set(kinds) == {"overlay", "mask"} and all(o["error"] is None for o in kinds.values())
        for o in kinds.values():
            p = Path(o["path"])
            assert p.is_file() and r["sha256"][:12] in p.name and len(p.name.encode()) <= 255
            written.append(p)
    assert len(set(written)) == 6
    assert len(list((tmp_path / "ov").rglob("*.png"))) == 3


def test_a_failed_output_is_recorded_on_its_line_and_the_run_exits_3(data_root, tmp_path):
    """A failed overlay exited 0 with one unnamed warning (issue 21, defect 4)."""
    pattern = _two_folders_same_name(data_root, tmp_path)
    blocker = tmp_path / "ov"
    blocker.write_text("a file where the overlay folder should be")
    out = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "tbedge", "screen", pattern, "--output", str(out), "--overlays",
                        str(blocker), "--threads", "1"], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 3, r.stderr
    assert "outputs failed 2" in r.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(x["status"] == "ok" for x in lines)  # the scores are kept
    for x in lines:
        (o,) = x["outputs"]
        assert o["kind"] == "overlay" and o["error"] and o["path"].startswith(str(blocker))
        assert x["sha256"][:12] in r.stderr  # the warning names the input by content hash
    assert "x.png" not in r.stderr  # never by file name


def test_resume_matches_inputs_by_resolved_path_and_content(data_root, tmp_path, monkeypatch):
    """A relative-path run resumed with absolute paths scored inputs twice (131 lines for 100 files;
    issue 21, defect 11): each input once; a file rewritten between the runs is scored again."""
    films = real_images(data_root, 4, seed=11)
    inp = tmp_path / "in"
    inp.mkdir()
    for i, p in enumerate(films[:3]):
        (inp / f"{i}.png").write_bytes(p.read_bytes())
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(tmp_path)

    def stop_after_two(s, seen=[]):  # noqa: B006 - the calls of one run
        seen.append(s)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen(["in"], out, progress=stop_after_two, threads=1)
    first = [json.loads(line) for line in (tmp_path / "r.jsonl.partial").read_text().splitlines()]
    assert [r["input"] for r in first] == ["in/0.png", "in/1.png"]
    (inp / "1.png").write_bytes(films[3].read_bytes())  # rewritten: its old line is stale
    summary = screen([inp], out, resume=True, threads=1)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 3 and summary.total == 3 and summary.resumed == 1
    by_name = {Path(r["input"]).name: r for r in results}
    assert set(by_name) == {"0.png", "1.png", "2.png"}
    assert by_name["0.png"]["input"] == "in/0.png"  # kept from the first run
    assert by_name["1.png"]["sha256"] != first[1]["sha256"] and by_name["1.png"]["input"] == str(inp / "1.png")
