"""The pipeline: load -> lungs (model + cleaning + crop) -> classifier (+ heat map) -> Result.

Decoding runs in a thread pool ahead of inference (OpenCV and ONNX Runtime release the GIL), so
decode and crop overlap the models; inference runs in batches. Results come back in input order.
``screen``, ``watch``, ``segment`` and ``bench`` all drive this class; none re-implements it.

Two memory paths, one pipeline: ONNX Runtime takes numpy (preprocessing and crops on the host);
with the TensorRT backend a film goes to the GPU once and stays there up to the probabilities
(``device_path``), in two slots so batch n + 1 is staged while batch n is classified.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import schema
from ..errors import TbedgeError
from . import lungs as L
from .bundle import ROLES, Bundle, SelfTestError, fp32_fallback, load_bundle, run_self_test
from .imaging import LoadedImage, load_image
from .runners.base import RunnerUnavailable

log = logging.getLogger("tbedge.pipeline")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "triton")


@dataclass
class Scored:
    """One processed input: the result plus the arrays that outputs (overlays, masks, DICOM) need."""

    result: schema.Result
    image: LoadedImage | None = None
    lungs: L.LungResult | None = None
    cam: np.ndarray | None = None  # TB class activation map (h, w), logits without bias
    classifier_input: np.ndarray | None = None  # (S, S, C), exactly as the classifier saw it (host path)
    lung_weights: np.ndarray | None = None  # device path: its lung-weight channel (the input stays on the GPU)


@dataclass
class _Item:
    path: Path
    image: LoadedImage | None
    result: schema.Result
    lung_in: np.ndarray | None = None
    lungs: L.LungResult | None = None
    crop: np.ndarray | None = None
    lung_weights: np.ndarray | None = None


def gpu_available() -> bool:
    """True when a CUDA device answers (cuda-python is imported lazily; False on any CPU box)."""
    from .gpu.device import gpu_available as probe

    return probe()[0]


def join_backend(backend: str, server: str | None) -> str:
    """One backend value for ``--backend`` and ``--server``: ``triton:grpc://host:8001`` for a Triton
    server, so the services pass it through to the pipeline as they pass any backend name."""
    if backend == "triton":
        if not server:
            raise TbedgeError("--backend triton needs --server grpc://HOST:PORT (or TBEDGE_TRITON_SERVER)")
        return f"triton:{server}"
    if server:
        raise TbedgeError(f"--server is for --backend triton, not {backend}")
    return backend


def split_backend(spec: str) -> tuple[str, str | None]:
    """``triton:URL`` -> ("triton", URL); any other backend name -> (name, None)."""
    name, sep, server = spec.partition(":")
    if name == "triton" and sep:
        return name, server
    return spec, None


def resolve_backend(bundle: Bundle, backend: str) -> str:
    backend = split_backend(backend)[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "tensorrt" if bundle.has_plans() and gpu_available() else "onnxruntime"
    return backend


def make_runner(bundle: Bundle, role: str, backend: str, threads: int = 0, server: str | None = None):
    if backend == "triton":
        if not server:
            raise TbedgeError("the triton backend needs a server: --backend triton --server grpc://HOST:PORT")
        from .runners.triton import TritonRunner  # lazy: tritonclient is an optional extra

        return TritonRunner.from_bundle(bundle, role, server)
    if backend == "tensorrt":
        from .runners.tensorrt import TensorRTRunner  # lazy: the CPU path never imports TensorRT

        return TensorRTRunner.from_bundle(bundle, role)
    from .runners.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(bundle.model_path(role), threads=threads, name=role)


@dataclass
class Fallback:
    """Why this pipeline scores with the fp32 models instead of the bundle it was given."""

    bundle: str  # the bundle that failed its self-test here
    precision: str  # its precision
    fp32_bundle: str  # the bundle used instead
    role: str
    drift: float
    atol: float
    cpu: str  # this host's CPU model, class and features
    detail: str  # what drifted, from which reference, against which tolerance

    def message(self) -> str:
        return (f"the {self.precision} engine's self-test failed on this CPU ({self.cpu}): {self.detail}; "
                f"scoring with the fp32 models instead ({self.fp32_bundle}). --strict-engine refuses instead")


class Pipeline:
    """Holds the two runners; use as a context manager, then call :meth:`run`."""

    def __init__(self, bundle: str | Path | Bundle | None = None, backend: str = "auto", batch: int = 0,
                 threads: int = 0, decode_workers: int = 2, self_test: bool = True,
                 max_pixels: int | None = None, roles: tuple[str, ...] = ROLES, strict_engine: bool = False):
        if roles not in (ROLES, ("lungs",)):
            raise ValueError(f"roles must be {ROLES} or ('lungs',), got {roles}")
        self.roles = roles  # ("lungs",): find the lungs only (tbedge segment); no classifier is loaded
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.backend = resolve_backend(self.bundle, backend)
        self.server = split_backend(backend)[1]  # the Triton server's URL (triton backend only)
        # 0 = auto: on a small CPU batch 1 measured fastest (tbedge bench, README); GPUs want batches, and a
        # Triton server pays a network round trip per request.
        self.batch = int(batch) if batch else (8 if self.backend in ("tensorrt", "triton") else 1)
        self.threads = threads
        self.decode_workers = max(1, decode_workers)
        self.self_test = self_test
        self.max_pixels = max_pixels
        self.runners: dict = {}
        self.models: dict[str, schema.ModelInfo] = {}
        self.self_test_deviation: dict[str, float] = {}
        self.strict_engine = strict_engine
        self.fallback: Fallback | None = None
        self.device = None  # device_path.DevicePath with the TensorRT backend
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        try:
            self._load_or_fall_back()
        except BaseException:  # __exit__ does not run when __enter__ fails: release what was loaded
            self._close_runners()
            raise
        self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="tbedge-decode")
        return self

    def _load_or_fall_back(self) -> None:
        try:
            self._load(self.bundle)
        except SelfTestError as e:
            self._close_runners()
            fb = None if self.strict_engine or self.backend != "onnxruntime" else fp32_fallback(self.bundle)
            if fb is None:
                raise
            self._fall_back(e, fb)

    def _fall_back(self, e: SelfTestError, fb: Bundle) -> None:
        from .cpu import probe

        self.fallback = Fallback(str(self.bundle.path), self.bundle.entry(e.role)["precision"], str(fb.path),
                                 e.role, e.drift, e.atol, probe().describe(), e.detail)
        log.warning("%s", self.fallback.message())
        self.bundle = fb
        self._load(fb)  # the fp32 models pass their own self-test or nothing scores
        for info in self.models.values():
            info.fallback_from = self.fallback.precision

    def _load(self, bundle: Bundle) -> None:
        for role in self.roles:
            r = make_runner(bundle, role, self.backend, self.threads, self.server)
            self.runners[role] = r
            r.activate()
            info = bundle.model_info(role, self.backend)
            if getattr(r, "served_sha256", None):  # what a model server says it serves (checked against the bundle)
                info["sha256"] = r.served_sha256
            self.models[role] = schema.ModelInfo(**info)
        if self.self_test:
            self.self_test_deviation = run_self_test(bundle, self.runners, self.roles)
        if self.backend == "tensorrt":
            from .device_path import DevicePath  # lazy: only the GPU path loads cuda-python

            caps = [r.max_batch for r in self.runners.values() if getattr(r, "max_batch", None)]
            self.batch = min([self.batch, *caps])  # a device batch is one engine call: within the profile
            self.device = DevicePath(bundle, self.runners, self.batch)

    def _close_runners(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
        for r in self.runners.values():
            r.deactivate()
        self.runners.clear()

    def __exit__(self, *exc):
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_runners()
        return False

    # -- stages ----------------------------------------------------------------------------
    def _decode(self, path: Path) -> _Item:
        t0 = time.perf_counter()
        res = schema.Result(input=str(path), sha256=None, status=schema.STATUS_OK)
        try:
            kw = {"max_pixels": self.max_pixels} if self.max_pixels else {}
            img = load_image(path, **kw)
        except schema.TbedgeInputError as e:
            res.status, res.reason, res.detail = schema.STATUS_REJECTED, e.reason, e.detail or None
            res.sha256 = getattr(e, "sha256", None)
            res.timing_ms["decode"] = _ms(t0)
            return _Item(path, None, res)
        except Exception as e:  # noqa: BLE001 - one bad file never stops the run
            log.warning("decode failed: %s", type(e).__name__)
            res.status, res.reason, res.detail = schema.STATUS_ERROR, "error_decode", type(e).__name__
            return _Item(path, None, res)
        res.timing_ms["decode"] = _ms(t0)
        res.sha256 = img.meta.sha256
        res.sop_instance_uid = img.meta.sop_instance_uid
        res.qa_flags = list(img.meta.qa_flags)
        t1 = time.perf_counter()
        item = _Item(path, img, res)
        if self.device is not None:  # the device path resizes on the GPU
            return item
        try:
            item.lung_in = L.preprocess(img.pixels, self.bundle.input_size("lungs"))
        except Exception as e:  # noqa: BLE001
            _fail(res, "preprocess", e)
        res.timing_ms["preprocess"] = _ms(t1)
        return item

    def _infer_batch(self, role: str, x: np.ndarray) -> list[dict[str, np.ndarray] | Exception]:
        """Per-item outputs for a batch; when the batch fails, retry items one by one so one bad
        input fails alone (its stage is then named in its result) and the others are scored."""
        name = self.bundle.entry(role)["input"]["name"]
        runner = self.runners[role]
        try:
            out = runner.infer({name: x})
            return [{k: v[i] for k, v in out.items()} for i in range(len(x))]
        except RunnerUnavailable as e:  # the backend is away, not one input bad: the batch fails as one
            return [e] * len(x)
        except Exception as e:  # noqa: BLE001
            if len(x) == 1:
                return [e]
        items: list = []
        for i in range(len(x)):
            try:
                out = runner.infer({name: x[i:i + 1]})
                items.append({k: v[0] for k, v in out.items()})
            except Exception as e:  # noqa: BLE001
                items.append(e)
        return items

    def _segment(self, items: list[_Item]) -> None:
        live = [it for it in items if it.result.status == schema.STATUS_OK]
        if not live:
            return
        t0 = time.perf_counter()
        outs = self._infer_batch("lungs", np.stack([it.lung_in for it in live]))
        per = _ms(t0) / len(live)
        for it, o in zip(live, outs, strict=True):
            it.result.timing_ms["segment"] = per
            if isinstance(o, Exception):
                _fail(it.result, "segment", o)
                continue
            self._find_lungs(it, o["mask"][..., 0], crop=True)

    def _find_lungs(self, it: _Item, heat: np.ndarray, crop: bool) -> None:
        """Heat map -> cleaned mask, QA, box (both paths); the host path also makes the classifier input."""
        t1 = time.perf_counter()
        try:
            it.lungs = L.analyse(heat, it.image.pixels.shape)
            it.result.lungs = schema.LungsInfo(list(it.lungs.box), round(it.lungs.qa.area_fraction, 4),
                                               it.lungs.qa.to_dict())
            if it.lungs.fallback:
                it.result.qa_flags.append("lungs_implausible")
            if crop and "classifier" in self.runners:
                it.crop = L.classifier_input(it.image.pixels, it.lungs, self.bundle.input_size("classifier"),
                                             self.bundle.crop_prep)
        except Exception as e:  # noqa: BLE001
            _fail(it.result, "clean_crop", e)
        it.result.timing_ms["clean_crop"] = _ms(t1)

    def _classify(self, items: list[_Item]) -> list[np.ndarray | None]:
        live = [it for it in items if it.result.status == schema.STATUS_OK]
        cams: dict[int, np.ndarray] = {}
        if live:
            t0 = time.perf_counter()
            outs = self._infer_batch("classifier", np.stack([it.crop for it in live]))
            cams = self._score(live, outs, _ms(t0) / len(live))
        return [cams.get(id(it)) for it in items]

    def _score(self, live: list[_Item], outs: list, per: float) -> dict[int, np.ndarray]:
        """Classifier outputs -> probabilities, score, triage; returns {id(item): CAM}."""
        cams: dict[int, np.ndarray] = {}
        thr = self.bundle.threshold
        names = self.bundle.class_names
        for it, o in zip(live, outs, strict=True):
            r = it.result
            r.timing_ms["classify"] = per
            if isinstance(o, Exception):
                _fail(r, "classify", o)
                continue
            p, cam = o["probabilities"], o["cam"]
            t1 = time.perf_counter()
            probs = {n: float(v) for n, v in zip(names, p, strict=True)}
            r.class_probabilities = probs
            r.tb_probability = probs["tb"]
            r.tb_score = schema.tb_score(probs["tb"])
            r.threshold = thr
            r.triage = schema.triage_for(probs["tb"], thr, r.qa_flags)
            r.models = dict(self.models)
            cams[id(it)] = cam
            it.lung_weights = o.get("lung_weights")
            r.timing_ms["postprocess"] = _ms(t1)
        return cams

    # -- driver ----------------------------------------------------------------------------
    def run(self, paths: Iterable[str | Path]) -> Iterator[Scored]:
        """Score ``paths`` in order; every input yields exactly one Scored, whatever happens."""
        if self._pool is None:
            raise RuntimeError("use Pipeline as a context manager")
        if self.device is not None:
            yield from self._run_on_device(self._batches(paths))
            return
        for items in self._batches(paths):
            yield from self.process_items(items)

    def _batches(self, paths: Iterable[str | Path]) -> Iterator[list[_Item]]:
        pending: deque = deque()
        it = iter(paths)
        ahead = self.batch * 2 + self.decode_workers

        def fill():
            while len(pending) < ahead:
                try:
                    p = Path(next(it))
                except StopIteration:
                    return
                pending.append(self._pool.submit(self._decode, p))

        fill()
        while pending:
            items = [pending.popleft().result() for _ in range(min(self.batch, len(pending)))]
            fill()  # keep the decoders busy while this batch runs through the models
            yield items

    def process_items(self, items: list[_Item]) -> Iterator[Scored]:
        self._segment(items)
        cams = self._classify(items) if "classifier" in self.runners else [None] * len(items)
        yield from self._finish(items, cams)

    def _finish(self, items: list[_Item], cams: list) -> Iterator[Scored]:
        for item, cam in zip(items, cams, strict=True):
            r = item.result
            r.timing_ms["total"] = round(sum(v for k, v in r.timing_ms.items() if k != "total"), 3)
            r.timing_ms = {k: round(v, 3) for k, v in r.timing_ms.items()}
            yield Scored(r, item.image, item.lungs, cam, item.crop, item.lung_weights)

    def score_one(self, path: str | Path) -> Scored:
        return next(self.run([path]))

    # -- the device path (TensorRT): films stay on the GPU ---------------------------------
    def _run_on_device(self, batches: Iterator[list[_Item]]) -> Iterator[Scored]:
        """Batch n + 1 is staged, segmented and cropped in one slot before batch n's results are
        collected from the other, so the host work of one overlaps the GPU work of the other."""
        prev = None
        for n, items in enumerate(batches):
            cur = self._device_front(items, n % 2)
            if prev is not None:
                yield from self._device_back(*prev)
            prev = cur
        if prev is not None:
            yield from self._device_back(*prev)

    def _device_front(self, items: list[_Item], slot: int) -> tuple:
        live = [it for it in items if it.result.status == schema.STATUS_OK]
        if not live:
            return items, None, []
        t0 = time.perf_counter()
        try:
            job = self.device.submit(slot, [it.image.pixels for it in live])
            t1 = time.perf_counter()
            heats = self.device.heats(job)
        except Exception as e:  # noqa: BLE001 - a device failure fails its batch, not the run
            for it in live:
                _fail(it.result, "segment", e)
            return items, None, []
        pre, seg = (t1 - t0) * 1e3 / len(live), _ms(t1) / len(live)
        for it, heat in zip(live, heats, strict=True):
            it.result.timing_ms.update(preprocess=pre, segment=seg)
            self._find_lungs(it, heat, crop=False)
        if "classifier" in self.runners:
            ok = [it.result.status == schema.STATUS_OK for it in live]
            jobs = [(it.lungs.box, None if it.lungs.fallback else it.lungs.mask) if good else None
                    for it, good in zip(live, ok, strict=True)]
            for stage, step in (("clean_crop", lambda: self.device.crop(job, jobs)),
                                ("classify", lambda: self.device.classify(job))):
                try:
                    step()
                except Exception as e:  # noqa: BLE001
                    for it, good in zip(live, ok, strict=True):
                        if good:
                            _fail(it.result, stage, e)
                    break
        return items, job, live

    def _device_back(self, items: list[_Item], job, live: list[_Item]) -> Iterator[Scored]:
        cams: dict[int, np.ndarray] = {}
        if job is not None:
            t0 = time.perf_counter()
            try:
                outs = self.device.collect(job)
            except Exception as e:  # noqa: BLE001
                stage = "classify" if "classifier" in self.runners else "segment"
                for it in live:
                    if it.result.status == schema.STATUS_OK:
                        _fail(it.result, stage, e)
                outs = None
            if outs is not None:
                good = [(it, o) for it, o in zip(live, outs, strict=True) if it.result.status == schema.STATUS_OK]
                cams = self._score([g[0] for g in good], [g[1] for g in good], _ms(t0) / len(live))
        yield from self._finish(items, [cams.get(id(it)) for it in items])


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _fail(res: schema.Result, stage: str, exc: Exception) -> None:
    log.warning("stage %s failed: %s", stage, type(exc).__name__)
    res.status, res.reason, res.detail = schema.STATUS_ERROR, f"error_{stage}", f"{type(exc).__name__}: {exc}"[:300]
