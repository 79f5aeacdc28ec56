"""Replace a bundle directory in one step, and copy a bundle (optionally editing its manifest).

Kept free of ONNX and TensorFlow so a runtime-only install can re-lock a threshold
(``local_threshold``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import TbedgeError
from ..runtime.bundle import load_bundle, write_manifest


class BuildError(TbedgeError):
    pass


def swap_in(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` directory to ``out``, replacing a bundle there (never another folder)."""
    old = None
    if out.exists():
        if not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise BuildError(f"{out} exists and is not a bundle; refusing to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_bundle(src: Path, out: Path, edit: Callable[[dict, Path], dict] | None = None,
                keep: Callable[[Path], bool] | None = None) -> None:
    """Copy the bundle ``src`` to ``out`` (``out`` may be ``src``: replaced in one step). ``keep``
    picks the files copied (default: all); ``edit(manifest, stage)`` returns the copy's manifest and
    may add files to the staging folder. The copy is verified (hashes, threshold owner) before it
    replaces ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.copy-", dir=out.parent))
    try:
        for p in src.iterdir():
            if p.is_file() and (keep is None or keep(p)):
                shutil.copyfile(p, stage / p.name)
        if edit is not None:
            manifest = json.loads((stage / "manifest.json").read_text())
            manifest.pop("format_version", None)  # write_manifest stamps the current one
            write_manifest(stage, edit(manifest, stage))
        load_bundle(stage)
        swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
