"""Coverage-guided fuzz targets (atheris / libFuzzer), run by tests/test_fuzz.py in a child process:

    python tests/fuzz_targets.py imaging|lungs CORPUS_DIR -max_total_time=60 -rss_limit_mb=1024

A finding is an exception the contract does not allow (load_image raises only TbedgeInputError;
analyse never raises), a broken invariant (an assertion), or an allocation over -rss_limit_mb /
-malloc_limit_mb: libFuzzer then writes the input as crash-*/oom-* and exits non-zero."""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["tbedge", "pydicom"]):
    import pydicom  # noqa: F401  (instrumented: the DICOM parser is part of the loader's attack surface)

    from tbedge.runtime import imaging, lungs
    from tbedge.schema import REASONS, TbedgeInputError

_FILE = os.path.join(tempfile.mkdtemp(prefix="tbedge-fuzz-"), "input")


def fuzz_imaging(data: bytes) -> None:
    with open(_FILE, "wb") as f:
        f.write(data)
    try:
        img = imaging.load_image(_FILE)
    except TbedgeInputError as e:
        assert e.reason in REASONS, e.reason
        return
    px = img.pixels
    assert px.dtype == np.float32 and px.ndim == 2 and min(px.shape) >= imaging.MIN_SIDE, (px.dtype, px.shape)
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0


def fuzz_lungs(data: bytes) -> None:
    """A heat map of any size and content, mapped to a native film of any plausible size."""
    fdp = atheris.FuzzedDataProvider(data)
    h, w = fdp.ConsumeIntInRange(1, 96), fdp.ConsumeIntInRange(1, 96)
    nh, nw = fdp.ConsumeIntInRange(1, 5000), fdp.ConsumeIntInRange(1, 5000)
    raw = np.frombuffer(fdp.ConsumeBytes(h * w), np.uint8)
    heat = np.zeros(h * w, np.float32)
    heat[:raw.size] = raw / np.float32(255)
    res = lungs.analyse(heat.reshape(h, w), (nh, nw))
    x0, y0, x1, y1 = res.box
    assert 0 <= x0 < x1 <= nw and 0 <= y0 < y1 <= nh, (res.box, nh, nw)
    assert res.mask.shape == (h, w) and set(np.unique(res.mask)) <= {0, 1}
    assert res.fallback or res.qa.plausible


TARGETS = {"imaging": fuzz_imaging, "lungs": fuzz_lungs}

if __name__ == "__main__":
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
