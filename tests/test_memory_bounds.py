"""Memory is bounded by decoded bytes, not pixel count (issue 21, defect 7).

Each load runs in a child process so its peak RSS is its own (ru_maxrss of a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from bombs import PNG_SIG, png_bomb, sparse_file
from conftest import fresh_process

from tbedge.runtime import imaging

# A fresh interpreter with tbedge.runtime.imaging (numpy, OpenCV) imported peaks near 50 MB; a decoded bomb
# is hundreds of MB (10000x10000 8-bit grey used 539 MB in load_image, 16-bit RGBA 1.6 GB).
RSS_BOUND_MB = 150
_CHILD = """
import json, resource, sys, time
from tbedge.runtime.imaging import load_image
from tbedge.schema import TbedgeInputError
t0 = time.perf_counter()
try:
    load_image(sys.argv[1])
    reason = None
except TbedgeInputError as e:
    reason = e.reason
print(json.dumps({"reason": reason, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def load_in_child(path) -> dict:
    out = subprocess.run(fresh_process([sys.executable, "-c", _CHILD, str(path)]), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bomb_generator_makes_valid_pngs(tmp_path):
    """The bombs below are real PNGs: a small one decodes to the zeros it declares."""
    for depth, ctype, shape in ((8, 0, (300, 200)), (16, 6, (300, 200, 4))):
        arr = cv2.imdecode(np.frombuffer(png_bomb(200, 300, depth, ctype), np.uint8), cv2.IMREAD_UNCHANGED)
        assert arr is not None and arr.shape == shape and not arr.any()
        assert arr.dtype == (np.uint16 if depth == 16 else np.uint8)


@pytest.mark.parametrize("depth,ctype,max_kb", [(8, 0, 120), (16, 6, 900)], ids=["8bit_grey", "16bit_rgba"])
def test_zlib_bomb_is_too_large_in_bounded_memory(tmp_path, depth, ctype, max_kb):
    """Before the fix both passed the 100 MP pixel limit (10000x10000 = 100 MP) and were decoded: 539 MB and
    1.6 GB peak in load_image alone."""
    data = png_bomb(10000, 10000, depth, ctype)
    assert len(data) < max_kb * 1024  # the 97 KB and 778 KB bombs
    zlib.decompressobj().decompress(data[41:41 + 4096])  # a sound zlib stream (IDAT starts at byte 41)
    f = tmp_path / "bomb.png"
    f.write_bytes(data)
    got = load_in_child(f)
    assert got["reason"] == "too_large"
    assert got["rss_mb"] < RSS_BOUND_MB, got


@pytest.mark.parametrize("head,reason", [(b"", "not_an_image"), (PNG_SIG, "too_large")], ids=["zeros", "png_magic"])
def test_huge_file_is_rejected_from_its_head(tmp_path, head, reason):
    """A 2 GB file (sparse: no disk used) was read whole before: 2.27 GB peak RSS for a non-image."""
    f = sparse_file(tmp_path / "big.png", 2 << 30, head)
    got = load_in_child(f)
    assert got["reason"] == reason
    assert got["rss_mb"] < RSS_BOUND_MB, got
    assert got["seconds"] < 2.0, got  # not hashed either: hashing 2 GB takes seconds


def test_decode_cost_counts_channels_and_bit_depth():
    grey8, rgba16 = imaging.decode_cost(100, 100, 1, 1), imaging.decode_cost(100, 100, 4, 2)
    assert rgba16 - grey8 == 100 * 100 * (4 * 2 + 2 - 1)
    # A Montgomery original (4020x4892, 16-bit) is read with the default limit.
    assert imaging.decode_cost(4020, 4892, 1, 2) <= imaging.DEFAULT_MAX_DECODE_BYTES


def test_decode_budget_caps_concurrent_decodes():
    """Four threads each wanting 40 % of the budget: never more than two hold it at once."""
    budget = imaging.DecodeBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def work():
        with budget.reserve(40):
            with lock:
                held[0] += 1
                peak[0] = max(peak[0], held[0])
            time.sleep(0.05)
            with lock:
                held[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and budget.used == 0


def test_decode_over_the_budget_runs_alone():
    """A caller's higher limit (one decode larger than the whole budget) waits for an empty budget, not forever."""
    budget = imaging.DecodeBudget(100)
    with budget.reserve(150):
        assert budget.used == 150
    assert budget.used == 0


def test_real_film_under_a_tight_limit(tmp_path, sm_images):
    """The limit is on the decode's cost: a 512x512 film needs ~3.4 MiB; 3 MiB refuses it, 4 MiB reads it."""
    f = next(iter(sorted((sm_images / "normal").glob("*.png"))))
    with pytest.raises(imaging.TbedgeInputError) as e:
        imaging.load_image(f, max_decode_bytes=3 << 20)
    assert e.value.reason == "too_large" and e.value.sha256
    assert imaging.load_image(f, max_decode_bytes=4 << 20).pixels.shape == (512, 512)
