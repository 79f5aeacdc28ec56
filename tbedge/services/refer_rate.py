"""Does the locked threshold fit this site? A rolling referral-rate check for ``tbedge watch``.

The threshold was locked on other sites' films, and a new site's scores can sit on another scale:
at the threshold shipped until the sixth session, the 13 Shenzhen -> Montgomery fold models reached
sensitivities from 0.00 to 1.00 on the site they never saw (research/classifier-study.md, sixth round).
Labels are rarely at hand at the scanner, but the referral rate is. A rate near 0 means the threshold
sits above this site's scores, so TB films are likely cleared. A rate near 1 means every film is
referred and the triage saves nothing. Either way the operating point must be checked on labelled
films (``tbedge set-threshold``). The check only warns: it never changes a triage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import schema

STATE_FILE = "operating_point.json"
ADVICE = ("check the operating point on this site's labelled films: tbedge set-threshold "
          "RESULTS LABELS --out NEW_BUNDLE (docs/watch.md)")


def counted(result: dict) -> bool:
    """Films whose triage the threshold decided: scored, first copy of its content, no QA flag that forces
    'refer' (``schema.REFER_FLAGS``: such a film is referred whatever its score)."""
    return (result.get("status") == schema.STATUS_OK and not result.get("duplicate_of")
            and result.get("triage") in (schema.TRIAGE_REFER, schema.TRIAGE_CLEAR)
            and not schema.REFER_FLAGS.intersection(result.get("qa_flags") or []))


@dataclass
class ReferRateCheck:
    """Referral rate over the last ``window`` counted films; ``state`` is "warming_up" (fewer than
    ``min_films``), "low" (rate < ``low``), "high" (rate > ``high``) or "ok". A new threshold (a
    re-locked bundle) starts a new window: the old films say nothing about it."""

    window: int = 200
    min_films: int = 50
    low: float = 0.05
    high: float = 0.95
    threshold: float | None = None
    recent: list[bool] = field(default_factory=list)  # True = referred, oldest first
    unsaved: int = field(default=0, compare=False)  # films counted since the owner last saved to_dict()

    def __post_init__(self):
        if not 1 <= self.min_films <= self.window:
            raise ValueError(f"need 1 <= min_films <= window, got {self.min_films} and {self.window}")
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"need 0 <= low < high <= 1, got {self.low} and {self.high}")
        del self.recent[:-self.window]

    @property
    def rate(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    @property
    def state(self) -> str:
        if len(self.recent) < self.min_films:
            return "warming_up"
        rate = self.rate
        return "low" if rate < self.low else "high" if rate > self.high else "ok"

    def add(self, result: dict) -> str | None:
        """Count one result (``schema.Result.to_dict()``). Returns the new state when it changed."""
        if not counted(result):
            return None
        before = self.state
        if result.get("threshold") != self.threshold:
            self.threshold, self.recent = result.get("threshold"), []
        self.recent.append(result["triage"] == schema.TRIAGE_REFER)
        del self.recent[:-self.window]
        self.unsaved += 1
        after = self.state
        return after if after != before else None

    def message(self) -> str:
        n, rate = len(self.recent), self.rate
        if self.state == "low":
            return (f"referral rate {rate:.2f} over the last {n} films is below {self.low:.2f}: the locked "
                    f"threshold ({self.threshold}) may sit above this site's scores and clear TB films; {ADVICE}")
        if self.state == "high":
            return (f"referral rate {rate:.2f} over the last {n} films is above {self.high:.2f}: the locked "
                    f"threshold ({self.threshold}) refers nearly every film here; {ADVICE}")
        if self.state == "ok":
            return f"referral rate {rate:.2f} over the last {n} films is within {self.low:.2f}-{self.high:.2f}"
        return f"{n} of {self.min_films} films needed before the referral rate is checked"

    def to_dict(self) -> dict:
        return {"state": self.state, "referral_rate": self.rate, "films": len(self.recent),
                "threshold": self.threshold, "window": self.window, "min_films": self.min_films,
                "low": self.low, "high": self.high, "message": self.message(),
                "recent": "".join("R" if r else "c" for r in self.recent)}

    @classmethod
    def resume(cls, saved: dict | None, **params) -> ReferRateCheck:
        """A check with ``params`` that carries on from a saved ``to_dict()`` (same threshold's films)."""
        recent = [c == "R" for c in (saved or {}).get("recent", "")]
        return cls(**params, threshold=(saved or {}).get("threshold"), recent=recent)
