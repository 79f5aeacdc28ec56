"""``tbedge ui``'s site panel and exports: today's and this week's counts, the referral rate against its
expected range (``watch``'s own check when it keeps one), the score histogram with the threshold and the
validation figures the bundle records, the ``set-threshold`` report, and the day's worklist as CSV.
Computed on the server from the index, once per index version."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
from pathlib import Path

from .. import schema
from ..runtime.bundle import default_bundle_path
from .refer_rate import STATE_FILE, ReferRateCheck, counted
from .ui_film import patient
from .ui_index import ResultIndex
from .watch_store import ENGINE_STATE_FILE

REPORT_NAME = "local_threshold.json"  # what `tbedge set-threshold --report DIR` writes (+ roc.png)
CSV_COLUMNS = ("time", "key", "status", "reason", "tb_score", "triage", "qa_flags", "duplicate_of", "sha256",
               "sop_instance_uid")


def local_day(iso: str | None) -> dt.date | None:
    if not iso:
        return None
    try:
        return dt.datetime.fromisoformat(iso).astimezone().date()
    except ValueError:
        return None


def _read_json(path: Path | None) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, AttributeError):
        return None
    return d if isinstance(d, dict) else None


class Site:
    """The panel over one :class:`ResultIndex`; ``threshold_report`` is set-threshold's ``--report`` folder
    (default: RESULTS/set-threshold/ when it exists)."""

    def __init__(self, index: ResultIndex, threshold_report: Path | None = None):
        self.index = index
        self.report_dir = threshold_report
        if self.report_dir is None and index.kind == "watch":
            self.report_dir = index.root / "set-threshold"
        if self.report_dir is not None and self.report_dir.suffix == ".json":
            self.report_dir = self.report_dir.parent
        self._cache: tuple[str, dict] | None = None
        self._lock = threading.Lock()

    # -- sources ------------------------------------------------------------------------------------------
    def engine(self) -> dict | None:
        return _read_json(self.index.root / ENGINE_STATE_FILE) if self.index.kind == "watch" else None

    def manifest(self, classifier_sha256: str | None) -> dict | None:
        """The manifest of the bundle that scored here: watch's engine.json names it; otherwise a shipped
        bundle whose classifier is the one on the results."""
        eng = self.engine()
        if eng and eng.get("bundle") and (m := _read_json(Path(eng["bundle"]) / "manifest.json")):
            return m
        for b in (default_bundle_path(), default_bundle_path().parent / "fp32"):
            m = _read_json(b / "manifest.json")
            if m and classifier_sha256 and m.get("models", {}).get("classifier", {}).get("sha256") == classifier_sha256:
                return m
        return None

    def latest_result(self) -> dict | None:
        for e in reversed(self.index.entries):
            if e.status == schema.STATUS_OK:
                return self.index.result(e)
        return None

    def threshold_report(self) -> dict | None:
        rep = _read_json(self.report_dir / REPORT_NAME) if self.report_dir else None
        if rep is not None:
            rep["has_roc"] = (self.report_dir / "roc.png").is_file()
        return rep

    def roc_png(self) -> Path | None:
        p = self.report_dir / "roc.png" if self.report_dir else None
        return p if p is not None and p.is_file() else None

    # -- the panel ------------------------------------------------------------------------------------------
    def panel(self) -> dict:
        self.index.refresh()
        version = self.index.version
        with self._lock:
            if self._cache and self._cache[0] == version:
                return self._cache[1]
        out = self._compute()
        out["report"] = self.threshold_report()  # small, and it may change without a new film
        with self._lock:
            self._cache = (version, out)
        return out

    def _compute(self) -> dict:
        entries = list(self.index.entries)
        films = [e for e in entries if counted(e.counted_dict())]  # the films the threshold decided
        latest = self.latest_result()
        threshold = latest.get("threshold") if latest else None
        clf = ((latest or {}).get("models") or {}).get("classifier") or {}
        manifest = self.manifest(clf.get("sha256"))
        return {"version": self.index.version, "kind": self.index.kind, "counts": self._counts(entries),
                "referral": self._referral(films), "threshold": threshold,
                "threshold_score": None if threshold is None else schema.tb_score(threshold),
                "histogram": {"edges": schema.tb_score_edges(),
                              "counts": schema.tb_score_histogram([e.tb_score for e in films
                                                                   if e.tb_score is not None])},
                "validation": self._validation(manifest, threshold),
                "validation_histogram": self._validation_histogram(manifest),
                "engine": self.engine_summary(latest)}

    def _counts(self, entries) -> dict | None:
        if self.index.kind != "watch":
            return None  # screen lines carry no time
        today = dt.date.today()
        week_start = today - dt.timedelta(days=6)
        out = {p: {"films": 0, "scored": 0, "refer": 0, "clear": 0, "rejected": 0, "flagged": 0}
               for p in ("today", "week")}
        for e in reversed(entries):  # arrival order is time order: stop a day past the week
            day = local_day(e.time)
            if day is None or day < week_start:
                if day is not None and day < week_start - dt.timedelta(days=1):
                    break
                continue
            for period in ("today", "week") if day == today else ("week",):
                c = out[period]
                c["films"] += 1
                c["scored"] += e.status == schema.STATUS_OK
                c["rejected"] += e.status != schema.STATUS_OK
                c["flagged"] += bool(e.qa_flags)
                if e.triage in ("refer", "clear"):
                    c[e.triage] += 1
        return out

    def _referral(self, films) -> dict:
        """watch's own check (RESULTS/operating_point.json) when it keeps one; else the same check, computed
        here over the last 200 counted films (screen: over all of them, as screen itself does)."""
        saved = _read_json(self.index.root / STATE_FILE) if self.index.kind == "watch" else None
        if saved and "state" in saved:
            out = {k: saved.get(k) for k in ("state", "referral_rate", "films", "window", "min_films", "low", "high",
                                             "message")}
            return {**out, "source": "watch"}
        window = 200 if self.index.kind == "watch" else max(len(films), 50)
        check = ReferRateCheck(window=window, min_films=min(50, window),
                               recent=[e.triage == schema.TRIAGE_REFER for e in films[-window:]])
        d = check.to_dict()
        d.pop("recent")
        return {**d, "source": "viewer"}

    @staticmethod
    def _validation(manifest: dict | None, threshold: float | None) -> dict | None:
        """What the bundle records about its locked threshold on validation films (pooled and per site), when
        that threshold is the one on the results."""
        th = (manifest or {}).get("threshold") or {}
        if threshold is None or th.get("value") is None or abs(th["value"] - threshold) > 1e-9:
            return None
        rows = []
        for name, r in [("pooled", th.get("pooled"))] + [(s, v.get("at_locked")) for s, v in
                                                        sorted((th.get("per_site") or {}).items())]:
            if not r:
                continue
            n = r["tp"] + r["fn"] + r["tn"] + r["fp"]
            rows.append({"set": name, "films": n, "tb": r["tp"] + r["fn"], "sensitivity": r["sensitivity"],
                         "specificity": r["specificity"], "referral_rate": (r["tp"] + r["fp"]) / n if n else None})
        return {"rows": rows, "target_sensitivity": th.get("target_sensitivity"),
                "local": "previous" in th} if rows else None

    @staticmethod
    def _validation_histogram(manifest: dict | None) -> dict | None:
        """The val TB-score histogram the bundle's gate recorded (TB / not TB), in the site histogram's bins."""
        gate = (((manifest or {}).get("models") or {}).get("classifier") or {}).get("gate") or {}
        h = gate.get("val_histogram")
        ok = isinstance(h, dict) and h.get("edges") == schema.tb_score_edges()
        return {k: h[k] for k in ("edges", "tb", "not_tb")} if ok else None

    def engine_summary(self, latest: dict | None) -> dict | None:
        """The bundle that scores here (name, version), its backend and any fp32 fallback."""
        eng = self.engine()
        m = self.manifest((((latest or {}).get("models") or {}).get("classifier") or {}).get("sha256"))
        if not eng and not m:
            return None
        fb = (eng or {}).get("fallback")
        return {"bundle": f"{m.get('name')} {m.get('version')}" if m else None,
                "backend": (eng or {}).get("backend"), "started": (eng or {}).get("started"),
                "fallback": fb.get("message") if isinstance(fb, dict) else None}

    # -- export ------------------------------------------------------------------------------------------
    def worklist_csv(self, day: dt.date | None, show_patient: bool = False) -> str:
        """The worklist of one local day (screen results: every line; they carry no time), oldest first."""
        self.index.refresh()
        cols = CSV_COLUMNS + (("patient_name", "patient_id") if show_patient else ())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(cols)
        for e in self.index.entries:
            if day is not None and self.index.kind == "watch" and local_day(e.time) != day:
                continue
            t = dt.datetime.fromisoformat(e.time).astimezone().isoformat(timespec="seconds") if e.time else ""
            row = [t, e.key, e.status, e.reason or "", "" if e.tb_score is None else e.tb_score, e.triage or "",
                   ";".join(e.qa_flags), e.duplicate_of or "", e.sha256 or "", e.uid or ""]
            if show_patient:
                p = patient(self.index.named_path(e.film)) or {}
                # A spreadsheet runs a cell that starts with = + - @: names come from outside.
                row += ["'" + v if v and v[0] in "=+-@" else v for v in (p.get("name", ""), p.get("id", ""))]
            w.writerow(row)
        return buf.getvalue()
