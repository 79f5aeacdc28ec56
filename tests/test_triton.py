"""Triton Inference Server (issue 25): the exported model repository and its schema check, and
`tbedge screen|watch|bench --backend triton` against a real tritonserver (PyTriton's, on loopback,
serving the export through ONNX Runtime: tests/triton_support.py) on real films.

The PyTriton venv is built on first use (about a minute; kept in .cache/pytriton-venv). The
default bundle is int8, whose ONNX Runtime outputs differ between a batch of one and a larger batch
(docs/triton.md), so local and served runs are compared at the same client batch, which is the
server's batch with a single client: the server statistics confirm it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_module
from listen_support import wait_for
from watch_support import REPO, real_images, validate_result

from tbedge.runtime.bundle import default_bundle_path

BATCH = "8"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _tbedge(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tbedge", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _need_tritonclient():
    require_module("tritonclient.grpc", extra="dev")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    _need_tritonclient()
    out = tmp_path_factory.mktemp("triton") / "models"
    r = _tbedge("export-triton", str(default_bundle_path()), "--out", str(out), "--max-queue-delay-us", "2000")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    from triton_support import PyTritonServer

    s = PyTritonServer(repo, tmp_path_factory.mktemp("triton-log")).start()
    yield s
    s.close()


# -- the exported repository ---------------------------------------------------------------
def test_export_writes_a_repository_that_matches_the_onnx_graphs(repo):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from tbedge.build.triton_export import check_repository, onnx_io
    from tbedge.runtime.bundle import load_bundle, sha256_file

    b = load_bundle(default_bundle_path())
    assert check_repository(repo) == []
    for role, name in (("lungs", "tbedge_lungs"), ("classifier", "tbedge_classifier")):
        cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        graph = onnx_io(b.model_path(role))
        got = {k: [(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in getattr(cfg, k)]
               for k in ("input", "output")}
        assert sorted(got["input"]) == sorted(graph["input"]) and sorted(got["output"]) == sorted(graph["output"])
        assert got["input"][0][0] == b.entry(role)["input"]["name"]
        assert list(got["input"][0][2]) == b.entry(role)["input"]["shape"][1:]  # batch axis left to Triton
        assert sorted(o[0] for o in got["output"]) == sorted(b.entry(role)["outputs"])
        assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 32 and cfg.HasField("dynamic_batching")
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert list(cfg.version_policy.specific.versions) == [1]
        assert sha256_file(repo / name / "1" / "model.onnx") == b.entry(role)["sha256"]
        assert cfg.parameters["tbedge_sha256"].string_value == b.entry(role)["sha256"]
        assert json.loads((repo / name / "tbedge_manifest.json").read_text()) == b.manifest


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace("dims: 224", "dims: 256", 1), "do not match the ONNX graph"),
    (lambda t: t.replace('name: "probabilities"', 'name: "probs"'), "do not match the ONNX graph"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FP16", 1), "do not match the ONNX graph"),
    (lambda t: t.replace("max_batch_size: 32", "max_batch_size: 0"), "max_batch_size"),
    (lambda t: t.replace('backend: "onnxruntime"', 'backend: "pytorch"'), "needs onnxruntime"),
    (lambda t: t + "\nmax_batch: 8\n", "not a Triton ModelConfig"),
])
def test_check_rejects_a_mismatched_config(repo, tmp_path, edit, says):
    from tbedge.build.triton_export import check_repository

    bad = tmp_path / "models"
    shutil.copytree(repo, bad)
    cfg = bad / "tbedge_classifier" / "config.pbtxt"
    text = cfg.read_text()
    cfg.write_text(edit(text))
    assert cfg.read_text() != text
    problems = check_repository(bad)
    assert problems and any(says in p for p in problems), problems
    r = _tbedge("check-triton", str(bad))
    assert r.returncode == 2 and says in r.stderr


def test_check_rejects_a_swapped_model_file(repo, tmp_path):
    from tbedge.build.triton_export import check_repository

    bad = tmp_path / "models"
    shutil.copytree(repo, bad)
    shutil.copyfile(default_bundle_path().parent / "fp32" / "classifier.onnx", bad / "tbedge_classifier/1/model.onnx")
    assert any("sha256 differs" in p for p in check_repository(bad))


def test_export_refuses_to_replace_other_folders(repo, tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    r = _tbedge("export-triton", str(default_bundle_path()), "--out", str(other))
    assert r.returncode == 2 and "not a tbedge model repository" in r.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    r = _tbedge("export-triton", str(default_bundle_path()), "--out", str(other / "m"), "--format", "plan")
    assert r.returncode == 2 and "no TensorRT plans" in r.stderr


# -- against a real server -----------------------------------------------------------------------
def test_screen_on_triton_equals_local_onnxruntime(server, data_root, tmp_path):
    films = [str(p) for p in real_images(data_root, 104, seed=25)]
    before = server.stats("tbedge_classifier")
    remote, local = tmp_path / "triton.jsonl", tmp_path / "local.jsonl"
    r = _tbedge("screen", *films, "--output", str(remote), "--backend", "triton", "--server", server.url,
                "--batch", BATCH)
    assert r.returncode == 0, r.stderr
    r = _tbedge("screen", *films, "--output", str(local), "--backend", "onnxruntime", "--batch", BATCH)
    assert r.returncode == 0, r.stderr
    a, b = _read(remote), _read(local)
    assert [x["input"] for x in a] == films == [x["input"] for x in b]
    assert all(x["status"] == "ok" for x in a + b)
    for x, y in zip(a, b, strict=True):
        validate_result(x)
        assert x["triage"] == y["triage"] and x["lungs"]["bbox"] == y["lungs"]["bbox"]
        assert abs(x["tb_probability"] - y["tb_probability"]) <= 1e-5, (x["tb_probability"], y["tb_probability"])
        assert {m["backend"] for m in x["models"].values()} == {"triton"}
        assert x["models"]["classifier"]["sha256"] == y["models"]["classifier"]["sha256"]
    assert {x["triage"] for x in a} == {"refer", "clear"}  # both decisions were exercised
    after = server.stats("tbedge_classifier")
    done = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))  # JSON drops zeros
    assert done == len(films) + 2  # every film (and the self-test's two phantoms) went through the server
    sizes = {int(s["batch_size"]) for s in after.get("batch_stats", [])}
    assert sizes <= {2, 8, len(films) % 8}, sizes  # one client: the server ran the client's batches as sent


def test_a_server_serving_another_bundle_is_refused(server, data_root, tmp_path):
    film = str(real_images(data_root, 1, seed=3)[0])
    r = _tbedge("screen", film, "--output", str(tmp_path / "r.jsonl"), "--backend", "triton", "--server", server.url,
                "--engine", str(default_bundle_path().parent / "fp32"))
    assert r.returncode == 2, r.stderr
    assert "not bundle" in r.stderr and "tbedge_lungs" in r.stderr
    assert not (tmp_path / "r.jsonl").exists()
    r = _tbedge("screen", film, "--output", str(tmp_path / "r.jsonl"), "--backend", "triton")
    assert r.returncode == 2 and "--server" in r.stderr


def test_server_killed_mid_run_gives_error_results_and_loses_nothing(repo, data_root, tmp_path):
    from triton_support import PyTritonServer

    films = [str(p) for p in real_images(data_root, 160, seed=26)]
    out = tmp_path / "r.jsonl"
    partial = Path(str(out) + ".partial")
    srv = PyTritonServer(repo, tmp_path).start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tbedge", "screen", *films, "--output", str(out),
                                 "--backend", "triton", "--server", srv.url, "--batch", "4"],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        wait_for(lambda: partial.is_file() and len(partial.read_text().splitlines()) >= 12 or proc.poll() is not None,
                 300, "a dozen results")
        srv.kill()
        killed_after = len(partial.read_text().splitlines())
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        srv.close()
    assert proc.returncode == 0, stderr
    assert killed_after < len(films), "the run ended before the server was killed: no film was in flight"
    res = _read(out)
    assert [r["input"] for r in res] == films  # one line per input, in order: nothing lost or duplicated
    for r in res:
        validate_result(r)
    ok = [r for r in res if r["status"] == "ok"]
    bad = [r for r in res if r["status"] != "ok"]
    assert len(ok) >= 12 and len(bad) >= len(films) - killed_after - 4  # at most the batch in flight scored
    assert {r["status"] for r in bad} == {"error"}
    assert {r["reason"] for r in bad} <= {"error_segment", "error_classify"}
    assert all("unavailable" in r["detail"] for r in bad)
    assert all(r["tb_probability"] is None and r["triage"] is None for r in bad)  # nothing half-scored
    first_bad = res.index(bad[0])
    assert all(r["status"] == "ok" for r in res[:first_bad]) and all(r["status"] != "ok" for r in res[first_bad:])


def test_watch_scores_through_triton(server, data_root, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    for i, p in enumerate(real_images(data_root, 5, seed=27)):
        shutil.copyfile(p, incoming / f"{i}.png")
    r = _tbedge("watch", str(incoming), "--out", str(out), "--once", "--stable-seconds", "0", "--min-free-mb", "1",
                "--backend", "triton", "--server", server.url)
    assert r.returncode == 0, r.stderr
    res = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    assert len(res) == 5 and all(x["status"] == "ok" and x["models"]["lungs"]["backend"] == "triton" for x in res)


def test_bench_with_concurrent_clients_reads_the_server_batches(server, data_root, tmp_path):
    films = real_images(data_root, 6, seed=28)
    t0 = time.monotonic()
    r = _tbedge("bench", *map(str, films), "--backend", "triton", "--server", server.url, "--clients", "1,3",
                "--batch", "1", "--duration", "3", "--warmup", "2", "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "b.json").read_text())
    assert [x["clients"] for x in rep["runs"]] == [1, 3] and time.monotonic() - t0 < 300
    for run in rep["runs"]:
        assert "error" not in run and run["throughput_ips"] > 0 and run["status_counts"] == {"ok": run["images"]}
        assert run["latency_ms"]["e2e"]["median"] <= run["latency_ms"]["e2e"]["p99"]
        for role in ("lungs", "classifier"):
            m = run["models"][role]
            srv = m["server"]
            # Every request the clients made in the measured phase is in the server's statistics.
            assert srv["requests"] == m["client_requests"] > 0
            sizes = {int(k): v for k, v in srv["batch_sizes"].items()}
            assert sum(k * v for k, v in sizes.items()) == m["client_requests"]  # client batch 1: one item each
            assert max(sizes) <= run["clients"]
            # The server's own time per request is inside the client's call (up to two clocks' noise: on an
            # idle loopback the difference, network + gRPC, is well under a millisecond).
            assert 0 < srv["server_ms_per_request"]["total"] < 1.1 * m["client_ms_per_request"]["rpc"]
            assert m["network_grpc_ms_per_request"] == pytest.approx(
                m["client_ms_per_request"]["rpc"] - srv["server_ms_per_request"]["total"])
    assert "client(s)" in r.stdout and "network+gRPC" in r.stdout


# -- the pure parts -----------------------------------------------------------------------------
def test_backend_and_server_options():
    from tbedge.errors import TbedgeError
    from tbedge.runtime.pipeline import join_backend, split_backend
    from tbedge.runtime.runners.triton import TritonError, server_address

    assert server_address("grpc://127.0.0.1:9001") == "127.0.0.1:9001"
    assert server_address("hub.example.org") == "hub.example.org:8001"
    assert server_address("grpc://[::1]:8001") == "[::1]:8001"
    for bad in ("http://hub:8000", "grpc://hub:8001/models", "grpc://"):
        with pytest.raises(TritonError):
            server_address(bad)
    spec = join_backend("triton", "grpc://hub:8001")
    assert split_backend(spec) == ("triton", "grpc://hub:8001")
    assert split_backend("onnxruntime") == ("onnxruntime", None)
    with pytest.raises(TbedgeError, match="needs --server"):
        join_backend("triton", None)
    with pytest.raises(TbedgeError, match="--server is for --backend triton"):
        join_backend("onnxruntime", "grpc://hub:8001")


def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path, data_root):
    _need_tritonclient()
    from listen_support import free_port

    film = str(real_images(data_root, 1, seed=3)[0])
    t0 = time.monotonic()
    r = _tbedge("screen", film, "--output", str(tmp_path / "r.jsonl"), "--backend", "triton",
                "--server", f"grpc://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "cannot reach the Triton server" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60  # three retries with backoff, then up


def test_export_of_tensorrt_plans(tmp_path):
    """A bundle with plans exports them for the tensorrt_plan backend (the plan bytes are placeholders: no
    TensorRT runs here; what is tested is the repository and the hash rule the client applies to it)."""
    _need_tritonclient()
    from tbedge.build.triton_export import check_repository, export_triton, read_config
    from tbedge.runtime.bundle import load_bundle, sha256_file, write_manifest
    from tbedge.runtime.runners.triton import TritonError, check_served

    src = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), src)
    m = json.loads((src / "manifest.json").read_text())
    m.pop("format_version")
    m["plans"] = {}
    for role in ("lungs", "classifier"):
        (src / f"{role}.plan").write_bytes(f"placeholder {role} plan".encode())
        m["plans"][role] = {"file": f"{role}.plan", "sha256": sha256_file(src / f"{role}.plan"),
                            "trt_version": "10.3.0", "cuda_version": "12.6", "gpu_name": "H100",
                            "compute_capability": "9.0", "onnx_sha256": m["models"][role]["sha256"],
                            "precision": "int8",
                            "profile": {"input": "image", "min": [1], "opt": [8], "max": [16]}}
    write_manifest(src, m)
    b = load_bundle(src)
    with pytest.raises(Exception, match="GPU"):
        export_triton(src, tmp_path / "repo", device="cpu")
    s = export_triton(src, tmp_path / "repo")
    assert s["format"] == "plan" and s["device"] == "gpu"
    cfg = read_config(tmp_path / "repo" / "tbedge_lungs" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert [g.kind for g in cfg.instance_group] == [cfg.instance_group[0].KIND_GPU]
    assert (tmp_path / "repo" / "tbedge_lungs" / "1" / "model.plan").read_bytes() == b"placeholder lungs plan"
    assert check_repository(tmp_path / "repo", b) == []
    assert any("no ONNX graph" in p for p in check_repository(tmp_path / "repo"))  # a plan's tensors need its ONNX
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert check_served(params, b, "lungs", "tbedge_lungs", "grpc://hub") == b.plan("lungs")["sha256"]
    plain = load_bundle(default_bundle_path())  # same ONNX, no plans: it cannot vouch for the served plan
    with pytest.raises(TritonError, match="not bundle"):
        check_served(params, plain, "lungs", "tbedge_lungs", "grpc://hub")
    with pytest.raises(TritonError, match="not bundle"):
        check_served({**params, "tbedge_sha256": "0" * 64}, b, "lungs", "tbedge_lungs", "grpc://hub")
