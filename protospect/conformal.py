"""The operating point by split conformal prediction: thresholds from N good calibration scores with a
false-reject rate they certify. The one implementation: `calibrate`, `register` and the verdicts use it.

Given N scores of good parts s_(1) <= ... <= s_(N) (exchangeable with the good parts to come: same part,
same camera path, same model), and a rate A:

    k = ceil((N + 1) (1 - A));   a part is NG when its score > s_(k)

A new good part's score exceeds s_(k) with probability <= (N + 1 - k) / (N + 1) <= A, whatever the
score distribution (Vovk et al.; Angelopoulos & Bates, "A gentle introduction to conformal prediction",
2021, section 1). It needs k <= N, i.e. N >= 1/A - 1 (99 good parts for A = 0.01, 19 for A = 0.05).
With fewer, the procedure refuses and names the N needed; with ``allow_uncertified`` it takes the
largest good score, for which the rate it can state is 1 / (N + 1).

The REVIEW threshold is the same at rate B >= A: REVIEW when s_(k_B) < score <= s_(k_A).

The thresholds are stored as the next float above s_(k), so the runtime's rule everywhere stays
``score >= threshold`` and a part scoring exactly s_(k) is OK (ties cannot break the guarantee).

p_value(score) = (1 + #{good scores >= score}) / (N + 1): under exchangeability P(p <= a) <= a for a
new good part, so a small p-value says "few good parts scored this high".
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from protospect.errors import ConfigError
from protospect.verdict_record import NG, OK, REVIEW

DEFAULT_FRR = 0.01
DEFAULT_REVIEW_FRR = 0.05


def _rate(value, name: str) -> Fraction:
    """A rate as an exact fraction (0.01 -> 1/100), so N = 99 at A = 0.01 is not lost to rounding."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r}: must be a number in (0, 1)") from None
    if not (math.isfinite(f) and 0 < f < 1):
        raise ConfigError(f"{name} {value!r}: must be a number in (0, 1), e.g. 0.01")
    return Fraction(repr(f))


def n_needed(frr: float) -> int:
    """The smallest N that certifies ``frr``: N >= 1/A - 1."""
    a = _rate(frr, "false-reject rate")
    return math.ceil(1 / a - 1)


def rank(n: int, frr: float) -> int:
    """k = ceil((N + 1)(1 - A)): the threshold is the k-th smallest good score (1-based); may exceed N."""
    a = _rate(frr, "false-reject rate")
    return math.ceil((n + 1) * (1 - a))


