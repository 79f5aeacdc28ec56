"""Discovery and splits on the real layout and on a user's class-folder layout."""

from collections import Counter

import cv2
import numpy as np

from tbedge import datasets as D


def test_discover_shared_layout(data_root):
    s = D.discover(data_root)
    assert len(s) == 800 + 340
    c = Counter((x.site, x.label) for x in s)
    assert c[("shenzhen", "normal")] == 326 and c[("shenzhen", "tb")] == 336
    assert c[("montgomery", "normal")] == 80 and c[("montgomery", "tb")] == 58
    assert c[("nih", "normal")] == 170 and c[("nih", "other")] == 170
    assert sum(x.mask is not None for x in s) == 704
    assert all(x.path.is_file() for x in s)


def test_split_is_disjoint_by_patient_deterministic_and_stratified(data_root):
    s = D.discover(data_root)
    a, b = D.split(s), D.split(list(reversed(s)))
    assert {k: [x.path for x in v] for k, v in a.items()} == {k: [x.path for x in v] for k, v in b.items()}
    pats = {k: {x.patient for x in v} for k, v in a.items()}
    for i, p in enumerate(D.PARTS):
        for q in D.PARTS[i + 1:]:
            assert not pats[p] & pats[q], (p, q)
    assert sum(len(v) for v in a.values()) == len(s)
    for site in ("shenzhen", "montgomery", "nih"):
        n = sum(1 for x in s if x.site == site)
        nt = sum(1 for x in a["test"] if x.site == site)
        assert abs(nt / n - D.DEFAULT_FRACTIONS["test"]) < 0.03
    assert D.split(s, seed=1)["test"] != a["test"]


def test_loso_folds_keep_test_patients_out_of_selection(data_root):
    s = D.discover(data_root)
    test_pat = {x.patient for x in D.split(s)["test"]}
    for f in D.loso_folds(s):
        assert all(x.site != f.held_site for x in f.train + f.val)
        assert all(x.site == f.held_site for x in f.site_val + f.site_test)
        assert not {x.patient for x in f.site_val} & test_pat
        assert not {x.patient for x in f.site_val} & {x.patient for x in f.site_test}
        assert len(f.site_val) > 20 and len(f.site_test) > 20


def test_folder_per_class_layout(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    for cls, n in (("normal", 3), ("tb", 2), ("other", 1), ("unlabelled", 2)):
        (tmp_path / "site_a" / cls).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "site_a" / cls / f"{cls}{i}.png"), img)
    (tmp_path / "site_a" / "notes").mkdir()
    s = D.discover(tmp_path / "site_a")
    assert Counter(x.label for x in s) == {"normal": 3, "tb": 2, "other": 1, None: 2}
    assert {x.site for x in s} == {"site_a"}
