"""The CLI follows typer conventions and never shows a traceback for a user's mistake."""

import subprocess
import sys

import pytest

import tbedge


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tbedge", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tbedge {tbedge.__version__}"
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("screen", "segment", "train"):
        assert cmd in r.stdout


@pytest.mark.parametrize("args, expect", [
    (["screen", "/no/such/dir", "--output", "{tmp}/r.jsonl"], "no such file"),
    (["screen", "{tmp}", "--output", "{tmp}/r.jsonl", "--engine", "{tmp}"], "not a tbedge bundle"),
    (["screen", "{tmp}", "--output", "{tmp}/r.jsonl", "--backend", "cuda"], "unknown backend"),
    (["segment", "{tmp}/missing.png", "--out", "{tmp}/seg"], "no such file"),
    (["screen"], "missing"),
    (["set-threshold", "{tmp}/r.jsonl", "{tmp}/a.png", "--out", "{tmp}/site"], "label rows"),
    (["no-such-command"], "no such command"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, expect):
    (tmp_path / "a.png").write_bytes(b"")
    r = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    assert expect in out.lower()


def test_verbose_shows_details(tmp_path):
    r = run("--verbose", "screen", str(tmp_path), "--output", str(tmp_path / "r.jsonl"), "--engine", str(tmp_path))
    assert r.returncode != 0 and "Traceback" in r.stdout + r.stderr


def test_watch_once_exit_code_reaches_the_shell(tmp_path):
    """`tbedge watch --once` that gives up (here: not enough free space) exits 75, as documented, not 0."""
    (tmp_path / "inc").mkdir()
    r = run("watch", str(tmp_path / "inc"), "--out", str(tmp_path / "o"), "--once", "--min-free-mb", "99999999")
    assert r.returncode == 75, r.stderr


def test_a_one_line_error_stays_one_line_when_stderr_is_not_a_terminal(tmp_path):
    """Rich wrapped errors at 80 columns when stderr was a pipe (issue 21, defect 13)."""
    missing = tmp_path / ("a_rather_long_folder_name_" * 6) / "films"
    r = run("screen", str(missing), "--output", str(tmp_path / "r.jsonl"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(missing) in r.stderr, r.stderr
