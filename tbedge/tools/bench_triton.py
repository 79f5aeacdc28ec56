"""``tbedge bench --backend triton``: N concurrent clients against one Triton server (docs/triton.md).

For each client count, N child processes (``python -m tbedge.tools.bench_triton --child``) each run
the whole pipeline (decode, lungs over gRPC, mask cleaning and crop, classifier over gRPC) on the
images, cycled. They warm up, wait at a barrier, then measure for the same ``duration_s``, so the
measured phases overlap. The server's statistics are read at the barrier and after the run, so
their difference covers the measured traffic only (warm-up and self-tests excluded).

Reported per client count: throughput (all clients' films / the longest measured wall time), end
to end latency per film (p50 / p99 over every film of every client), and per model the server's
batch sizes (executions per batch size: what dynamic batching made of the clients' requests) and
where one request's time goes: client serialisation, network + gRPC + protobuf (the client's call
time less the server's own request time), server queue, server compute (input, infer, output), and
client deserialisation.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..runtime.bundle import ROLES
from ..runtime.runners.triton import MODEL_NAMES, TritonStats, server_address
from .bench import BenchError, _spawn, collect_images, latency_stats, write_json_atomic
from .host import host_facts

CHILD_MODULE = "tbedge.tools.bench_triton"
BARRIER_TIMEOUT_S = 600.0


# -- the server's side -------------------------------------------------------------------------
def server_stats(server: str) -> dict[str, dict]:
    """{model: cumulative statistics} of the tbedge models on ``server`` (tritonclient, JSON form)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server_address(server))
    try:
        out = {}
        for name in MODEL_NAMES.values():
            st = client.get_inference_statistics(name, as_json=True)["model_stats"]
            out[name] = st[0] if st else {}
        return out
    finally:
        client.close()


def _count_ns(d: dict | None) -> tuple[int, int]:
    d = d or {}
    return int(d.get("count", 0)), int(d.get("ns", 0))  # uint64 fields arrive as JSON strings


def stats_delta(before: dict, after: dict) -> dict:
    """What the server did between two :func:`server_stats` readings, per model."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        inf_a, inf_b = a.get("inference_stats", {}), b.get("inference_stats", {})
        requests = _count_ns(inf_a.get("success"))[0] - _count_ns(inf_b.get("success"))[0]
        per_req = {}
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            ns = _count_ns(inf_a.get(key))[1] - _count_ns(inf_b.get(key))[1]
            per_req[key] = ns / 1e6 / requests if requests else None
        sizes: dict[int, int] = {}
        old = {int(s["batch_size"]): _count_ns(s.get("compute_infer"))[0] for s in b.get("batch_stats", [])}
        for s in a.get("batch_stats", []):
            n = _count_ns(s.get("compute_infer"))[0] - old.get(int(s["batch_size"]), 0)
            if n > 0:
                sizes[int(s["batch_size"])] = n
        execs = sum(sizes.values())
        out[name] = {"requests": requests, "executions": execs,
                     "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
                     "mean_batch": sum(k * v for k, v in sizes.items()) / execs if execs else None,
                     "server_ms_per_request": {"total": per_req["success"], "queue": per_req["queue"],
                                               "compute_input": per_req["compute_input"],
                                               "compute_infer": per_req["compute_infer"],
                                               "compute_output": per_req["compute_output"]}}
    return out


# -- one client (child process) ----------------------------------------------------------------
def run_client_child(cfg: dict) -> dict:
    """One client: warm up, wait for the barrier's go, measure ``duration_s``; returns its figures."""
    from ..runtime.pipeline import Pipeline
    from .bench_child import StreamMeter

    with Pipeline(cfg["bundle"], backend=cfg["backend"], batch=cfg["batch"], threads=cfg["threads"],
                  strict_engine=True) as pipe:
        stream = StreamMeter(pipe.run, cfg["images"], result_of=lambda s: s.result)
        stream.warm(max(cfg["warmup"], pipe.batch))
        for r in pipe.runners.values():
            r.stats = TritonStats()  # count the measured phase only
        barrier = Path(cfg["barrier"])
        (barrier / f"ready-{cfg['client']}").touch()
        t0 = time.monotonic()
        while not (barrier / "go").exists():
            if time.monotonic() - t0 > BARRIER_TIMEOUT_S:
                raise BenchError("no go from the parent (barrier timed out)")
            time.sleep(0.01)
        stream.run(None, cfg["duration_s"])
        res = stream.summary()
        res["e2e_ms"] = stream.e2e  # raw, so the parent takes percentiles over all clients
        res["client"] = {role: r.stats.to_dict() for role, r in pipe.runners.items()}
        res["batch"] = pipe.batch
    return res


