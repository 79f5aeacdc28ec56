"""Durable file writes and hashing, used by every module that writes results or models.

A write goes to a temporary name beside the target, is fsynced, renamed over the target, and
the directory is fsynced: a crash or power cut leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(d: str | Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


NAME_MAX_BYTES = 255  # one path component on Linux and macOS file systems


def cut_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` bytes on disk, never inside a character. A Linux name need not be
    UTF-8: its odd bytes arrive surrogate-escaped and count one byte each (a strict encode raised, and
    aborted a whole screen run with --overlays; found by tests/test_properties.py)."""
    out, n = [], 0
    for ch in name:
        n += len(ch.encode("utf-8", "surrogateescape"))
        if n > max_bytes:
            break
        out.append(ch)
    return "".join(out)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = f".tmp{os.getpid()}{path.suffix}"  # the temp name must fit NAME_MAX even when the target just does
    tmp = path.with_name("." + cut_name(path.name, NAME_MAX_BYTES - 1 - len(tail.encode())) + tail)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def try_lock(path: str | Path) -> int | None:
    """An exclusive advisory lock on ``path`` (created if missing, never truncated): the open fd that
    holds it, or None when another process does. Closing the fd releases it, as does process death."""
    import fcntl  # POSIX only, like every host this runs on

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
