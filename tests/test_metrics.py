"""Metrics against hand-computed cases (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from tbedge.train import metrics as M


def test_auc_known_rankings():
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # pairs (pos, neg): (0.35,0.1) win, (0.35,0.4) lose, (0.8,0.1) win, (0.8,0.4) win -> 3/4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # ties count one half: one tied pair of four
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.4 * y, 2)  # rounded: many ties
    pos, neg = s[y][:, None], s[~y][None, :]
    brute = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert M.roc_auc(y, s) == pytest.approx(brute, abs=1e-12)


def test_auc_rejects_one_class_and_nan():
    with pytest.raises(ValueError):
        M.roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError):
        M.roc_auc([0, 1], [np.nan, 0.3])


def test_roc_curve_endpoints_and_area():
    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.5
    s = rng.random(200) + y
    fpr, tpr, thr = M.roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(thr) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(y, s))


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.random(150) < 0.4
    s = rng.random(150) + 0.6 * y
    a = M.bootstrap_auc(y, s, n_boot=500, seed=7)
    b = M.bootstrap_auc(y, s, n_boot=500, seed=7)
    assert a == b
    assert a["ci_low"] < a["auc"] < a["ci_high"]
    assert 0.05 < a["ci_high"] - a["ci_low"] < 0.3


def test_paired_delta():
    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.5
    good = rng.random(200) + 1.5 * y
    bad = rng.random(200) + 0.2 * y
    d = M.paired_bootstrap_delta(y, good, bad, n_boot=500)
    assert d["delta"] == pytest.approx(M.roc_auc(y, good) - M.roc_auc(y, bad))
    assert d["ci_low"] > 0 and d["p_two_sided"] < 0.01
    same = M.paired_bootstrap_delta(y, good, good, n_boot=200)
    assert same["delta"] == 0 and same["ci_low"] == same["ci_high"] == 0


def test_sens_spec_and_threshold_rule():
    y = np.array([1] * 10 + [0] * 10)
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.2,
                  0.55, 0.45, 0.4, 0.35, 0.3, 0.25, 0.15, 0.1, 0.05, 0.01])
    thr = M.threshold_at_sensitivity(y, s, 0.9)  # 9 of 10 positives -> the 9th highest positive
    assert thr == 0.5
    r = M.sens_spec(y, s, thr)
    assert r["sensitivity"] == 0.9 and r["specificity"] == 0.9  # only 0.55 of the negatives refers
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (9, 1, 9, 1)
    assert r["sensitivity_ci"][0] < 0.9 < r["sensitivity_ci"][1]
    # No higher threshold keeps sensitivity >= 0.9, so specificity is the best possible there.
    assert M.sens_spec(y, s, np.nextafter(thr, 1))["sensitivity"] < 0.9


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_meets_target_on_random_data(target):
    rng = np.random.default_rng(5)
    y = rng.random(123) < 0.35
    s = np.round(rng.random(123) + 0.5 * y, 2)
    thr = M.threshold_at_sensitivity(y, s, target)
    assert M.sens_spec(y, s, thr)["sensitivity"] >= target
    higher = s[s > thr]
    if len(higher):
        assert M.sens_spec(y, s, higher.min())["sensitivity"] < target


def test_confusion_and_evaluate_breakdown(tmp_path):
    assert M.confusion([0, 1, 2, 2], [0, 2, 2, 1]).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.7, 0.2, 0.1],
                      [0.2, 0.1, 0.7], [0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [0.0, 0.0, 1.0]])
    label = np.array(["normal", "tb", "tb", "normal", "other", "other", "normal", ""])
    site = np.array(["shenzhen", "shenzhen", "montgomery", "montgomery", "nih", "nih", "nih", "x"])
    source = np.array(["shenzhen_normal", "shenzhen_tb", "montgomery_tb", "montgomery_normal",
                       "nih_pneumonia", "nih_pneumonia", "nih_no_finding", "x"])
    res = M.evaluate({"probabilities": probs, "label": label, "site": site, "source": source}, 0.4)
    assert res["n"] == 7 and res["threshold_source"] == "given"  # the unlabelled one is ignored
    # refer (p_tb >= 0.4): the two TB and one pneumonia -> sens 1, spec 4/5
    assert res["at_threshold"]["sensitivity"] == 1.0 and res["at_threshold"]["specificity"] == 0.8
    assert res["pneumonia_to_tb_rate"] == 0.5 and res["nih_no_finding_specificity"] == 1.0
    assert res["per_site"]["shenzhen"]["auc"] == 1.0
    assert res["confusion"]["rows_true_cols_pred"] == [[3, 0, 0], [0, 2, 0], [0, 1, 1]]
    auto = M.evaluate({"probabilities": probs, "label": label}, None)
    assert auto["threshold_source"] == "chosen_here" and auto["at_threshold"]["sensitivity"] >= 0.9
    png = M.plot_roc({"all": (label[:7] == "tb", probs[:7, 1])}, tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
