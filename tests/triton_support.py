"""A real Triton Inference Server for the tests: PyTriton's tritonserver on loopback, serving a model
repository written by ``tbedge export-triton`` through tools/pytriton_server.py.

PyTriton needs numpy < 2, so it lives in its own venv, built here on first use from
tools/pytriton-requirements.txt into .cache/pytriton-venv (gitignored; kept while the requirements
file is unchanged, so a CI run builds it once, in about a minute from the local package mirror).
tritonserver's Python backend stub links libpython: LD_LIBRARY_PATH gets the interpreter's LIBDIR.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from listen_support import HOST, free_port, wait_for
from watch_support import REPO

REQUIREMENTS = REPO / "tools" / "pytriton-requirements.txt"
SERVER_SCRIPT = REPO / "tools" / "pytriton_server.py"
VENV = Path(os.environ.get("TBEDGE_PYTRITON_VENV", REPO / ".cache" / "pytriton-venv"))


def _stamp() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()


def pytriton_python() -> Path:
    """The PyTriton venv's python, building the venv when it is missing or stale."""
    py, stamp = VENV / "bin" / "python", VENV / ".tbedge-stamp"
    if py.exists() and stamp.is_file() and stamp.read_text() == _stamp():
        return py
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # venv from the base interpreter (this one's, when run from a venv): its libpython is the one linked.
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"building the PyTriton venv failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    stamp.write_text(_stamp())  # last: a half-built venv has no stamp and is built again
    return py


class PyTritonServer:
    """tools/pytriton_server.py on free loopback ports, in its own process group (tritonserver is a child
    of it, so a kill takes both)."""

    def __init__(self, repo: Path, log_dir: Path):
        self.repo, self.log_path = repo, log_dir / f"pytriton-{os.getpid()}-{time.monotonic_ns()}.log"
        self.grpc, self.http, self.metrics = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"grpc://{HOST}:{self.grpc}"

    def start(self, timeout: float = 180) -> PyTritonServer:
        py = pytriton_python()
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(p for p in (libdir, os.environ.get(
            "LD_LIBRARY_PATH", "")) if p), PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)  # nothing of this venv's numpy 2 world may leak into the server's
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([str(py), str(SERVER_SCRIPT), str(self.repo), "--address", HOST,
                                      "--grpc-port", str(self.grpc), "--http-port", str(self.http),
                                      "--metrics-port", str(self.metrics)],
                                     env=env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or self.ready(), timeout, "the PyTriton server", every=0.5)
        assert self.proc.poll() is None, self.log_path.read_text()[-4000:]
        return self

    def ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            c = grpcclient.InferenceServerClient(f"{HOST}:{self.grpc}")
            try:
                return c.is_server_ready() and all(c.is_model_ready(m) for m in ("tbedge_lungs", "tbedge_classifier"))
            finally:
                c.close()
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def kill(self) -> None:
        """SIGKILL the server's whole process group (this test started it): no goodbye to clients."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            try:  # the group may outlive its leader (tritonserver after a crash of the script)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, AttributeError):
                pass
        self.log.close()

    def stats(self, model: str) -> dict:
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(f"{HOST}:{self.grpc}")
        try:
            return c.get_inference_statistics(model, as_json=True)["model_stats"][0]
        finally:
            c.close()
