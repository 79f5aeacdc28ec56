"""Acquisition-shortcut audit: features, propensity, matching, the synthetic-shortcut test, and the
CLI end to end on real films."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tbedge.runtime.imaging import ImageMeta, LoadedImage
from tbedge.train import acquisition as A
from tbedge.train import propensity as P
from tbedge.train import shortcut_audit as S
from tbedge.train.metrics import matched_pair_auc, roc_auc

REPO = Path(__file__).resolve().parents[1]
FP32 = REPO / "tbedge" / "models" / "fp32"


def _film(px: np.ndarray, bits: int = 8) -> LoadedImage:
    return LoadedImage(px.astype(np.float32), ImageMeta("png", bits, "MONOCHROME2", "", px.shape))


def _phantom(rng: np.random.Generator, offset: float, size: int = 96) -> np.ndarray:
    """Two dark lung ellipses on a brighter body, anatomy jittered per film, exposure shifted by ``offset``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.1 * yy
    for cx in (0.32, 0.68):
        r = ((xx - cx) / rng.uniform(0.12, 0.16)) ** 2 + ((yy - 0.5) / rng.uniform(0.28, 0.34)) ** 2
        img = np.where(r < 1, 0.3 + rng.uniform(-0.05, 0.05), img)
    return np.clip(img + rng.normal(0, 0.02, img.shape) + offset, 0, 1)


def test_features_measure_borders_boxes_clipping_and_size():
    rng = np.random.default_rng(0)
    px = np.zeros((200, 100))
    px[20:180, 10:90] = rng.uniform(0.2, 0.8, (160, 80))  # a black frame: 10 % of each side
    f = dict(zip(A.FEATURE_NAMES, A.film_features(_film(px, 12)), strict=True))
    assert f["border_fraction"] == pytest.approx(1 - 0.8 * 0.8, abs=0.02)
    assert f["black_fraction"] == pytest.approx(1 - 0.8 * 0.8, abs=0.02)
    assert f["saturated_fraction"] == 0 and f["p01"] == 0 and 0.2 < f["p50"] < 0.8
    assert 0.2 < f["uniform_box_fraction"] < 0.5  # the frame's boxes are flat, the noise is not
    assert (f["height"], f["width"], f["aspect"], f["bit_depth"]) == (200, 100, 0.5, 12)
    smooth = dict(zip(A.FEATURE_NAMES, A.film_features(_film(cv2.GaussianBlur(px, (0, 0), 3))), strict=True))
    assert smooth["gradient_mean"] < f["gradient_mean"] and smooth["log_laplacian_var"] < f["log_laplacian_var"]
    assert A.border_fraction(np.full((32, 32), 0.5)) == 1.0 and A.uniform_box_fraction(np.ones((8, 8))) == 0.0


def test_logistic_cross_validation_finds_signal_and_not_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    y = x[:, 2] * 2 + rng.normal(size=400) > 0
    prop, folds = P.cv_propensity(x, y, k=5, seed=0)
    assert len(folds) == 5 and roc_auc(y, prop) > 0.85 and min(folds) > 0.75
    coin = rng.random(400) > 0.5  # a label the features know nothing about
    noise, _ = P.cv_propensity(x, coin, k=5, seed=0)
    assert 0.35 < roc_auc(coin, noise) < 0.65
    fold = P.stratified_folds(y, 5, seed=0)
    assert all(abs(np.sum(fold[y] == k) - y.sum() / 5) <= 1 for k in range(5))
    m = P.fit_logistic(np.c_[np.r_[np.zeros(20), np.ones(20)], np.ones(40)], np.r_[np.zeros(20), np.ones(20)])
    assert np.all(np.isfinite(m.coef)) and m.predict(np.array([[1.0, 1.0]]))[0] > 0.8  # separable: finite fit
    with pytest.raises(ValueError):
        P.cv_propensity(x[:5], np.array([1, 0, 0, 0, 0], bool))


