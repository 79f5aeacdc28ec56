"""Helpers for tests/test_ui.py: start ``tbedge ui`` and ``tbedge watch`` through the real entry point on
loopback, raw HTTP (paths sent exactly as written, for the traversal tests), synthetic watch RESULTS, and
the folder CI keeps the screenshots in."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TBEDGE_ARTIFACTS", REPO / "artifacts")) / "ui"  # CI keeps artifacts/


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    """GET ``path`` exactly as written (no normalisation of ``..`` or escapes) from 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.putrequest("GET", path, skip_host=bool(headers and "Host" in headers))
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def start_ui(target: Path, *args: str, timeout: float = 30) -> tuple[subprocess.Popen, int]:
    """``tbedge ui TARGET --port P`` as a child process; returns once /healthz answers."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "tbedge", "ui", str(target), "--port", str(port), *args], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    headers = {}
    if "--token" in args:
        headers["Authorization"] = "Bearer " + args[args.index("--token") + 1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"tbedge ui exited {p.returncode}: {p.stderr.read()}")
        try:
            if get(port, "/healthz", headers, timeout=2)[0] == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.1)
    stop(p)
    raise AssertionError("tbedge ui did not answer in time")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_watch(incoming: Path, out: Path) -> subprocess.Popen:
    """``tbedge watch`` with the shipped default bundle (the real pipeline), quick to notice files."""
    cmd = [sys.executable, "-m", "tbedge", "watch", str(incoming), "--out", str(out), "--threads", "1",
           "--stable-seconds", "0.3", "--rescan-seconds", "1", "--min-free-mb", "1"]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def index_lines(out: Path) -> list[dict]:
    p = out / "index.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def wait_for_index(out: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = index_lines(out)
        if len(lines) >= n:
            return lines
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"tbedge watch exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"watch indexed {len(index_lines(out))} of {n} inputs in {timeout} s")


def synthetic_results(out: Path, n: int, seed: int = 0) -> dict:
    """A watch RESULTS folder with ``n`` synthetic results (index.jsonl + results/*.json; no films): what the
    viewer reads for its worklist. Returns counts by triage / status for the checks."""
    rng = random.Random(seed)
    (out / "results").mkdir(parents=True)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=n)
    counts = {"refer": 0, "clear": 0, "rejected": 0, "flagged": 0}
    with open(out / "index.jsonl", "w") as idx:
        for i in range(1, n + 1):
            sha = hashlib.sha256(f"synthetic {seed} {i}".encode()).hexdigest()
            ok = rng.random() > 0.03
            p = min(1.0, rng.lognormvariate(-3.3, 1.4)) if ok else None
            flags = ["ap_view"] if ok and rng.random() < 0.05 else []
            triage = None if not ok else ("refer" if p >= 0.035259 else "clear")
            r = {"schema_version": "1.0", "input": f"synthetic/{i}.png", "sha256": sha,
                 "status": "ok" if ok else "rejected", "reason": None if ok else "not_an_image", "detail": None,
                 "sop_instance_uid": None, "qa_flags": flags,
                 "tb_score": None if p is None else round(100 * p, 1), "tb_probability": p,
                 "class_probabilities": None if p is None else {"normal": 0.8 * (1 - p), "tb": p,
                                                                "other": 0.2 * (1 - p)},
                 "triage": triage, "threshold": 0.035259 if ok else None, "models": None,
                 "lungs": {"bbox": [40, 40, 470, 480], "area_fraction": 0.33, "qa": {}} if ok else None,
                 "timing_ms": {}, "duplicate_of": None, "outputs": None}
            (out / "results" / f"{sha}.json").write_text(json.dumps(r))
            line = {"entry": i, "scored_at": (start + dt.timedelta(minutes=i)).isoformat(timespec="seconds"),
                    "input": f"synthetic/{i}.png", "status": r["status"], "reason": r["reason"],
                    "tb_score": r["tb_score"], "triage": triage, "qa_flags": ";".join(flags), "duplicate_of": None,
                    "sha256": sha, "sop_instance_uid": None, "result": f"results/{sha}.json",
                    "moved_to": f"processed/{i}.png"}
            idx.write(json.dumps(line) + "\n")
            counts[triage or "rejected"] += 1
            counts["flagged"] += bool(flags)
    return counts


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of everything under ``root``: equal before and after = nothing written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
