"""`tbedge segment` on awkward names: one film whose outputs cannot be written (a 255-byte name used to
abort the run with the file name in the error; issue 21, defect 12) fails alone, named by content hash."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from watch_support import real_images


def test_one_failed_film_does_not_abort_segment_and_no_file_name_is_printed(data_root, tmp_path):
    films = real_images(data_root, 3, seed=21)
    src = tmp_path / "in"
    src.mkdir()
    long_name = "Doe_Jane_" + "x" * 242 + ".png"  # 255 bytes: a patient name can be in it
    (src / long_name).write_bytes(films[0].read_bytes())
    (src / "Roe_Richard.png").write_bytes(films[1].read_bytes())
    (src / "ok.png").write_bytes(films[2].read_bytes())
    out = tmp_path / "seg"
    sha = {n: hashlib.sha256((src / n).read_bytes()).hexdigest()[:12] for n in (long_name, "Roe_Richard.png", "ok.png")}
    (out / f"Roe_Richard_{sha['Roe_Richard.png']}_mask.png").mkdir(parents=True)  # this film's mask cannot land
    r = subprocess.run([sys.executable, "-m", "tbedge", "segment", str(src), "--out", str(out)], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 3, r.stderr
    assert "2 images" in r.stdout and "output_failed: 1" in r.stdout
    names = {p.name for p in out.iterdir() if p.is_file()}
    assert f"ok_{sha['ok.png']}_mask.png" in names and f"ok_{sha['ok.png']}_overlay.png" in names
    assert sum(sha[long_name] in n for n in names) == 2  # the 255-byte name's outputs, cut to fit
    assert all(len(n.encode()) <= 255 for n in names)
    assert sha["Roe_Richard.png"] in r.stderr  # the failure names the film by content hash ...
    for ident in ("Doe_Jane", "Roe_Richard", "xxxx"):
        assert ident not in r.stdout + r.stderr  # ... never by file name
