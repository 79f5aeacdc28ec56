"""Processes for the ``tbedge listen`` tests: the listener itself, a real Orthanc on loopback (its own
config, storage in tmp_path, free ports) and dcmtk's echoscu/storescu. Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import IN_CI
from watch_support import REPO

HOST = "127.0.0.1"
LISTEN_AE, ORTHANC_AE, TEST_AE = "TBEDGE", "ORTHANC", "TESTSCU"


def need(tool: str) -> str:
    import pytest

    # Not pynetdicom's own echoscu/storescu scripts in the venv: the independent sender is dcmtk's.
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not Path(d).resolve().is_relative_to(
        Path(sys.prefix).resolve())]
    path = shutil.which(tool, path=os.pathsep.join(dirs))
    if path is None:
        msg = f"{tool} not installed (apt-get install orthanc dcmtk)"
        if IN_CI:
            pytest.fail(f"{msg} (CI=true: required, not skipped)")
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def echo(port: int, calling: str = TEST_AE, called: str = LISTEN_AE, timeout: int = 10) -> int:
    """dcmtk's echoscu: 0 when the C-ECHO succeeded."""
    cmd = [need("echoscu"), "-to", str(timeout), "-ta", str(timeout), "-td", str(timeout),
           "-aet", calling, "-aec", called, HOST, str(port)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout * 3).returncode


def storescu(port: int, files: list[Path], calling: str = TEST_AE, timeout: int = 20) -> subprocess.CompletedProcess:
    cmd = [need("storescu"), "-to", str(timeout), "-ta", str(timeout), "-td", str(timeout), "-aet", calling,
           "-aec", LISTEN_AE, HOST, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 3)


class Listener:
    """``python -m tbedge listen`` on loopback; ``start()`` again after a kill resumes from RESULTS."""

    def __init__(self, out: Path, bundle: Path, send_to: str | None = None, *extra: str):
        self.out, self.bundle, self.port = out, bundle, free_port()
        self.send_to, self.extra = send_to, extra
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> Listener:
        cmd = [sys.executable, "-m", "tbedge", "listen", "--out", str(self.out), "--host", HOST,
               "--port", str(self.port), "--ae-title", LISTEN_AE, "--engine", str(self.bundle),
               "--backend", "onnxruntime", "--threads", "1", "--batch", "4", "--min-free-mb", "1",
               "--allow-ae", ORTHANC_AE, "--allow-ae", TEST_AE, "--max-dataset-mb", "4",
               "--retry-max-seconds", "1", *self.extra]
        if self.send_to:
            cmd += ["--send-to", self.send_to, "--calling-ae", LISTEN_AE]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(self.out.parent / f"listen-{self.port}.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(lambda: self.proc.poll() is not None or echo(self.port, timeout=3) == 0, timeout, "listen to start")
        assert self.proc.poll() is None, (self.out.parent / f"listen-{self.port}.stderr").read_text()[-3000:]
        return self

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def close(self) -> int:
        rc = stop(self.proc) if self.proc else 0
        self.log.close()
        return rc

    def results(self) -> list[dict]:
        d = self.out / "results"
        out = []
        # A dot name is a result still being written (fsio's temp name): not a result yet.
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            if not p.name.startswith("."):
                out.append(json.loads(p.read_text()))
        return out


class Orthanc:
    """Debian's Orthanc with its own config: loopback clients only, no remote access, storage in ``root``."""

    def __init__(self, root: Path, listener_port: int):
        self.root = root
        self.http, self.dicom = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        cfg = {"Name": "tbedge-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
               "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": ORTHANC_AE,
               "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
               "DicomServerEnabled": True, "Plugins": [], "DicomCheckCalledAet": False,
               "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "StableAge": 1,
               "DicomScuTimeout": 20, "DicomModalities": {"tbedge": [LISTEN_AE, HOST, listener_port]},
               "SaveJobs": False, "ConcurrentJobs": 1}
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(cfg, indent=1))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Orthanc:
        self.log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([need("Orthanc"), str(self.config)], stdout=self.log, stderr=self.log,
                                     cwd=self.root)
        wait_for(lambda: self.proc.poll() is not None or self._up(), timeout, "Orthanc to start")
        assert self.proc.poll() is None, (self.root / "orthanc.log").read_text()[-3000:]
        return self

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
            self.log.close()

    def _call(self, method: str, path: str, body: bytes | None = None, timeout: float = 60):
        req = urllib.request.Request(f"http://{HOST}:{self.http}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str):
        return self._call("GET", path, timeout=10)

    def post(self, path: str, body):
        return self._call("POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())

    def upload(self, path: Path) -> str:
        return self.post("/instances", path.read_bytes())["ID"]

    def send_to_tbedge(self, ids: list[str]) -> None:
        self.post("/modalities/tbedge/store", {"Resources": ids, "Synchronous": True})

    def study_instances(self, study_uid: str) -> list[dict]:
        """The SOP Class and SOP Instance UIDs of each instance in the study."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        tags = [self.get(f"/instances/{i}/simplified-tags") for i in found]
        return [{"sop_class": t.get("SOPClassUID"), "uid": t.get("SOPInstanceUID"),
                 "series": t.get("SeriesInstanceUID")} for t in tags]
