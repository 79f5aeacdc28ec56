"""Make the README's screenshots of `tbedge ui` (docs/img/ui-worklist.png, docs/img/ui-film.png) from synthetic
phantom films, never from patient films: phantoms (tbedge.runtime.bundle.phantom, blurred, with a few bright
blobs and film grain) are scored by `tbedge watch --once` with the shipped bundle, then `tbedge ui` is opened
in headless Chromium (Debian's, through Playwright, as tests/test_ui.py does).

    python tools/ui_screenshots.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img"


def phantoms(folder: Path, n: int = 7) -> None:
    from tbedge.runtime.bundle import phantom

    rng = np.random.default_rng(26)
    yy, xx = np.mgrid[0:512, 0:512] / 512
    for s in range(n):
        img = cv2.GaussianBlur(phantom(512, s % 3), (0, 0), 6)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0.02, 0.06)
            img = img + 0.25 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2))
        img = np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1)
        cv2.imwrite(str(folder / f"phantom_{s}.png"), (img * 255).astype(np.uint8))
    shutil.copyfile(folder / "phantom_0.png", folder / "phantom_0_again.png")  # a duplicate
    (folder / "notes.png").write_text("not an image\n")  # a rejected input


def main(chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        incoming, results = Path(tmp) / "in", Path(tmp) / "results"
        incoming.mkdir()
        phantoms(incoming)
        subprocess.run([sys.executable, "-m", "tbedge", "watch", str(incoming), "--out", str(results), "--once",
                        "--stable-seconds", "0.1", "--min-free-mb", "1"], env=env, check=True,
                       stderr=subprocess.DEVNULL)
        ui = subprocess.Popen([sys.executable, "-m", "tbedge", "ui", str(results), "--port", "8699"], env=env)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen("http://127.0.0.1:8699/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=chromium, headless=True)
                page = b.new_page(viewport={"width": 1200, "height": 680})
                page.goto("http://127.0.0.1:8699/")
                page.wait_for_selector("#threshold-line", state="attached")
                _save(page, OUT / "ui-worklist.png")
                page.click("#rows tr:not([data-status=rejected]) a")
                page.wait_for_function("document.body.dataset.heatReady == '1'")
                _save(page, OUT / "ui-film.png")
                b.close()
        finally:
            ui.terminate()
            ui.wait()


def _save(page, path: Path) -> None:
    """A screenshot, re-encoded as a 64-colour PNG: small in the repository."""
    img = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    data = img.reshape(-1, 3).astype(np.float32)
    _, labels, centres = cv2.kmeans(data, 64, None, (cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0), 1,
                                    cv2.KMEANS_PP_CENTERS)
    small = centres.astype(np.uint8)[labels.ravel()].reshape(img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(*(sys.argv[2:3] if sys.argv[1:2] == ["--chromium"] else []))
