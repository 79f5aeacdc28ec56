"""Input discovery shared by every command: files, folders (recursive) and globs -> the files to score.

Kept below the services so that ``screen``, ``segment`` and ``bench`` share it without importing each other.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

SKIP_PREFIXES = (".", "~")
SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".jsonl", ".csv", ".json", ".txt", ".md")


def is_broken_link(p: Path) -> bool:
    """A symlink whose target is missing or a loop: it gets an ``unreadable`` line, never silence."""
    return p.is_symlink() and not p.exists()


def is_candidate(p: Path) -> bool:
    return ((p.is_file() or is_broken_link(p)) and not p.name.startswith(SKIP_PREFIXES)
            and p.suffix.lower() not in SKIP_SUFFIXES)


def input_key(p: Path) -> str:
    """One key per input file: its real path; a broken link is its own input (a loop cannot resolve)."""
    return os.path.abspath(p) if is_broken_link(p) else os.path.realpath(p)


def expand_inputs(items: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Files, folders (recursive) and globs -> (sorted unique files, roots for relative names).

    A path named outright always gets a line, whatever it is (a broken link or a FIFO is ``unreadable``)."""
    files: list[Path] = []
    roots: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            roots.append(p)
            files += [f for f in sorted(p.rglob("*")) if is_candidate(f)]
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {item}")
            files += [Path(m) for m in matches if is_candidate(Path(m))]
    seen, out = set(), []
    for f in files:
        k = input_key(f)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out, roots
