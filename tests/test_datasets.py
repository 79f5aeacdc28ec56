"""Discovery and splits on the real layout and on a user's class-folder layout."""

import hashlib
from collections import Counter

import cv2
import numpy as np
import pytest

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


def _digest(samples) -> str:
    return hashlib.sha256("\n".join(sorted(f"{x.site}/{x.path.name}" for x in samples)).encode()).hexdigest()[:16]


# Recorded with the datasets.py before the opt-in sets existed: every shipped model, calibration set and
# split-dependent figure was made on these exact parts.
CORE_DIGESTS = {"all": "f0897a38eac63f45", "train": "047c61608c22ef16", "val": "39adc0ebf06b9477",
                "calib": "fc4de78cdf43a98b", "test": "a8967732c7d20a65"}
CORE_FOLDS = {"shenzhen": ("0e3d7d6e9cec0869", "f45bad0f86386a7d"), "montgomery": ("8dce35588b23fe56",
                                                                                  "f98c9b93627a8ac5")}


def test_default_discovery_and_split_are_unchanged(data_root):
    s = D.discover(data_root)
    assert len(s) == 1140 and {x.site for x in s} == {"shenzhen", "montgomery", "nih"}
    assert [x.path for x in s] == [x.path for x in D.discover(data_root, "core")]
    parts = D.split(s)
    assert {"all": _digest(s), **{k: _digest(v) for k, v in parts.items()}} == CORE_DIGESTS
    assert {f.held_site: (_digest(f.site_val), _digest(f.site_test)) for f in D.loso_folds(s)} == CORE_FOLDS


def test_new_sets_are_opt_in_and_each_film_is_its_own_patient(all_sets_root):
    data_root = all_sets_root
    s = D.discover(data_root, "all")
    c = Counter((x.site, x.label) for x in s)
    assert c[("tb_more", "tb")] == 2463 and c[("tb_more", "normal")] == 403 and c[("covid", "other")] == 1500
    assert len(s) == 1140 + 2463 + 403 + 1500
    new = [x for x in s if x.site in ("tb_more", "covid")]
    assert len({x.patient for x in new}) == len(new) and all(x.patient == f"{x.site}:{x.stem}" for x in new)
    assert all(x.path.is_file() for x in new[::50])
    assert D.discover(data_root, ("tb_more",)) == [x for x in s if x.site == "tb_more"]
    assert D.discover(data_root / D.TB_MORE_DIR) == [x for x in s if x.site == "tb_more"]  # the set's own folder
    assert D.select_sets(s, "core") == D.discover(data_root)
    with pytest.raises(ValueError):
        D.discover(data_root, "everything")


def test_new_sets_leave_the_old_parts_and_folds_alone(all_sets_root):
    """split is per (site, label) stratum, so adding sites moves no old film; the tb_more fold joins."""
    data_root = all_sets_root
    core, every = D.discover(data_root), D.discover(data_root, "all")
    old = {"shenzhen", "montgomery", "nih"}
    a, b = D.split(core), D.split(every)
    for k in D.PARTS:
        assert [x.path for x in a[k]] == [x.path for x in b[k] if x.site in old], k
    folds = {f.held_site: f for f in D.loso_folds(every)}
    assert list(folds) == ["shenzhen", "montgomery", "tb_more"]
    for f in D.loso_folds(core):
        g = folds[f.held_site]
        assert g.site_val == f.site_val and g.site_test == f.site_test
        assert [x for x in g.train if x.site in old] == f.train and [x for x in g.val if x.site in old] == f.val
    test_pat = {x.patient for x in b["test"]}
    t = folds["tb_more"]
    assert {x.site for x in t.train} == {"shenzhen", "montgomery", "nih", "covid"}
    assert all(x.site == "tb_more" for x in t.site_val + t.site_test)
    assert not {x.patient for x in t.site_val} & test_pat
    assert len(t.site_val) + len(t.site_test) == 2866 and len(t.site_val) > 1000


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


def _cache(samples):
    """A crop cache's metadata for ``samples`` (pixels are not needed to split it)."""
    from tbedge.train.crops import Crops

    n = len(samples)

    def col(attr):
        return np.array([str(getattr(s, attr) or "") for s in samples])

    return Crops(np.zeros((n, 1, 1), np.uint8), col("path"), col("label"), col("site"), col("patient"),
                 col("source"), np.zeros(n, bool), np.zeros((n, 4), np.int32), {})


def test_a_cache_of_every_set_gives_the_core_parts_with_sets_core(all_sets_root):
    """Cache once for all sets: training with --sets core on it sees exactly the films and parts of a
    core-only cache; --sets all adds tb_more (its own fold) and covid."""
    every = _cache(D.discover(all_sets_root, "all"))
    core = _cache(D.discover(all_sets_root))
    for fold in (None, "shenzhen", "montgomery"):
        a, b = core.parts(fold), every.parts(fold, sets="core")
        assert set(a) == set(b)
        for k in a:
            assert every.path[b[k]].tolist() == core.path[a[k]].tolist(), (fold, k)
    assert every.left_out("core") == 2463 + 403 + 1500 and every.left_out("all") == 0
    assert every.missing_sets("all") == [] and core.missing_sets("all") == ["covid", "tb_more"]
    f = every.parts("tb_more", sets="all")
    assert set(every.site[f["site_val"]]) == {"tb_more"} and "tb_more" not in set(every.site[f["train"]])
    assert "covid" in set(every.site[f["train"]]) and len(f["all"]) == len(every.path)
    with pytest.raises(ValueError, match="--sets all"):
        every.parts("tb_more", sets="core")  # no tb_more fold without the set
