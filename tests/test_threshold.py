import csv

import numpy as np
import pytest

from tbedge.train.threshold import lock_threshold


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "site", "source", "fallback", "p_normal", "p_tb", "p_other"])
        for label, site, p in rows:
            w.writerow(["x.png", label, site, site, 0, 1 - p, p, 0])


def test_locked_threshold_pools_folds_and_reports_per_site(tmp_path):
    rng = np.random.default_rng(0)
    a = [("tb", "montgomery", p) for p in rng.uniform(0.4, 1, 20)] + [("normal", "montgomery", p)
                                                                      for p in rng.uniform(0, 0.6, 30)]
    b = [("tb", "shenzhen", p) for p in rng.uniform(0.2, 0.9, 30)] + [("normal", "shenzhen", p)
                                                                     for p in rng.uniform(0, 0.5, 30)]
    write(tmp_path / "a.csv", a)
    write(tmp_path / "b.csv", b)
    t = lock_threshold([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert t["pooled"]["sensitivity"] >= 0.9
    tb = np.array([p for lab, _, p in a + b if lab == "tb"])
    assert ((tb >= t["value"]).mean()) >= 0.9
    assert ((tb >= np.nextafter(t["value"], 1)).mean()) < 0.9  # the highest such threshold
    assert set(t["per_site"]) == {"montgomery", "shenzhen"}
    assert t["per_site"]["montgomery"]["optimum"] > t["per_site"]["shenzhen"]["optimum"]


def test_threshold_travels_as_a_reference_quantile_across_score_scales(tmp_path):
    """Two fold models rank alike but score on scales 10x apart; the shipped model on a third. The
    threshold is carried as the quantile of each model's own NIH (reference) scores."""
    from tbedge.train.threshold import quantile_of, transfer_threshold, write_threshold

    rng = np.random.default_rng(1)
    tb, normal, nih = rng.uniform(0.3, 1, 40), rng.uniform(0, 0.6, 40), rng.uniform(0, 0.8, 50)
    files = []
    for name, scale in (("a", 1.0), ("b", 0.1)):
        write(tmp_path / f"{name}_site_val.csv", [("tb", "montgomery", p * scale) for p in tb]
              + [("normal", "montgomery", p * scale) for p in normal])
        write(tmp_path / f"{name}_val.csv", [("normal", "nih", p * scale) for p in nih]
              + [("tb", "shenzhen", 0.99)])  # non-reference rows are ignored
        files.append((tmp_path / f"{name}_site_val.csv", tmp_path / f"{name}_val.csv"))
    write(tmp_path / "ship_val.csv", [("normal", "nih", p * 0.5) for p in nih])
    t = transfer_threshold(files, tmp_path / "ship_val.csv")
    qa, qb = (f["quantile"] for f in t["per_fold"].values())
    assert qa == qb == t["reference_quantile"]  # the quantile does not see the scale
    assert t["value"] == np.quantile(nih * 0.5, qa)
    assert abs(quantile_of(nih * 0.5, t["value"]) - qa) <= 1 / len(nih)
    for f in t["per_fold"].values():
        assert f["at_quantile"]["sensitivity"] >= 0.9 and f["site"] == "montgomery"
    # Pooling the raw probabilities instead lands between the scales and fits neither model.
    pooled = lock_threshold([a for a, _ in files])["value"]
    assert not 0.4 * t["value"] < pooled < 2.5 * t["value"]
    with pytest.raises(ValueError, match="one reference"):
        write_threshold([a for a, _ in files], tmp_path / "t.json", references=[files[0][1]],
                        target_val=tmp_path / "ship_val.csv")
    out = write_threshold([a for a, _ in files], tmp_path / "t.json", references=[b for _, b in files],
                          target_val=tmp_path / "ship_val.csv")
    assert out["value"] == t["value"] and (tmp_path / "t.json").exists()
