"""Shared fixtures. With CI=true, missing ../shared/data or TensorFlow FAILS a test instead of
skipping it; only GPU/TensorRT tests may skip (each with its reason)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TBEDGE_DATA", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def fresh_process(cmd: list[str]) -> list[str]:
    """``cmd`` run as a grandchild through sh, so its peak RSS (ru_maxrss, and libFuzzer's -rss_limit_mb) is its
    own: a process started straight from this one inherits this test run's peak (GBs once TensorFlow loaded)."""
    return ["sh", "-c", '"$@"; exit $?', "sh", *cmd]


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required, not skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "shenzhen_montgomery_512").is_dir():
        _missing(f"real chest X-ray data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def all_sets_root(data_root) -> Path:
    """The shared data with the opt-in sets (tb_more_256, covid_256) as well."""
    for d in ("tb_more_256", "covid_256"):
        if not (data_root / d).is_dir():
            _missing(f"{d} not found under {data_root}")
    return data_root


def require_module(name: str, extra: str = "build"):
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"{name} is not installed (pip install -e '.[{extra}]')")


@pytest.fixture(scope="session")
def tf_keras():
    require_module("tensorflow")
    return require_module("keras")


@pytest.fixture(scope="session")
def tiny_bundle(tf_keras, tmp_path_factory) -> Path:
    """A tiny, untrained model bundle (fast): same export, manifest and runtime path as the real one."""
    from watch_support import get_tiny_bundle

    return get_tiny_bundle(tmp_path_factory)


@pytest.fixture
def sm_images(data_root) -> Path:
    return data_root / "shenzhen_montgomery_512" / "images"