# -- the parent ------------------------------------------------------------------------------
def _one_count(n: int, common: dict, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="tbedge-bench-triton-") as bar:
        results: list[dict | None] = [None] * n

        def go_client(i: int) -> None:
            results[i] = _spawn(CHILD_MODULE, {**common, "label": f"client {i}", "client": i, "barrier": bar},
                                timeout_s)

        threads = [threading.Thread(target=go_client, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while sum(1 for p in Path(bar).glob("ready-*")) < n:
            if time.monotonic() - t0 > BARRIER_TIMEOUT_S or not all(t.is_alive() for t in threads):
                break  # a client that ended before the go failed: the others are measured all the same
            time.sleep(0.05)
        before = server_stats(common["server"])
        (Path(bar) / "go").touch()
        for t in threads:
            t.join()
        after = server_stats(common["server"])
    errors = [r.get("error") for r in results if r is None or "error" in r]
    if errors:
        return {"clients": n, "error": "; ".join(str(e) for e in errors)[:500]}
    return summarise_count(n, results, stats_delta(before, after))


def summarise_count(n: int, results: list[dict], server: dict) -> dict:
    images = sum(r["images"] for r in results)
    wall = max(r["wall_s"] for r in results)
    e2e = [v for r in results for v in r["e2e_ms"]]
    status: dict[str, int] = {}
    for r in results:
        for k, v in r["status_counts"].items():
            status[k] = status.get(k, 0) + v
    models = {}
    for role in ROLES:
        c = [r["client"][role] for r in results]
        req = sum(x["requests"] for x in c)
        srv = server.get(MODEL_NAMES[role], {})
        per = {k: sum(x[f"{k}_ms"] for x in c) / req if req else None for k in ("serialise", "rpc", "deserialise")}
        server_total = (srv.get("server_ms_per_request") or {}).get("total")
        models[role] = {
            "client_requests": req, "items_per_request": sum(x["items"] for x in c) / req if req else None,
            "bytes_per_request": {"sent": sum(x["bytes_sent"] for x in c) / req if req else None,
                                  "received": sum(x["bytes_received"] for x in c) / req if req else None},
            "client_ms_per_request": per,
            "network_grpc_ms_per_request": (per["rpc"] - server_total) if req and server_total is not None else None,
            "retries": sum(x["retries"] for x in c),
            "server": srv,
        }
    return {"clients": n, "batch": results[0]["batch"], "images": images, "wall_s": wall,
            "throughput_ips": images / wall if wall > 0 else 0.0, "status_counts": status,
            "latency_ms": {"e2e": latency_stats(e2e)}, "models": models}


def bench_clients(images: Sequence[str | Path] | None, engine: str | Path | None, backend: str,
                  clients: Sequence[int] = (1, 4, 8), batch: int = 8, threads: int = 0,
                  duration_s: float = 10.0, warmup: int = 16, json_path: str | Path | None = None,
                  progress: Callable[[str], None] | None = None, timeout_s: float = 900.0) -> dict:
    """Run 1, 4, 8 (``clients``) concurrent clients against the server in ``backend``
    (``triton:grpc://HOST:PORT``, see ``runtime.pipeline.join_backend``); returns the report."""
    from ..runtime.bundle import default_bundle_path
    from ..runtime.pipeline import split_backend

    name, server = split_backend(backend)
    if name != "triton" or not server:
        raise BenchError("bench_clients needs the triton backend with a server")
    if not clients or min(clients) < 1:
        raise BenchError("--clients: give counts of at least 1, e.g. 1,4,8")
    bundle = Path(engine) if engine else default_bundle_path()
    with tempfile.TemporaryDirectory(prefix="tbedge-bench-") as tmp:
        files = [str(p) for p in collect_images(images, Path(tmp))]
        common = {"bundle": str(bundle), "backend": backend, "server": server, "batch": int(batch),
                  "threads": int(threads), "images": files, "warmup": int(warmup), "duration_s": float(duration_s)}
        runs = []
        for n in clients:
            runs.append(_one_count(int(n), common, timeout_s))
            if progress:
                progress(f"{n} client(s)")
    report = {"kind": "triton-clients", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": host_facts(), "settings": {"server": server, "bundle": str(bundle), "images": len(files),
                                                 "batch": batch, "threads": threads, "duration_s": duration_s,
                                                 "warmup": warmup, "clients": list(clients)},
              "runs": runs}
    report["host"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if json_path:
        write_json_atomic(json_path, report)
    return report


def render(report: dict) -> str:
    """A short text table of a :func:`bench_clients` report."""
    lines = [f"triton {report['settings']['server']}, client batch {report['settings']['batch']}, "
             f"{report['settings']['duration_s']:g} s per count"]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"{r['clients']} client(s): error: {r['error']}")
            continue
        e = r["latency_ms"]["e2e"] or {}
        lines.append(f"{r['clients']} client(s): {r['throughput_ips']:.1f} img/s, e2e p50 {e.get('median', 0):.0f} ms "
                     f"p99 {e.get('p99', 0):.0f} ms")
        for role, m in r["models"].items():
            s = m["server"]
            c = m["client_ms_per_request"]
            lines.append(f"  {role}: server batches {s.get('batch_sizes')} (mean {s.get('mean_batch') or 0:.2f}); "
                         f"per request ms: serialise {c['serialise'] or 0:.2f}, network+gRPC "
                         f"{m['network_grpc_ms_per_request'] or 0:.2f}, server {_fmt_server(s)}, "
                         f"deserialise {c['deserialise'] or 0:.2f}")
    return "\n".join(lines)


def _fmt_server(s: dict) -> str:
    p = s.get("server_ms_per_request") or {}
    return (f"{p.get('total') or 0:.2f} (queue {p.get('queue') or 0:.2f}, compute "
            f"{(p.get('compute_input') or 0) + (p.get('compute_infer') or 0) + (p.get('compute_output') or 0):.2f})")


def _labelled_client(cfg: dict) -> dict:
    return {**run_client_child(cfg), "label": cfg.get("label")}


def child_main(argv: list[str] | None = None) -> int:
    """``--child``: one client process (configuration JSON on stdin -> one ``RESULT_MARK`` line)."""
    from .bench_child import child_main as run_child

    return run_child(argv, run=_labelled_client)


if __name__ == "__main__":
    sys.exit(child_main())
