"""Triton Inference Server runner: the bundle's models served by a hub, called over gRPC.

Only tensors cross the network: decoding, mask cleaning and the crop stay on the client, which also
keeps the bundle (threshold, crop prep, self-test). On activation the runner refuses a server whose
model is not the bundle's: the model config's ``tbedge_*`` parameters (written by ``tbedge
export-triton``) must carry the bundle's sha256 for that role, and the served tensors must match the
manifest. A request that fails for want of a server (gone, restarting, overloaded) is retried with
backoff; after the last try :class:`~.base.RunnerUnavailable` fails the whole batch at once, so the
pipeline gives each of its films an ``error_*`` result instead of a half-scored batch.

``tritonclient`` (the ``triton`` extra) is imported inside functions only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from ...errors import TbedgeError
from .base import Runner, RunnerUnavailable, TensorSpec

log = logging.getLogger("tbedge.triton")

MODEL_NAMES = {"lungs": "tbedge_lungs", "classifier": "tbedge_classifier"}
# Model config parameters written by export-triton and checked here.
P_SHA = "tbedge_sha256"  # sha256 of the served file (model.onnx or model.plan)
P_ONNX_SHA = "tbedge_onnx_sha256"  # the bundle's ONNX model for this role (a plan's source)
P_FORMAT = "tbedge_format"  # "onnx" | "plan"
P_ROLE = "tbedge_role"
P_MANIFEST_SHA = "tbedge_manifest_sha256"  # the exported bundle's manifest.json (informative)
DEFAULT_PORT = 8001
# Triton's datatype names -> numpy (KServe v2 protocol).
V2_DTYPES = {"FP32": "float32", "FP16": "float16", "INT64": "int64", "INT32": "int32", "UINT8": "uint8",
             "INT8": "int8"}
# gRPC status codes worth another try: the server is away or busy, not the request wrong.
RETRY_CODES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
               "StatusCode.ABORTED", "StatusCode.CANCELLED")


class TritonError(TbedgeError):
    """A Triton server this bundle cannot use: unreachable at start, model missing or not the bundle's."""


def server_address(url: str) -> str:
    """``grpc://host:port`` (or ``host:port``) -> ``host:port`` for tritonclient.grpc."""
    u = urlparse(url if "://" in url else f"grpc://{url}")
    if u.scheme != "grpc":
        raise TritonError(f"--server {url!r}: only grpc://HOST:PORT is supported (Triton's gRPC port, "
                          f"{DEFAULT_PORT} by default)")
    if not u.hostname or (u.path not in ("", "/")):
        raise TritonError(f"--server {url!r}: expected grpc://HOST:PORT")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{host}:{u.port or DEFAULT_PORT}"


def retryable(exc: Exception) -> bool:
    """True for failures of the connection or the server, False for a request the server refused."""
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    if status is None:  # not a tritonclient error: a socket or gRPC failure below it
        return isinstance(exc, (ConnectionError, TimeoutError, OSError))
    return str(status) in RETRY_CODES


def expected_hashes(bundle, role: str) -> dict[str, str]:
    """{format: sha256} a server may serve for this role: the bundle's ONNX, or its TensorRT plan."""
    out = {"onnx": bundle.entry(role)["sha256"]}
    if bundle.plan(role):
        out["plan"] = bundle.plan(role)["sha256"]
    return out


def check_served(params: dict[str, str], bundle, role: str, model: str, server: str) -> str:
    """The served file's sha256 when the server's model is this bundle's ``role``; TritonError otherwise."""
    want = expected_hashes(bundle, role)
    fmt, sha = params.get(P_FORMAT, ""), params.get(P_SHA, "")
    if not sha:
        raise TritonError(f"{server}: model {model} carries no {P_SHA} parameter, so it cannot be matched to "
                          f"bundle {bundle.path}; export it with: tbedge export-triton BUNDLE --out MODEL_REPO")
    if fmt not in want or want[fmt] != sha or params.get(P_ONNX_SHA, want["onnx"]) != want["onnx"]:
        raise TritonError(f"{server}: model {model} is {fmt or '?'} {sha[:12]}…, not bundle {bundle.path}'s "
                          f"{role} model ({', '.join(f'{k} {v[:12]}…' for k, v in want.items())}); "
                          "serve this bundle's export, or give the bundle the server was exported from (--engine)")
    return sha


