"""tbedge runs on offline boxes: `screen`, `segment` and `watch` open no network socket and leave no
ONNX Runtime telemetry files behind. Each runs in its own network namespace (`unshare -n`) under
`strace`, which records every socket and connect call, with HOME in a temporary folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import _missing
from watch_support import real_images

REPO = Path(__file__).resolve().parents[1]
# ONNX Runtime's telemetry resolved its host about 10 s after `watch` started (defect 1 of issue 21).
WATCH_SECONDS = 13.0


def _sandbox() -> list[str]:
    """`unshare -n` (root) or `unshare -rn` (user namespaces), then strace."""
    if not shutil.which("strace") or not shutil.which("unshare"):
        _missing("strace and unshare are needed (apt-get install strace util-linux)")
    for u in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*u, "true"], capture_output=True).returncode == 0:
            return u
    _missing("no network namespace can be made here (unshare -n / -rn)")


def _start(home: Path, trace: Path, *args: str) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": path}
    env.pop("ORT_DISABLE_TELEMETRY", None)  # the product must switch it off itself
    cmd = [*_sandbox(), "strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace),
           sys.executable, "-m", "tbedge", *args]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _network_calls(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if "AF_INET" in line]


def test_screen_segment_and_watch_open_no_socket_and_write_no_telemetry(data_root, tmp_path):
    film = real_images(data_root, 1, seed=3)[0]
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / f"a{film.suffix}").write_bytes(film.read_bytes())
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / f"b{film.suffix}").write_bytes(film.read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    t0 = time.monotonic()
    watch = _start(home, tmp_path / "watch.trace", "watch", str(tmp_path / "inc"), "--out", str(tmp_path / "w"),
                   "--stable-seconds", "0.5")
    runs = {"screen": _start(home, tmp_path / "screen.trace", "screen", str(inp), "--output",
                             str(tmp_path / "r.jsonl")),
            "segment": _start(home, tmp_path / "segment.trace", "segment", str(inp), "--out", str(tmp_path / "seg"))}
    for name, p in runs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (name, out, err)
    time.sleep(max(0.0, WATCH_SECONDS - (time.monotonic() - t0)))
    os.killpg(watch.pid, signal.SIGTERM)
    watch.communicate(timeout=60)
    assert (tmp_path / "w" / "index.jsonl").read_text().count("\n") == 1  # it did score the film
    for name in ("screen", "segment", "watch"):
        assert _network_calls(tmp_path / f"{name}.trace") == [], name
    assert not (home / ".cache" / "Microsoft").exists()  # ONNX Runtime telemetry: deviceid, onnxruntime.db