def _just_above(x: float) -> float:
    return float(np.nextafter(np.float64(x), np.inf))


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds (NG when score >= ng_threshold, REVIEW when score >= review_threshold), what they certify,
    and the sorted good scores they came from (for p-values and the drift watch)."""

    ng_threshold: float
    review_threshold: float | None   # None: no REVIEW band (OK / NG only)
    frr: float                       # A asked for
    review_frr: float | None         # B asked for
    n: int
    certified: bool                  # both rates certified as asked
    certified_frr: float             # the false-reject rate the NG threshold certifies (A, or 1/(N+1))
    certified_review_frr: float | None
    scores: tuple                    # sorted good calibration scores

    def verdict(self, score: float) -> str:
        return judge(score, self.ng_threshold, self.review_threshold)

    def p_value(self, score: float) -> float | None:
        """(1 + #{good >= score}) / (N + 1); None for a score that is not a number."""
        if not math.isfinite(score):
            return None
        at_or_above = len(self.scores) - bisect.bisect_left(self.scores, score)
        return (1 + at_or_above) / (self.n + 1)

    def quantile(self, q: float) -> float:
        """The conformal q-quantile of the good scores: s_(ceil((N+1) q)), capped at the largest."""
        k = min(math.ceil((self.n + 1) * q), self.n)
        return float(self.scores[max(k, 1) - 1])

    def to_dict(self) -> dict:
        return {"ng_threshold": self.ng_threshold, "review_threshold": self.review_threshold, "frr": self.frr,
                "review_frr": self.review_frr, "n": self.n, "certified": self.certified,
                "certified_frr": self.certified_frr, "certified_review_frr": self.certified_review_frr,
                "scores": [float(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict, where: str = "operating point") -> "OperatingPoint":
        from protospect.errors import ArtifactError
        try:
            scores = tuple(sorted(float(s) for s in d["scores"]))
            ng = float(d["ng_threshold"])
            rv = None if d.get("review_threshold") is None else float(d["review_threshold"])
            n = int(d["n"])
            if n != len(scores) or n < 1 or not all(math.isfinite(s) for s in scores) or not math.isfinite(ng):
                raise ValueError(f"n {n} with {len(scores)} finite scores and NG threshold {ng}")
            if rv is not None and not (math.isfinite(rv) and rv <= ng):
                raise ValueError(f"review threshold {rv} above the NG threshold {ng}")
            return cls(ng, rv, float(d["frr"]), None if d.get("review_frr") is None else float(d["review_frr"]), n,
                       bool(d["certified"]), float(d["certified_frr"]),
                       None if d.get("certified_review_frr") is None else float(d["certified_review_frr"]), scores)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{where}: malformed operating point ({err}); calibrate or register again") from err

    def describe(self) -> list[str]:
        """The certified rates in words (printed by calibrate/register, shown in the report)."""
        lines = []
        if self.certified_frr <= self.frr:
            lines.append(f"NG threshold {self.ng_threshold:.6g}: a good part is rejected (NG) with probability at most "
                         f"{100 * self.frr:g} % (split conformal, N = {self.n} good parts)")
        else:
            lines.append(f"NG threshold {self.ng_threshold:.6g} = the largest of {self.n} good scores: NOT certified at "
                         f"{100 * self.frr:g} % (needs N >= {n_needed(self.frr)}); it can state at most "
                         f"{100 * self.certified_frr:.3g} % (1 / (N + 1))")
        if self.review_threshold is not None:
            if self.certified_review_frr is not None and self.certified_review_frr <= self.review_frr:
                lines.append(f"REVIEW threshold {self.review_threshold:.6g}: a good part goes to REVIEW or NG with "
                             f"probability at most {100 * self.review_frr:g} %")
            else:
                lines.append(f"REVIEW threshold {self.review_threshold:.6g}: NOT certified at {100 * self.review_frr:g} % "
                             f"(needs N >= {n_needed(self.review_frr)}); at most {100 * self.certified_review_frr:.3g} %")
        return lines


def judge(score: float, ng_threshold: float, review_threshold: float | None = None) -> str:
    """OK / REVIEW / NG. A score that is not a number cannot clear a part: NG."""
    if not math.isfinite(score) or score >= ng_threshold:
        return NG
    if review_threshold is not None and score >= review_threshold:
        return REVIEW
    return OK


def _threshold(s: np.ndarray, frr: float, allow_uncertified: bool) -> tuple[float, float]:
    """(threshold, the rate it certifies) at ``frr``; ConfigError naming the N needed when N is too small."""
    n = s.size
    k = rank(n, frr)
    if k <= n:
        return _just_above(s[k - 1]), (n + 1 - k) / (n + 1)
    if not allow_uncertified:
        raise ConfigError(f"{n} good parts cannot certify a false-reject rate of {100 * frr:g} %: split conformal "
                          f"needs N >= 1/A - 1 = {n_needed(frr)} good parts (or --allow-uncertified: the largest good "
                          f"score, which certifies {100 / (n + 1):.3g} %)")
    return _just_above(s[-1]), 1 / (n + 1)


def check_rates(frr: float, review_frr: float | None) -> None:
    """A and B in (0, 1) with B >= A; ConfigError (one line) otherwise."""
    _rate(frr, "--frr")
    if review_frr is not None:
        _rate(review_frr, "--review-frr")
        if review_frr < frr:
            raise ConfigError(f"--review-frr {review_frr} is below --frr {frr}: the REVIEW band sits under the NG "
                              "threshold, so its rate must be the larger one")


def operating_point(scores, frr: float = DEFAULT_FRR, review_frr: float | None = DEFAULT_REVIEW_FRR, *,
                    allow_uncertified: bool = False) -> OperatingPoint:
    """Thresholds at false-reject rate ``frr`` (NG) and ``review_frr`` (REVIEW; None: no REVIEW band)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ConfigError("no good part was scored: no threshold can be set")
    if not np.all(np.isfinite(s)):
        raise ConfigError("a good part scored NaN or inf: the model or the frames are broken, no threshold set")
    check_rates(frr, review_frr)
    if review_frr is not None and review_frr == frr:
        review_frr = None  # the same threshold twice: no REVIEW band
    need = n_needed(frr)
    if s.size < need and not allow_uncertified:
        raise ConfigError(f"{s.size} good parts cannot certify a false-reject rate of {100 * frr:g} %: split conformal "
                          f"needs N >= 1/A - 1 = {need} good parts (or --allow-uncertified: the largest good score, "
                          f"which certifies {100 / (s.size + 1):.3g} %)")
    ng, ng_rate = _threshold(s, frr, allow_uncertified)
    rv = rv_rate = None
    if review_frr is not None:
        rv, rv_rate = _threshold(s, review_frr, allow_uncertified)
        rv = min(rv, ng)
    certified = ng_rate <= frr and (review_frr is None or rv_rate <= review_frr)
    return OperatingPoint(ng, rv, float(frr), None if review_frr is None else float(review_frr), int(s.size),
                          bool(certified), float(ng_rate), None if rv_rate is None else float(rv_rate),
                          tuple(float(v) for v in s))
