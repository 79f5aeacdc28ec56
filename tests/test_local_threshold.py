"""`tbedge set-threshold`: a programme re-locks the shipped bundle's threshold on its own labelled
films (here: Montgomery films screened by the shipped bundle), keyed by content hash."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tbedge.build.local_threshold import LocalThresholdError, read_labels, set_local_threshold
from tbedge.datasets import discover
from tbedge.runtime.bundle import default_bundle_path, load_bundle
from tbedge.runtime.imaging import load_image
from tbedge.train.metrics import sens_spec


@pytest.fixture(scope="module")
def screened(data_root, tmp_path_factory):
    """(results.jsonl, labels.csv, {sha256: is_tb}) for 25 TB and 25 normal Montgomery films."""
    from tbedge.services.screen import screen

    mc = [s for s in discover(data_root) if s.site == "montgomery"]
    pick = [s for s in mc if s.label == "tb"][:25] + [s for s in mc if s.label == "normal"][:25]
    d = tmp_path_factory.mktemp("local")
    films = d / "films"
    films.mkdir()
    truth = {}
    for i, s in enumerate(pick):  # anonymous names: results are keyed by content hash anyway
        dst = films / f"{i:03d}.png"
        dst.write_bytes(s.path.read_bytes())
        truth[load_image(dst).meta.sha256] = s.label == "tb"
    screen([films], d / "results.jsonl")
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sha256", "tb"])
        w.writerows([k, int(v)] for k, v in truth.items())
    return d / "results.jsonl", d / "labels.csv", truth


def test_relocks_the_threshold_on_local_films(screened, tmp_path):
    results, labels, truth = screened
    only = set_local_threshold(results, labels, None, None, report_dir=tmp_path / "rep")  # report, no bundle
    assert "bundle" not in only and only["at_previous"]["threshold"] == load_bundle(None).threshold
    assert (tmp_path / "rep" / "roc.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "local_threshold.json").read_text())["value"] == only["value"]
    rep = set_local_threshold(results, labels, None, tmp_path / "site", sensitivity=0.9)
    new = load_bundle(tmp_path / "site")  # verified: hashes and the threshold's classifier
    shipped = load_bundle(default_bundle_path())
    assert new.threshold == pytest.approx(rep["value"])
    assert new.manifest["threshold"]["previous"]["value"] == shipped.threshold
    assert new.manifest["threshold"]["classifier_sha256"] == shipped.manifest["threshold"]["classifier_sha256"]
    assert rep["n_tb"] + rep["n_not_tb"] + rep["always_referred"] == 50
    # recomputed independently from the results: sensitivity reaches 0.90 and no higher threshold does
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    used = [r for r in rows if "lungs_implausible" not in r["qa_flags"]]
    y = np.array([truth[r["sha256"]] for r in used])
    s = np.array([r["tb_probability"] for r in used])
    assert sens_spec(y, s, new.threshold)["sensitivity"] >= 0.9
    assert sens_spec(y, s, np.nextafter(new.threshold, 1))["sensitivity"] < 0.9
    assert rep["at_new"]["sensitivity"] == sens_spec(y, s, new.threshold)["sensitivity"]
    twice = set_local_threshold(results, labels, tmp_path / "site", tmp_path / "site2", sensitivity=0.95)
    kept = load_bundle(tmp_path / "site2").manifest["threshold"]["previous"]  # one level of history
    assert kept["value"] == new.threshold and "previous" not in kept and twice["previous"]["value"] == new.threshold
    folder = tmp_path / "watch_results"  # `tbedge watch` writes one result file per input
    folder.mkdir()
    for i, r in enumerate(rows + rows[:3]):  # three films scored twice count once
        (folder / f"{i:03d}.json").write_text(json.dumps(r))
    again = set_local_threshold(folder, labels, None, None)
    assert again["value"] == rep["value"] and again["repeated"] == 3


def test_refuses_too_few_films_and_another_classifiers_results(screened, tmp_path):
    results, labels, _ = screened
    with pytest.raises(LocalThresholdError, match="at least 30"):
        set_local_threshold(results, labels, None, tmp_path / "a", min_positives=30)
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    rows[0]["models"]["classifier"]["sha256"] = "0" * 64
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(LocalThresholdError, match="another classifier|not this bundle"):
        set_local_threshold(other, labels, None, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_label_file_errors_name_the_line(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("sha256,tb\n" + "a" * 64 + ",1\n" + "b" * 64 + ",yes\n")
    with pytest.raises(LocalThresholdError, match="line 3"):
        read_labels(p)
    p.write_text("patient,tb\nX,1\n")
    with pytest.raises(LocalThresholdError, match="sha256"):
        read_labels(p)
    p.write_text("sop_instance_uid,tb\n1.2.3,1\n1.2.4,0\n")
    assert read_labels(p) == {"1.2.3": True, "1.2.4": False}
