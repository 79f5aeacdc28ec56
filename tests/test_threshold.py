import csv

import numpy as np

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
