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


# == one error base (issue 22) ====================================================================
def _user_error_classes() -> list[type]:
    """Every TbedgeError subclass in the package (every module imported first, so none is missed)."""
    import importlib
    import pkgutil

    from tbedge.errors import TbedgeError

    for m in pkgutil.walk_packages(tbedge.__path__, "tbedge."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
    out, todo = [], [TbedgeError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += c.__subclasses__()
    return sorted(set(out), key=lambda c: c.__qualname__)


def _instance(cls: type) -> Exception:
    two_lines = "first line\nsecond line"
    if cls.__name__ == "TbedgeInputError":
        return cls("unreadable", two_lines)
    if cls.__name__ == "SelfTestError":
        return cls("lungs", 0.9, 0.05, "its build-time outputs")
    if cls.__name__ == "GateFailure":
        from types import SimpleNamespace

        return cls(SimpleNamespace(failures=["classifier ΔAUC -0.02\nbelow -0.01", "2 flips"]))
    return cls(two_lines)


def test_every_user_fixable_error_derives_from_the_one_base():
    names = {c.__name__ for c in _user_error_classes()}
    assert {"BundleError", "SelfTestError", "TbedgeInputError", "PlanCompatError", "BuildError", "TensorRTBuildError",
            "ExportParityError", "LocalThresholdError", "GateFailure", "TrtCheckError", "BenchError",
            "CalibrationSetError", "UserError"} <= names, names


@pytest.mark.parametrize("cls", _user_error_classes(), ids=lambda c: c.__name__)
def test_each_user_error_is_one_line_and_exit_2(cls, monkeypatch, capsys, tmp_path):
    from tbedge import cli
    from tbedge.runtime.runners import tensorrt

    err = _instance(cls)

    def fail(_):
        raise err

    monkeypatch.setattr(tensorrt, "plans_ok", fail)
    assert cli.main(["check-plans", str(tmp_path)]) == 2
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text


def test_tensorrt_backend_without_plans_is_one_line(tmp_path):
    """`--backend tensorrt` on a bundle without plans: the rebuild command, one line, exit 2 (issue 22)."""
    import shutil

    from conftest import DATA

    shutil.copy(sorted((DATA / "nih_cxr14_512" / "images" / "no_finding").glob("*.png"))[0], tmp_path / "f.png")
    r = run("screen", str(tmp_path / "f.png"), "--output", str(tmp_path / "r.jsonl"), "--backend", "tensorrt")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no TensorRT plan" in lines[0] and "build-engine" in lines[0], r.stderr


def test_train_classifier_flags_fill_the_config(tmp_path, monkeypatch):
    """The background job's command line still parses; the rejected levers' flags fill ``experimental``."""
    from tbedge import cli
    from tbedge.train import classifier
    from tbedge.train.classifier import Experimental, TrainConfig

    got = {}

    def fake(data, arch, out, config=None, **options):
        got.update(data=data, arch=arch, out=out, config=config, options=options)
        return {"best": 0.5, "best_epoch": 0}

    monkeypatch.setattr(classifier, "train_classifier", fake)
    base = ["train", "classifier", "--arch", "resnet_s", "--prep", "masked", "--lung-power", "2", "--nih-weight",
            "0.3", "--sets", "all", "--epochs", "10", "--seed", "0", "--film-look", "1.0", "--data",
            str(tmp_path / "c.npz"), "--fold", "montgomery", "--out", str(tmp_path / "o")]
    assert cli.main(base) == 0
    assert got["config"] == TrainConfig(seed=0, epochs=10, fold="montgomery", prep="masked", lung_power=2.0,
                                        nih_weight=0.3, sets="all", film_look_p=1.0) and not got["options"]
    assert got["arch"] == "resnet_s" and got["data"] == tmp_path / "c.npz" and got["out"] == tmp_path / "o"
    assert cli.main([*base, "--nih-not-tb", "all", "--nih-aug-strength", "2", "--nih-normal-weight", "0",
                     "--nih-adversary", "0.5", "--average-from", "0.25"]) == 0
    assert got["config"].experimental == Experimental(nih_normal_weight=0.0, nih_not_tb="all", nih_aug_strength=2.0,
                                                      nih_adversary=0.5, average_from=0.25)
    assert cli.main([*base, "--mixup", "0.4"]) == 0
    assert got["config"].experimental == Experimental(mixup_alpha=0.4)


def test_build_engine_passes_a_build_config(tmp_path, monkeypatch):
    from tbedge.build import bundle_writer as BW

    got = {}
    monkeypatch.setattr(BW, "build_bundle", lambda lungs, cls, out, **kw: got.update(kw, lungs=lungs, cls=cls))
    BW.build_engine(tmp_path, False, "int8", "cpu", None, tmp_path / "out", tmp_path, threads=2)
    assert got["config"] == BW.BuildConfig("int8", "cpu", data_root=tmp_path, threads=2)
    assert got["lungs"] == tmp_path / "lungs.keras" and got["cls"] == tmp_path / "classifier.keras"