def test_matching_respects_the_caliper_and_uses_each_film_once():
    rng = np.random.default_rng(2)
    prop = rng.random(300)
    y = rng.random(300) < prop  # higher propensity, more TB: the overlap is partial
    tb, ctrl = P.match_pairs(prop, y, caliper=0.05, seed=0)
    assert len(tb) > 50 and len(set(tb)) == len(tb) and len(set(ctrl)) == len(ctrl)
    assert y[tb].all() and not y[ctrl].any() and np.all(np.abs(prop[tb] - prop[ctrl]) <= 0.05)
    again = P.match_pairs(prop, y, caliper=0.05, seed=0)
    assert np.array_equal(again[0], tb) and np.array_equal(again[1], ctrl)
    assert len(P.match_pairs(prop, y, caliper=0.0)[0]) == 0


def test_matched_pair_auc_and_its_interval():
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.95])
    r = matched_pair_auc(s, [0, 1, 2], [3, 4, 5], n_boot=500)  # 6 of 9 TB/non-TB orderings right
    assert r["auc"] == pytest.approx(6 / 9) and r["n_pairs"] == 3 and r["ci_low"] <= r["auc"] <= r["ci_high"]
    assert r["ci_low"] < 0.5 < 1 == r["ci_high"]  # three pairs say little
    assert matched_pair_auc(s, [0, 1], [3, 4], n_boot=200)["ci_low"] == 1.0
    with pytest.raises(ValueError):
        matched_pair_auc(s, [0], [])


def test_synthetic_shortcut_is_caught_and_genuine_signal_survives():
    """TB differs from non-TB only by exposure (an acquisition artefact). A model that reads the exposure
    scores plain AUC ~1 and ~0.5 on matched pairs; a model that sees the disease keeps its AUC there."""
    rng = np.random.default_rng(0)
    n = 300
    y = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    offset = np.where(y, rng.normal(0.05, 0.035, 2 * n), rng.normal(-0.05, 0.035, 2 * n))
    x = np.array([A.film_features(_film(_phantom(rng, o))) for o in offset])
    labels, sites = np.where(y, "tb", "normal"), np.full(2 * n, "phantom")
    shortcut = offset + rng.normal(0, 0.005, 2 * n)
    genuine = 3.0 * y + rng.normal(0, 1, 2 * n)  # independent of the exposure
    a = S.audit_arrays(x, labels, sites, shortcut, n_boot=500)["pooled"]
    assert a["features_auc"]["auc"] > 0.95  # acquisition alone predicts the label
    name, auc = next(iter(a["top_features"].items()))
    assert (name == "mean" or name.startswith("p")) and auc > 0.9  # the exposure, named
    assert a["matching"]["n_pairs"] >= 20 and a["matching"]["features_auc_matched"] < 0.6
    assert a["matching"]["max_abs_smd_after"] < a["matching"]["max_abs_smd_before"] / 4
    assert a["model_auc"]["auc"] > 0.95 and a["model_matched_auc"]["auc"] < 0.65
    g = S.audit_arrays(x, labels, sites, genuine, n_boot=500)["pooled"]
    assert g["model_auc"]["auc"] > 0.95 and g["model_matched_auc"]["auc"] > 0.9
    assert g["matching"] == a["matching"]  # matching never looks at the model


