"""The CPU default on CPUs the developer does not own, under QEMU user-mode emulation (Debian's qemu-user).

ONNX Runtime picks its int8 kernels by CPUID, and QEMU's TCG answers CPUID for the model it is given:
``-cpu Haswell`` is an AVX2 CPU without AVX-512 or VNNI (the class whose U8S8 kernels saturate),
``-cpu Nehalem`` one with SSE4.2 and no AVX. Emulation is slow (an int8 film takes about 3 s, an fp32
one about 10 s), so fp32 references are computed natively: fp32 has no integer kernels to differ.
Emulation gives no timings; docs/cpu-classes.md has what was and was not measured on which CPU.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import _missing

from tbedge import datasets
from tbedge.build import gate as G
from tbedge.runtime.bundle import default_bundle_path, load_bundle

QEMU = shutil.which("qemu-x86_64")
FP32 = default_bundle_path().parent / "fp32"
N_PER_CLASS = 15  # 15 TB + 15 non-TB val films (225 pairs: one swapped pair is 0.0044 AUC); ~100 s a CPU model


@pytest.fixture(scope="module")
def qemu():
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 emulation tests run on an x86-64 host")
    if QEMU is None:
        _missing("qemu-x86_64 not found (apt-get install qemu-user; .ci/run installs it)")
    return QEMU


def _tbedge(*args, cpu: str | None = None, timeout=900):
    cmd = [sys.executable, "-m", "tbedge", *args]
    if cpu:
        cmd = [QEMU, "-cpu", cpu, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def films(data_root, tmp_path_factory) -> Path:
    """Val films (never used to build or calibrate the engine), half TB, chosen by a stable hash."""
    val = datasets.split(datasets.discover(data_root))["val"]
    order = sorted(val, key=lambda s: datasets.unit_hash(s.patient, 19))
    chosen = [s for s in order if s.label == "tb"][:N_PER_CLASS] + [s for s in order if s.label != "tb"][:N_PER_CLASS]
    d = tmp_path_factory.mktemp("films")
    for s in chosen:
        shutil.copy(s.path, d / f"{'tb' if s.label == 'tb' else 'non'}_{s.path.name}")
    return d


def _scores(path: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def native(films, tmp_path_factory) -> dict[str, dict[str, dict]]:
    out = tmp_path_factory.mktemp("native")
    res = {}
    for tag, engine in (("fp32", FP32), ("int8", default_bundle_path())):
        r = _tbedge("screen", str(films), "--output", str(out / f"{tag}.jsonl"), "--engine", str(engine),
                    "--strict-engine")
        assert r.returncode == 0, r.stderr
        res[tag] = _scores(out / f"{tag}.jsonl")
    return res


@pytest.fixture(scope="module")
def full_range_bundle(tmp_path_factory) -> Path:
    """The previous default: the same models quantized with full-range int8 weights (no reduce_range)."""
    from tbedge.build import precision as P
    from tbedge.calibration import ranges as R
    from tbedge.fsio import sha256_file

    b = tmp_path_factory.mktemp("old") / "int8_full_range"
    shutil.copytree(default_bundle_path(), b)
    m = json.loads((b / "manifest.json").read_text())
    table = R.read_table(b / "calibration.json")
    fp32 = load_bundle(FP32)
    for role in ("lungs", "classifier"):
        prep = P.prepare(fp32.model_path(role), b / f"{role}.prep.onnx")
        P.quantize(prep, table["ranges"][role], {**P.FORMS["cpu"], "reduce_range": False}, b / f"{role}.onnx")
        (b / f"{role}.prep.onnx").unlink()
        m["models"][role]["sha256"] = sha256_file(b / f"{role}.onnx")
        m["models"][role]["quantization"]["reduce_range"] = False
    # selftest.npz's own-output reference belongs to the shipped models: keep only the fp32 check here
    m["self_test"].pop("expected_atol", None)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_full_range_u8s8_passes_on_this_cpu_and_fails_on_emulated_avx2(qemu, films, full_range_bundle, tmp_path):
    """The old default: its self-test passes natively (VNNI) and fails on AVX2, so the checks below can fail."""
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(films.iterdir()), one)
    r = _tbedge("screen", str(one), "--output", str(tmp_path / "n.jsonl"), "--engine", str(full_range_bundle),
                "--strict-engine")
    from tbedge.runtime.cpu import probe

    if probe().u8s8_saturates:  # this host is itself a saturating CPU: the old form fails here too
        assert r.returncode == 2 and "self-test failed for lungs" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
    r = _tbedge("screen", str(one), "--output", str(tmp_path / "h.jsonl"), "--engine", str(full_range_bundle),
                "--strict-engine", cpu="Haswell")
    assert r.returncode == 2, r.stderr
    assert "self-test failed for lungs" in r.stderr and not (tmp_path / "h.jsonl").exists()


@pytest.mark.parametrize("cpu,exact", [("Haswell", True), ("Nehalem", False)])
def test_default_passes_the_gate_on_emulated_cpus(qemu, films, native, tmp_path, cpu, exact):
    """README command 1 with the shipped default on an emulated CPU: it starts (self-test), scores every film
    with int8 (no fallback), and its scores match fp32 within the build gate's limits. On AVX2 the reduce_range
    form gives the same numbers as on this CPU; SSE4 kernels round differently, so there only the gate holds."""
    out = tmp_path / "r.jsonl"
    r = _tbedge("screen", str(films), "--output", str(out), "--strict-engine", cpu=cpu)
    assert r.returncode == 0, r.stderr
    got = _scores(out)
    names = sorted(native["fp32"])
    assert sorted(got) == names
    for res in got.values():
        assert res["status"] == "ok" and res["models"]["lungs"]["precision"] == "int8"
        assert res["models"]["classifier"]["fallback_from"] is None
    y = np.array([n.startswith("tb_") for n in names])
    ref = np.array([native["fp32"][n]["tb_probability"] for n in names])
    emu = np.array([got[n]["tb_probability"] for n in names])
    nat = np.array([native["int8"][n]["tb_probability"] for n in names])
    thr = load_bundle(default_bundle_path()).threshold
    assert abs(G.auc(y, ref) - G.auc(y, emu)) <= G.MAX_DELTA_AUC
    assert G.threshold_flips(y, ref, emu, thr) <= G.MAX_TB_FLIPS
    if exact:
        assert [got[n]["triage"] for n in names] == [native["int8"][n]["triage"] for n in names]
        assert np.max(np.abs(emu - nat)) <= 1e-6
        assert [got[n]["lungs"]["bbox"] for n in names] == [native["int8"][n]["lungs"]["bbox"] for n in names]
    else:
        assert np.max(np.abs(emu - nat)) <= 0.05


def test_doctor_on_emulated_avx2(qemu):
    r = _tbedge("doctor", "--json", "--phantoms", "2", cpu="Haswell")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["cpu"]["class"] == "x86-64-avx2" and rep["cpu"]["u8s8_saturates"] is True
    assert "AVX2" in rep["cpu"]["features"] and "AVX512VNNI" not in rep["cpu"]["features"]
    assert all(b["self_test"]["passed"] for b in rep["bundles"])
    assert rep["screen_uses"]["precision"] == "int8" and rep["screen_uses"]["fallback"] is None
