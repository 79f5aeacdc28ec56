"""tbedge doctor on this CPU-only host, and the CPU classes that decide which int8 kernels run."""

from __future__ import annotations

import json
import platform
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tbedge.runtime.cpu import CLASSES, CpuInfo, probe
from tbedge.tools.doctor import shipped_bundles


@pytest.mark.parametrize("machine,features,cls,saturates", [
    ("x86_64", {"SSE41": True}, "x86-64-sse", True),
    ("x86_64", {"AVX2": True, "FMA3": True}, "x86-64-avx2", True),
    ("x86_64", {"AVX2": True, "AVX512F": True, "AVX512BW": True}, "x86-64-avx512", True),
    ("x86_64", {"AVX2": True, "AVX512BW": True, "AVX512VNNI": True}, "x86-64-vnni", False),
    ("x86_64", {"AVX2": True, "AVX_VNNI": True}, "x86-64-vnni", False),
    ("x86_64", {"AVX2": True, "AVX512VNNI": True, "AMX": True}, "x86-64-amx", False),
    ("aarch64", {"ASIMD": True, "ASIMDDP": True}, "aarch64", False),
])
def test_cpu_class_names_the_int8_kernel_family(machine, features, cls, saturates):
    info = CpuInfo(machine, "test cpu", features)
    assert info.cpu_class == cls and info.cpu_class in CLASSES
    assert info.u8s8_saturates is saturates
    assert cls in info.describe()


def test_probe_reads_this_process_cpu():
    info = probe()
    assert info.cpu_class in CLASSES and info.machine
    if info.machine == "x86_64":
        assert info.features.get("SSE2")  # x86-64 baseline, seen through numpy's own CPUID probe


def test_cpuid_is_read_directly_on_x86():
    from tbedge.runtime import cpu

    if platform.machine() != "x86_64":  # CPUID is an x86 instruction: elsewhere there is none to run
        assert cpu._cpuid(0) is None
        return
    leaf0 = cpu._cpuid(0)
    assert leaf0 is not None and leaf0[0] >= 1
    vendor = struct.pack("<III", leaf0[1], leaf0[3], leaf0[2]).decode()
    info = Path("/proc/cpuinfo").read_text()
    assert f"vendor_id\t: {vendor}" in info  # natively, CPUID and the kernel agree
    flags = cpu._proc_cpuinfo()[1]
    assert cpu._cpuid_vnni_amx()["AVX_VNNI"] == ("avx_vnni" in flags)


def test_host_cpuinfo_is_not_trusted_when_it_disagrees_with_cpuid(monkeypatch):
    """Where CPUID cannot be run, /proc/cpuinfo names AVX-VNNI only if it is this process's CPU: under an
    emulated AVX2 CPU on an AVX-512 host, the host's flags must not make the class VNNI."""
    from tbedge.runtime import cpu

    host = {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}
    monkeypatch.setattr(cpu, "_cpuid_vnni_amx", lambda: None)
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: ("host", host))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "_numpy_features", lambda: {"SSE2": True, "AVX2": True})  # what the emulator shows
    assert cpu.probe().cpu_class == "x86-64-avx2"
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: ("alder lake", {"avx2", "avx_vnni"}))  # no AVX-512: agrees
    assert cpu.probe().cpu_class == "x86-64-vnni"


def test_doctor_json_reports_host_bundles_and_speed():
    r = subprocess.run([sys.executable, "-m", "tbedge", "doctor", "--json", "--phantoms", "4"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["format"] == 1 and rep["ok"] is True
    assert rep["cpu"]["class"] == probe().cpu_class and rep["cpu"]["cores"] >= 1
    assert rep["memory"]["total_mb"] > 0 and rep["disk"]["free_mb"] > 0
    assert "CPUExecutionProvider" in rep["runtimes"]["onnxruntime"]["providers"]
    assert rep["runtimes"]["cuda"]["available"] in (True, False)
    names = {b["path"] for b in rep["bundles"]}
    assert names == {str(p) for p in shipped_bundles()} and len(names) >= 2
    for b in rep["bundles"]:  # every shipped bundle must pass its self-test on this CPU
        assert b["self_test"]["passed"], b
        assert set(b["self_test"]["deviation"]) == {"lungs", "classifier"}
    u = rep["screen_uses"]
    assert u["fallback"] is None and u["precision"] == "int8" and u["backend"] == "onnxruntime"
    assert rep["speed"]["images"] == 4 and rep["speed"]["images_per_s"] > 0 and rep["speed"]["all_scored"]


def test_doctor_text_says_what_screen_uses():
    r = subprocess.run([sys.executable, "-m", "tbedge", "doctor", "--phantoms", "2"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "screen   uses" in r.stdout and "self-test passes" in r.stdout and r.stdout.rstrip().endswith("ok")