def test_audit_folder_joins_scores_by_path_and_reports_no_paths(tmp_path):
    rng = np.random.default_rng(3)
    site = tmp_path / "clinic"
    rows = []
    for label, off in (("tb", 0.1), ("normal", -0.1), ("other", 0.0)):
        (site / label).mkdir(parents=True)
        for i in range(8):
            p = site / label / f"{label}{i}.png"
            cv2.imwrite(str(p), np.round(_phantom(rng, off + rng.normal(0, 0.05), 128) * 255).astype(np.uint8))
            rows.append([str(p), label, "clinic", f"{rng.random():.4f}"])
    pred = tmp_path / "predictions.csv"
    with open(pred, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "site", "p_tb"])
        w.writerows(rows[:-3])  # three films were not scored
    rep = S.audit_folder(site, pred, log=lambda _: None, n_boot=200)
    assert rep["n_films"] == 21 and rep["films_without_score"] == 3 and rep["has_model_scores"]
    g = rep["per_site"]["clinic"]
    assert (g["n_tb"], g["n_non_tb"]) == (8, 13) and {"features_auc", "matching", "model_auc"} <= set(g)
    assert str(tmp_path) not in json.dumps(rep)
    alone = S.audit_folder(None, pred, log=lambda _: None, n_boot=200)  # labels from the CSV itself
    assert alone["pooled"]["model_auc"] == rep["pooled"]["model_auc"]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"input": r[0], "sha256": None, "tb_probability": float(r[3])}) + "\n"
                             for r in rows))
    assert S.audit_folder(site, jsonl, log=lambda _: None, n_boot=200)["n_films"] == 24
    assert S.audit_folder(site, None, log=lambda _: None, n_boot=200)["has_model_scores"] is False
    with pytest.raises(ValueError):
        S.audit_folder(None, jsonl)  # no labels anywhere


def test_cli_audit_end_to_end_on_real_films(all_sets_root, tmp_path, capsys):
    """The shipped fp32 bundle scores 30 tb_more + 30 Shenzhen films through `tbedge evaluate classifier
    --audit`; acquisition alone separates tb_more's TB films (scanned film) from its normals."""
    from tbedge.cli import main
    from tbedge.datasets import discover
    from tbedge.train.crops import build_crop_cache

    films = discover(all_sets_root, "all")
    pick = [s for src in ("tb_more_tb", "tb_more_normal", "shenzhen_tb", "shenzhen_normal")
            for s in [x for x in films if x.source == src][::7][:15]]
    npz = build_crop_cache(pick, FP32 / "lungs.onnx", tmp_path / "c.npz", size=224, log=lambda _: None)
    out = tmp_path / "ev"
    assert main(["evaluate", "classifier", str(FP32 / "classifier.onnx"), "--data", str(npz), "--part", "all",
                 "--sets", "all", "--threshold", "0.05", "--audit", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "audit tb_more: 30 films (15 TB); acquisition-only AUC" in printed
    rep = json.loads((out / "audit.json").read_text())
    assert rep["n_films"] == 60 and rep["part"] == "all" and rep["method"]["features"] == list(A.FEATURE_NAMES)
    assert set(rep["per_site"]) == {"tb_more", "shenzhen"}
    for g in [rep["pooled"], *rep["per_site"].values()]:
        assert (g["n_tb"], g["n_non_tb"]) == (g["n"] // 2, g["n"] // 2)
        assert 0 <= g["features_auc"]["ci_low"] <= g["features_auc"]["auc"] <= g["features_auc"]["ci_high"] <= 1
        assert len(g["features_auc"]["folds"]) == 5 and 0 <= g["matching"]["n_pairs"] <= g["n_tb"]
        assert 0.5 < g["model_auc"]["auc"] <= 1 and "model_matched_auc" in g
    assert rep["per_site"]["tb_more"]["features_auc"]["auc"] > 0.7
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prep"] == "masked"  # read from the bundle's manifest beside the .onnx
    assert metrics["per_site"]["tb_more"]["features_auc"] == rep["per_site"]["tb_more"]["features_auc"]["auc"]
    assert "n_pairs" in metrics["per_site"]["shenzhen"]
    again = tmp_path / "again.json"
    assert main(["evaluate", "audit", "--predictions", str(out / "predictions.csv"), "--output", str(again)]) == 0
    assert json.loads(again.read_text())["per_site"] == rep["per_site"]  # same films, same seeds, same figures
