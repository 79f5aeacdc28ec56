"""The default bundle's self-test drift on this CPU, against fp32 and against its own build-time outputs (which
`tbedge doctor` does not print). Research, not product. Run it under emulation to see another CPU class:

  qemu-x86_64 -cpu Haswell .venv/bin/python research/selftest_drift.py
"""
import numpy as np

from tbedge.runtime.bundle import _max_drift, default_bundle_path, load_bundle, self_test_inputs
from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

b = load_bundle(default_bundle_path())
ref = np.load(b.path / b.manifest["self_test"]["file"])
inp = self_test_inputs(b)
for role in ("lungs", "classifier"):
    with OnnxRuntimeRunner(b.model_path(role), threads=1) as r:
        out = r.infer({b.entry(role)["input"]["name"]: inp[role]})
    print(role, f"vs fp32 {_max_drift(b, role, out, ref, ''):.4g}",
          f"vs own build-time {_max_drift(b, role, out, ref, 'expected/'):.4g}")
