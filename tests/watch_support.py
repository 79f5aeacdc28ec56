"""Shared helpers for the watch / DICOM / schema tests: the tiny bundle fixture, input sets built from
real images, a small JSON Schema validator, and the exactly-once outcome check."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_BUNDLE_CACHE: dict[str, Path] = {}


def get_tiny_bundle(tmp_path_factory) -> Path:
    """A tiny ONNX bundle, built once per session (TensorFlow export, ~10 s). Each test module wraps
    this in a ``tiny_bundle`` fixture that also requests ``tf_keras`` (CI fails without TensorFlow)."""
    if "b" not in _BUNDLE_CACHE:
        from tiny_bundle import build_tiny_bundle

        _BUNDLE_CACHE["b"] = build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")
    return _BUNDLE_CACHE["b"]


def real_images(data_root: Path, n: int, seed: int = 0) -> list[Path]:
    pool = sorted((data_root / "shenzhen_montgomery_512" / "images").rglob("*.png"))
    pool += sorted((data_root / "nih_cxr14_512" / "images").rglob("*.png"))
    if len(pool) < n:
        raise AssertionError(f"only {len(pool)} real images, need {n}")
    return random.Random(seed).sample(pool, n)


BAD_KINDS = ("empty", "truncated", "text", "random")


def make_bad(path: Path, kind: str, good: Path, rng: random.Random) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n")
    else:
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(2000)))


def expected_reason(path: Path) -> str | None:
    """What the loader says about a file (None when it loads): the reason watch must quarantine under."""
    from tbedge.runtime.imaging import load_image
    from tbedge.schema import TbedgeInputError

    try:
        load_image(path)
    except TbedgeInputError as e:
        return e.reason
    return None


def prepare_inputs(src: list[Path], dest_dir: Path, n_dups: int, n_bad_each: int, seed: int = 0) -> dict:
    """Plan of inputs: {name: (source bytes path or None, kind)}; files are written by ``place``."""
    rng = random.Random(seed)
    plan: dict[str, tuple[Path | None, str]] = {}
    for i, p in enumerate(src):
        sub = "site_b/" if i % 7 == 0 else ""
        plan[f"{sub}img_{i:04d}{p.suffix}"] = (p, "good")
    for k in range(n_dups):
        plan[f"again_{k:03d}.png"] = (rng.choice(src), "dup")
    for kind in BAD_KINDS:
        for k in range(n_bad_each):
            plan[f"bad_{kind}_{k}.{'dcm' if kind == 'random' else 'png'}"] = (rng.choice(src), kind)
    return plan


def place(plan_item: tuple[Path | None, str], dest: Path, rng: random.Random, via_temp: bool = False) -> None:
    source, kind = plan_item
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part") if via_temp else dest
    if kind in ("good", "dup"):
        shutil.copyfile(source, tmp)
    else:
        make_bad(tmp, kind, source, rng)
    if via_temp:
        os.replace(tmp, dest)


def run_watch(incoming: Path, out: Path, bundle: Path, *extra: str, **kw) -> subprocess.Popen:
    """``tbedge watch`` through the real entry point (``python -m tbedge`` is the console script's module)."""
    cmd = [sys.executable, "-m", "tbedge", "watch", str(incoming), "--out", str(out),
           "--engine", str(bundle), "--backend", "onnxruntime", "--threads", "1", "--min-free-mb", "1",
           *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=kw.get("stderr", subprocess.DEVNULL))


def result_files(out: Path) -> list[Path]:
    d = out / "results"
    return sorted(d.iterdir()) if d.is_dir() else []


# -- the results schema -----------------------------------------------------------------------------------
def schema_errors(value, schema: dict) -> list[str]:
    import jsonschema

    errors = jsonschema.Draft202012Validator(schema).iter_errors(value)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def validate_result(d: dict) -> None:
    from tbedge.schema import JSON_SCHEMA

    errs = schema_errors(d, JSON_SCHEMA)
    assert not errs, errs


# -- the exactly-once outcome ----------------------------------------------------------------------------
def check_outcome(incoming: Path, out: Path, plan: dict, reasons: dict[str, str]) -> dict:
    """Assert exactly one result per input, bad inputs quarantined under their reason, duplicates marked,
    a complete index with one line per input, no temp or partial files. Returns counts."""
    names = set(plan)
    left = [p for p in incoming.rglob("*") if p.is_file()]
    assert not left, f"{len(left)} inputs left in INCOMING"
    db = sqlite3.connect(out / "journal.sqlite")
    states = dict(db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
    db.close()
    assert states == {"done": len(names)}, states

    files = result_files(out)
    stray = [p.name for p in files if p.name.startswith(".") or not p.name.endswith(".json")]
    assert not stray, f"temp/partial files in results/: {stray[:5]}"
    results = [json.loads(p.read_text()) for p in files]
    by_input: dict[str, dict] = {}
    for r in results:
        validate_result(r)
        rel = Path(r["input"]).relative_to(incoming).as_posix()
        assert rel not in by_input, f"two results for {rel}"
        by_input[rel] = r
    assert set(by_input) == names, (len(by_input), len(names))

    originals: dict[str, str] = {}
    for name, (_, kind) in plan.items():
        r = by_input[name]
        if kind in ("good", "dup"):
            assert r["status"] == "ok", (name, r["status"], r["reason"])
        else:
            assert r["status"] == "rejected", (name, r["status"], r["reason"])
            assert r["reason"] == reasons[name], (name, r["reason"], reasons[name])
            assert r["duplicate_of"] is None
            assert (out / "quarantine" / r["reason"] / name).is_file(), name
    for r in sorted((r for r in results if r["status"] == "ok"), key=lambda r: r["input"]):
        if r["duplicate_of"] is None:
            assert r["sha256"] not in originals, "two originals for one content"
            originals[r["sha256"]] = r
    for r in results:
        if r["status"] == "ok" and r["duplicate_of"] is not None:
            first = originals[r["sha256"]]
            assert r["duplicate_of"] in (first["sha256"], first["sop_instance_uid"])
            assert r["tb_probability"] == first["tb_probability"]
    n_ok = sum(1 for k in plan.values() if k[1] in ("good", "dup"))
    processed = [p for p in (out / "processed").rglob("*") if p.is_file()]
    assert len(processed) == n_ok and not [p for p in processed if p.name.startswith(".")]

    jl = (out / "index.jsonl").read_bytes()
    assert jl.endswith(b"\n")
    rows = [json.loads(x) for x in jl.decode().splitlines()]
    assert len(rows) == len(names) and len({r["entry"] for r in rows}) == len(names)
    assert {r["input"] for r in rows} == names
    import csv

    with open(out / "index.csv", newline="") as f:
        crows = list(csv.DictReader(f))
    assert len(crows) == len(names) and {r["input"] for r in crows} == names
    assert len({r["entry"] for r in crows}) == len(names)
    return {"results": len(results), "ok": n_ok, "duplicates": sum(1 for r in results if r["duplicate_of"]),
            "quarantined": len(names) - n_ok}