@dataclass
class TritonStats:
    """Where a client's time goes, summed over requests (bench reports it next to the server's side)."""

    requests: int = 0
    items: int = 0
    retries: int = 0
    serialise_ms: float = 0.0  # numpy -> request tensors
    rpc_ms: float = 0.0  # the gRPC call: protobuf encoding, network, server queue + compute, response
    deserialise_ms: float = 0.0  # response -> numpy
    bytes_sent: int = 0
    bytes_received: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class TritonRunner(Runner):
    backend = "triton"

    def __init__(self, url: str, model: str, bundle, role: str, retries: int = 3, backoff_s: float = 0.2,
                 timeout_s: float = 60.0):
        super().__init__(role)
        self.url, self.address = url, server_address(url)
        self.model, self.bundle, self.role = model, bundle, role
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.client = None
        self.version = ""
        self.max_batch = 1
        self.served_sha256: str | None = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._down = False  # the last request ran out of tries: the next one gets a single try
        self.stats = TritonStats()
        self.last_timings_ms: dict[str, float] | None = None

    @classmethod
    def from_bundle(cls, bundle, role: str, url: str) -> TritonRunner:
        return cls(url, MODEL_NAMES[role], bundle, role)

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(self.address)
        try:
            ready = self._call(lambda: self.client.is_model_ready(self.model))
            if not ready:
                raise TritonError(f"{self.url}: model {self.model} is not loaded; serve the repository written "
                                  "by tbedge export-triton (docs/triton.md)")
            cfg = self._call(lambda: self.client.get_model_config(self.model)).config
            meta = self._call(lambda: self.client.get_model_metadata(self.model))
        except RunnerUnavailable as e:
            self._close()
            raise TritonError(f"cannot reach the Triton server at {self.url}: {e}") from e
        except BaseException:
            self._close()
            raise
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        self.served_sha256 = check_served(params, self.bundle, self.role, self.model, self.url)
        self.version = max(meta.versions, key=int) if meta.versions else ""
        self.max_batch = max(1, int(cfg.max_batch_size))
        self._inputs = [_spec(t) for t in meta.inputs]
        self._outputs = [_spec(t) for t in meta.outputs]
        self._check_io()
        log.info("%s: %s version %s (%s), max batch %d", self.url, self.model, self.version,
                 params.get(P_FORMAT), self.max_batch)

    def _check_io(self) -> None:
        e = self.bundle.entry(self.role)
        want_in = (e["input"]["name"], tuple(-1 if d is None else d for d in e["input"]["shape"][1:]))
        got_in = [(s.name, tuple(-1 if d is None else d for d in s.shape[1:])) for s in self._inputs]
        missing = set(e["outputs"]) - {s.name for s in self._outputs}
        if got_in != [want_in] or missing:
            raise TritonError(f"{self.url}: model {self.model} takes {got_in} and gives "
                              f"{[s.name for s in self._outputs]}, the bundle's {self.role} model takes "
                              f"[{want_in}] and gives {e['outputs']}")

    def _close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel may fail; nothing to keep
                pass
        self.client = None

    def _deactivate(self) -> None:
        self._close()

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    # -- calls with retry ------------------------------------------------------------------
    def _call(self, fn):
        """``fn()`` with retries and exponential backoff on server/connection failures; after the last
        try RunnerUnavailable. While the server is known to be down, one try per call, so a run whose
        server died fails each remaining batch quickly instead of waiting out the backoff every time."""
        tries = 1 if self._down else self.retries + 1
        for k in range(tries):
            try:
                out = fn()
                self._down = False
                return out
            except Exception as e:  # noqa: BLE001 - sorted just below
                if not retryable(e):
                    raise
                last = e
                if k + 1 < tries:
                    self.stats.retries += 1
                    time.sleep(self.backoff_s * (2 ** k))
        self._down = True
        raise RunnerUnavailable(f"Triton server {self.url} unavailable after {tries} tries: "
                                f"{' '.join(str(last).split())[:200]}") from last

    # -- inference -------------------------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = int(next(iter(feed.values())).shape[0])
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in self._outputs}
        timings = {"serialise": 0.0, "rpc": 0.0, "deserialise": 0.0}
        for a in range(0, n, self.max_batch):  # a batch above the server's max goes in chunks
            got = self._infer_chunk({k: v[a:a + self.max_batch] for k, v in feed.items()}, timings)
            for k, v in got.items():
                parts[k].append(v)
        self.last_timings_ms = timings
        # Every chunk answered, or _infer_chunk raised and nothing of this batch is returned.
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}

    def _infer_chunk(self, feed: dict[str, np.ndarray], timings: dict[str, float]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient

        t0 = time.perf_counter()
        inputs = []
        for s in self._inputs:
            x = np.ascontiguousarray(feed[s.name], dtype=s.dtype)
            t = grpcclient.InferInput(s.name, list(x.shape), _v2(s.dtype))
            t.set_data_from_numpy(x)
            inputs.append(t)
            self.stats.bytes_sent += x.nbytes
        outputs = [grpcclient.InferRequestedOutput(s.name) for s in self._outputs]
        t1 = time.perf_counter()
        res = self._call(lambda: self.client.infer(self.model, inputs, model_version=self.version,
                                                   outputs=outputs, client_timeout=self.timeout_s))
        t2 = time.perf_counter()
        out = {s.name: res.as_numpy(s.name) for s in self._outputs}
        t3 = time.perf_counter()
        b = len(next(iter(feed.values())))
        if any(v is None or len(v) != b for v in out.values()):
            raise RuntimeError(f"{self.model}: the server answered {b} inputs with outputs of another length")
        st = self.stats
        st.requests += 1
        st.items += b
        st.batch_sizes[b] = st.batch_sizes.get(b, 0) + 1
        st.bytes_received += sum(v.nbytes for v in out.values())
        for key, ms in (("serialise", t1 - t0), ("rpc", t2 - t1), ("deserialise", t3 - t2)):
            timings[key] += ms * 1e3
            setattr(st, f"{key}_ms", getattr(st, f"{key}_ms") + ms * 1e3)
        return out


def _spec(t) -> TensorSpec:
    return TensorSpec(t.name, tuple(None if int(d) < 0 else int(d) for d in t.shape),
                      V2_DTYPES.get(t.datatype, t.datatype.lower()))


def _v2(dtype: str) -> str:
    return {v: k for k, v in V2_DTYPES.items()}[dtype]
