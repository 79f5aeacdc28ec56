"""A programme's own operating point: re-lock a bundle's threshold on its own labelled films.

The shipped threshold comes from out-of-site predictions, but across the two sites here the
per-site optimum moved by a factor of ~19 (model card), so a programme should set the operating
point on films from its own scanners before it relies on "clear". Input: ``tbedge screen``'s
results (JSONL) for those films and a CSV of reference labels keyed by content hash (or SOP
Instance UID), never by patient. Output: a copy of the bundle whose manifest carries the new
threshold, how it was chosen and the previous one. The films used here must not also be used to
report the new operating point's accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import TbedgeError
from ..fsio import atomic_write_text, sha256_file
from ..runtime.bundle import load_bundle
from ..schema import REFER_FLAGS, STATUS_OK
from ..train.metrics import TARGET_SENSITIVITY, sens_spec, threshold_at_sensitivity

MIN_POSITIVES = 20  # below this the sensitivity's 95 % CI is wider than ±0.15 at 0.90
MIN_NEGATIVES = 20
LABEL_VALUES = {"1": True, "0": False}


class LocalThresholdError(TbedgeError, ValueError):
    """Inputs that cannot set an operating point, said so a technician can fix them."""


def read_labels(path: str | Path) -> dict[str, bool]:
    """CSV with a ``tb`` column (1 = TB confirmed, 0 = not TB) and a key column ``sha256`` or
    ``sop_instance_uid`` -> {key: is_tb}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LocalThresholdError(f"{path}: no label rows")
    key = next((k for k in ("sha256", "sop_instance_uid") if k in rows[0]), None)
    if key is None or "tb" not in rows[0]:
        raise LocalThresholdError(f"{path}: needs a 'tb' column (1/0) and a 'sha256' or 'sop_instance_uid' column")
    labels: dict[str, bool] = {}
    for i, r in enumerate(rows, start=2):
        v = (r["tb"] or "").strip()
        if v not in LABEL_VALUES:
            raise LocalThresholdError(f"{path}, line {i}: tb must be 1 or 0, not {v!r}")
        k = (r[key] or "").strip().lower() if key == "sha256" else (r[key] or "").strip()
        if not k:
            raise LocalThresholdError(f"{path}, line {i}: empty {key}")
        if k in labels and labels[k] != LABEL_VALUES[v]:
            raise LocalThresholdError(f"{path}: {key} {k[:12]}… is labelled both 1 and 0")
        labels[k] = LABEL_VALUES[v]
    return labels


def result_records(results: str | Path):
    """Result dicts from ``tbedge screen``'s JSONL, or from a folder of result files (``tbedge watch``
    writes one JSON per input under RESULTS/results/)."""
    p = Path(results)
    if p.is_dir():
        for f in sorted(p.glob("*.json")):
            yield json.loads(f.read_text())
        return
    with open(p) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def matched_scores(results: str | Path, labels: dict[str, bool], classifier_sha256: str) -> tuple[
        np.ndarray, np.ndarray, dict[str, int]]:
    """(is_tb, tb_probability) of the labelled films whose result the threshold decides, and counts
    of the rest. Films referred whatever the threshold (implausible lungs) and films that were not
    scored say nothing about it. Results scored by another classifier are refused."""
    y, s = [], []
    counts = {"results": 0, "unlabelled": 0, "repeated": 0, "not_scored": 0, "always_referred": 0}
    seen: set[str] = set()
    for r in result_records(results):
        counts["results"] += 1
        key = r.get("sha256") if r.get("sha256") in labels else r.get("sop_instance_uid")
        if key not in labels:
            counts["unlabelled"] += 1
            continue
        if key in seen:  # the same film screened twice counts once
            counts["repeated"] += 1
            continue
        if r.get("status") != STATUS_OK or r.get("tb_probability") is None:
            counts["not_scored"] += 1
            continue
        used = (r.get("models") or {}).get("classifier", {}).get("sha256")
        if used != classifier_sha256:
            raise LocalThresholdError(f"{str(r.get('sha256'))[:12]}… was scored by classifier {str(used)[:12]}…, "
                                      f"not this bundle's {classifier_sha256[:12]}…: screen the films with "
                                      "this bundle first")
        if REFER_FLAGS.intersection(r.get("qa_flags", [])):
            counts["always_referred"] += 1
            continue
        seen.add(key)
        y.append(labels[key])
        s.append(float(r["tb_probability"]))
    return np.array(y, bool), np.array(s, float), counts


def plot_local_roc(y: np.ndarray, s: np.ndarray, report: dict, path: Path) -> str | None:
    """ROC of the local films with the previous and the new operating point; None (and no file)
    where matplotlib is not installed (it comes with the ``[build]`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from ..train.metrics import plot_roc

    points = {f"{name} threshold {r['threshold']:.4f}": (1 - r["specificity"], r["sensitivity"])
              for name, r in (("previous", report["at_previous"]), ("new", report["at_new"]))}
    return str(plot_roc({"local films": (y, s)}, path, points, title="TB vs rest on the local films"))


def set_local_threshold(results: str | Path, labels_csv: str | Path, engine: str | Path | None,
                        out: str | Path | None, sensitivity: float = TARGET_SENSITIVITY,
                        min_positives: int = MIN_POSITIVES, min_negatives: int = MIN_NEGATIVES,
                        report_dir: str | Path | None = None) -> dict:
    """Copy ``engine`` to ``out`` with the threshold re-locked on the labelled films (the highest
    threshold reaching ``sensitivity`` on them); return the report (also in the new manifest).
    ``out`` None: only report (how the current threshold does on these films). ``report_dir``:
    also write ``local_threshold.json`` and ``roc.png`` there."""
    from .bundle_copy import copy_bundle

    bundle = load_bundle(engine)
    labels = read_labels(labels_csv)
    y, s, counts = matched_scores(results, labels, bundle.entry("classifier")["sha256"])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < min_positives or n_neg < min_negatives:
        raise LocalThresholdError(f"{n_pos} TB and {n_neg} non-TB labelled films matched the results; at least "
                                  f"{min_positives} and {min_negatives} are needed to set an operating point")
    old = {k: v for k, v in bundle.manifest["threshold"].items() if k != "previous"}  # one level of history
    value = threshold_at_sensitivity(y, s, sensitivity)
    labels_sha = sha256_file(Path(labels_csv))
    report = {"value": value, "target_sensitivity": sensitivity, "n_tb": n_pos, "n_not_tb": n_neg, **counts,
              "labels_sha256": labels_sha, "at_new": sens_spec(y, s, value),
              "at_previous": sens_spec(y, s, old["value"]),
              "previous": {"value": old["value"], "chosen_on": old.get("chosen_on")}}
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        report["roc_png"] = plot_local_roc(y, s, report, report_dir / "roc.png")
        atomic_write_text(report_dir / "local_threshold.json", json.dumps(report, indent=1))
    if out is not None:
        new = {**old, "value": value, "target_sensitivity": sensitivity, "previous": old,
               "chosen_on": f"local labelled films: {n_pos} TB, {n_neg} not TB (labels sha256 {labels_sha[:16]}…)"}
        copy_bundle(bundle.path, Path(out), edit=lambda m, _stage: {**m, "threshold": new})
        report["bundle"] = str(out)
    return report
