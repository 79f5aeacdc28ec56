"""tbedge bench: a short real run (tiny bundle, real films, Keras baseline) and its report schema.

The figures themselves are not asserted against targets here (the CPU is shared and the models
are tiny); what is asserted is that every figure is measured, consistent and ordered.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from tbedge import schema
from tbedge.tools import bench as B
from tbedge.tools import bench_child as BC

ORDER = ("min", "median", "p90", "p95", "p99", "max")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, tf_keras):
    """Tiny ONNX bundle + the same two tiny models as Keras files for the baseline."""
    from tiny_bundle import build_tiny_bundle, tiny_keras_dir

    bundle = build_tiny_bundle(tmp_path_factory.mktemp("bench") / "bundle")
    return bundle, tiny_keras_dir(bundle)


@pytest.fixture(scope="session")
def films(data_root) -> list[Path]:
    files = sorted((data_root / "shenzhen_montgomery_512" / "images").glob("*/*.png"))
    assert len(files) >= 4, "expected Shenzhen/Montgomery films under images/<class>/"
    return files[:: len(files) // 4][:4]


def assert_stats(st: dict, what: str) -> None:
    assert st is not None, f"{what}: no latency figures"
    assert set(B.STATS) <= set(st), f"{what}: missing {set(B.STATS) - set(st)}"
    vals = [st[k] for k in ORDER]
    assert all(v >= 0 for v in vals), what
    assert vals == sorted(vals), f"{what}: percentiles out of order {dict(zip(ORDER, vals, strict=True))}"
    assert st["min"] <= st["mean"] <= st["max"], what


def assert_entry(e: dict, rounds: int, images: int, stages: tuple = schema.STAGES) -> None:
    assert "error" not in e, e.get("error")
    assert e["rounds_ok"] == rounds and len(e["rounds"]) == rounds
    assert e["throughput_ips"] > 0 and e["model_only_ips"] > 0
    assert e["efficiency"] > 0
    assert e["peak_rss_mb"] > 10  # a Python process with numpy and a model is never below this
    assert e["images"] >= images
    assert e["status_counts"].get("ok") == e["images"], e["status_counts"]
    assert_stats(e["latency_ms"]["e2e"], f"{e['label']} e2e")
    assert_stats(e["latency_ms"]["service"], f"{e['label']} service")
    for s in stages:
        assert_stats(e["latency_ms"]["stages"][s], f"{e['label']} {s}")
    mo = e["model_only"]
    for k in ("per_batch", "lungs", "classifier"):
        assert_stats(mo["latency_ms"][k], f"{e['label']} model-only {k}")
    for key in B.HEADLINE:
        sp = e["spread"][key]
        assert sp["n"] == rounds and sp["min"] <= sp["q1"] <= sp["median"] <= sp["q3"] <= sp["max"]
    for r in e["rounds"]:
        # efficiency is computed from the same round's two throughputs
        assert r["efficiency"] == pytest.approx(r["throughput_ips"] / r["model_only"]["throughput_ips"])
        assert r["images"] / r["wall_s"] == pytest.approx(r["throughput_ips"])


def test_bench_report(tiny, films, tmp_path):
    bundle, kd = tiny
    out = tmp_path / "bench.json"
    ticks = []
    rep = B.bench([str(f) for f in films], [bundle, bundle], backend="onnxruntime", batch=2, threads=1,
                  iterations=4, warmup=2, rounds=2, json_path=out, progress=ticks.append, keras_dir=kd)
    text = out.read_text()
    assert json.loads(text) == json.loads(json.dumps(rep))
    # Image names identify patients in the public sets: the report only counts them.
    assert not any(f.stem in text for f in films)
    assert ticks == ["bundle fp32", "bundle fp32 #2", "keras baseline"] * 2  # interleaved rounds

    assert rep["bench_format"] == B.BENCH_FORMAT
    assert rep["settings"]["images"] == len(films)
    h = rep["host"]
    assert h["cpu"]["model"] and h["cpu"]["usable_cores"] >= 1
    assert h["versions"]["onnxruntime"] and "tensorrt" in h["versions"] and "gpu" in h
    assert len(h["loadavg_at_start"]) == 3 and len(h["loadavg_at_end"]) == 3

    assert [c["label"] for c in rep["configs"]] == ["bundle fp32", "bundle fp32 #2"]
    for c in rep["configs"]:
        assert_entry(c, rounds=2, images=4)
        assert c["backend"] == "onnxruntime" and c["bundle"]["precision"] == {"lungs": "fp32",
                                                                              "classifier": "fp32"}
        assert c["model_only"]["batch"] == 2 and c["model_only"]["device_ms"] is None
        assert c["device_ms"] is None  # the pipeline's device path is the TensorRT backend's
        ratio = c["throughput_ips"] / rep["baseline"]["throughput_ips"]
        assert c["speedup_vs_baseline"] == pytest.approx(ratio)
        assert set(c["targets"]) == set(B.TARGETS)
        for t in c["targets"].values():
            assert isinstance(t["met"], bool)

    base = rep["baseline"]
    assert base["kind"] == "baseline" and base["batch"] == 1
    assert_entry(base, rounds=2, images=4)
    assert base["backend"].startswith("keras")

    buf = io.StringIO()
    B.print_report(rep, Console(file=buf, width=160))
    shown = buf.getvalue()
    assert "bundle fp32 #2" in shown and "keras baseline" in shown and "decode" in shown


def test_baseline_skipped_and_failed_child(tiny, tmp_path):
    """No Keras models -> baseline skipped with a reason; a corrupt bundle -> that config errors,
    the run goes on; no images -> synthetic phantoms."""
    bundle, _ = tiny
    bad = tmp_path / "corrupt"
    shutil.copytree(bundle, bad)
    (bad / "lungs.onnx").write_bytes(b"not a model")
    rep = B.bench(None, [bundle, bad], backend="onnxruntime", batch=2, threads=1, iterations=2, warmup=1,
                  rounds=1, keras_dir=tmp_path / "no-keras-here")
    assert rep["settings"]["image_source"] == "phantoms"
    assert "Keras models not found" in rep["baseline"]["skipped"]
    good, broken = rep["configs"]
    assert_entry(good, rounds=1, images=2)
    assert "speedup_vs_baseline" not in good
    assert broken["rounds_ok"] == 0 and "does not match its manifest hash" in broken["error"]
    B.print_report(rep, Console(file=io.StringIO()))


def _fake_bundle(d: Path, lungs: str, cls: str, plans: dict | None = None) -> Path:
    d.mkdir(parents=True)
    models = {r: {"precision": p} for r, p in (("lungs", lungs), ("classifier", cls))}
    mf = {"format_version": 1, "models": models, "plans": plans or {}}
    (d / "manifest.json").write_text(json.dumps(mf))
    return d


def test_resolve_engines_precision(tmp_path):
    default = _fake_bundle(tmp_path / "default", "fp32", "fp32")
    int8 = _fake_bundle(tmp_path / "default-int8", "fp16", "int8",
                        plans={"lungs": {"precision": "int8"}, "classifier": {"precision": "int8"}})
    fp16 = _fake_bundle(tmp_path / "fp16", "fp16", "fp16")
    (tmp_path / "keras").mkdir()  # not a bundle: ignored
    assert B.resolve_engines([default]) == [default]
    assert B.resolve_engines([default], "int8") == [int8]
    assert B.resolve_engines([default], "fp32,int8") == [default, int8]
    # fp16 exists in two bundles: the one with fp16 throughout wins
    assert B.resolve_engines([default], "fp16") == [fp16]
    assert B.resolve_engines([default], "all") == [default, int8, fp16]
    assert B.resolve_engines([default, int8], "int8") == [int8]  # no duplicates
    mf = json.loads((int8 / "manifest.json").read_text())
    assert B.precision_label(B.bundle_precisions(mf)) == "fp16/int8"
    assert B.bundle_precisions(mf, "tensorrt")["lungs"] == "int8"
    with pytest.raises(B.BenchError, match="no bundle with precision 'bf16'"):
        B.resolve_engines([default], "bf16")
    with pytest.raises(B.BenchError, match="not a tbedge bundle"):
        B.resolve_engines([tmp_path / "keras"])


def test_stats_and_medians_keep_order():
    assert B.latency_stats([]) is None
    st = B.latency_stats([5.0, 1.0, 3.0, 100.0])
    assert st["min"] == 1.0 and st["max"] == 100.0 and st["median"] == 4.0 and st["mean"] == 27.25
    rounds = [{"a": B.latency_stats(v), "s": "x"} for v in ([1, 2, 3, 50], [10, 11, 12, 13], [0.5, 9, 9, 9])]
    med = B.median_tree(rounds)
    assert med["s"] == "x"
    assert [med["a"][k] for k in ORDER] == sorted(med["a"][k] for k in ORDER)
    assert med["a"]["max"] == 13.0


def test_slice_budgets():
    assert BC.slice_budgets(None, 10.0, 4, 8) == [(None, 2.5)] * 4
    assert BC.slice_budgets(4, None, 4, 2) == [(2, None)] * 2  # whole batches, never below one
    assert BC.slice_budgets(100, None, 4, 8) == [(32, None)] * 4  # at least the asked-for 100 in all
    assert BC.slice_budgets(3, 5.0, 4, 8) == [(8, 5.0)]


TRTEXEC_SAMPLE = """  # noqa: E501 (trtexec output, verbatim shape)[I] === Performance summary ===
[I] Throughput: 2143.51 qps
[I] Latency: min = 0.52 ms, max = 0.91 ms, mean = 0.56 ms, median = 0.55 ms, percentile(90%) = 0.6 ms
[I] H2D Latency: min = 0.03 ms, max = 0.05 ms, mean = 0.031 ms, median = 0.03 ms, percentile(90%) = 0.04 ms
[I] GPU Compute Time: min = 0.45 ms, max = 0.8 ms, mean = 0.47 ms, median = 0.46 ms, percentile(90%) = 0.5 ms
[I] D2H Latency: min = 0.02 ms, max = 0.04 ms, mean = 0.021 ms, median = 0.02 ms, percentile(90%) = 0.03 ms
"""


def test_parse_trtexec_summary():
    from tbedge.tools.bench import parse_trtexec

    t = parse_trtexec(TRTEXEC_SAMPLE)
    assert t["throughput_qps"] == 2143.51
    assert t["compute_ms"] == {"min": 0.45, "max": 0.8, "mean": 0.47, "median": 0.46}
    assert t["h2d_ms"]["mean"] == 0.031 and t["d2h_ms"]["median"] == 0.02
    assert t["latency_ms"]["min"] == 0.52
    assert parse_trtexec("no summary") == {}
