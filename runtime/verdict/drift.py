"""Drift watch: are good parts on the line still scoring like the good calibration parts?

Over the last ``window`` frames judged OK or REVIEW, count the scores above the calibration's 95th
percentile (the conformal quantile s_(k), k = ceil(0.95 (N + 1))). While the line looks like the
calibration, that count follows a binomial with rate P(score > s_(k)); that rate itself comes from N
good scores, so the count's exact law is beta-binomial(window, N + 1 - k, k) (a binomial whose rate
carries the calibration's own uncertainty: with N = 50 the true rate behind "the 95th percentile" is
anywhere from 1 % to 10 %, and a plain binomial at 5 % would fire on calibrations that were merely
unlucky). The test fires when P(count >= observed) < ``alpha`` (default 0.001): a ``drift`` event
(one JSON line, protospect.verdict_record.EVENT_DRIFT), counted; it clears (``drift_cleared``) when the
p-value is back above 10 x alpha. Nothing changes the thresholds: drift is for a person to look at
(lighting, lens, a new batch of parts) and, if the line really changed, to register again.
"""
from __future__ import annotations

import collections
import math

from protospect.verdict_record import EVENT_DRIFT, EVENT_DRIFT_CLEARED

DEFAULT_WINDOW = 200
DEFAULT_ALPHA = 0.001
QUANTILE = 0.95


def beta_binomial_tail(n: int, a: float, b: float) -> list[float]:
    """[P(X >= x) for x in 0..n+1] for X ~ beta-binomial(n, a, b)."""
    def log_beta(p, q):
        return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)

    base = log_beta(a, b)
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
                    + log_beta(x + a, n - x + b) - base) for x in range(n + 1)]
    tail = [0.0] * (n + 2)
    for x in range(n, -1, -1):
        tail[x] = min(1.0, tail[x + 1] + pmf[x])
    return tail


class DriftWatch:
    """Feed every OK/REVIEW score with ``update``; it returns an event record when the test fires or clears."""

    def __init__(self, calibration_scores, *, window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA,
                 quantile: float = QUANTILE):
        s = sorted(float(v) for v in calibration_scores)
        if not s:
            raise ValueError("drift watch needs the good calibration scores")
        if window < 1 or not 0 < alpha < 1:
            raise ValueError(f"drift window {window} must be >= 1 and alpha {alpha} in (0, 1)")
        n = len(s)
        k = max(1, min(math.ceil((n + 1) * quantile), n))
        self.reference = s[k - 1]
        self.a, self.b = n + 1 - k, k
        self.expected_rate = self.a / (n + 1)
        self.window = window
        self.alpha = alpha
        self.tail = beta_binomial_tail(window, self.a, self.b)
        self._ring = collections.deque(maxlen=window)
        self.above = 0
        self.active = False
        self.events = 0       # times the watch fired
        self.last_p = 1.0

    def describe(self) -> str:
        return (f"drift watch: last {self.window} OK/REVIEW scores vs the calibration's 95th percentile "
                f"{self.reference:.4g} (expected {100 * self.expected_rate:.1f} % above), fires at p < {self.alpha:g}")

    def update(self, score: float, seq: int = -1, t_wall: float = 0.0) -> dict | None:
        if not math.isfinite(score):
            return None
        flag = score > self.reference
        if len(self._ring) == self.window:
            self.above -= self._ring[0]
        self._ring.append(flag)
        self.above += flag
        if len(self._ring) < self.window:
            return None
        p = self.tail[self.above]
        self.last_p = p
        if not self.active and p < self.alpha:
            self.active = True
            self.events += 1
            return self._event(EVENT_DRIFT, seq, t_wall, p)
        if self.active and p >= 10 * self.alpha:
            self.active = False
            return self._event(EVENT_DRIFT_CLEARED, seq, t_wall, p)
        return None

    def _event(self, kind: str, seq: int, t_wall: float, p: float) -> dict:
        return {"event": kind, "seq": seq, "t_wall": round(t_wall, 6), "window": self.window, "above": self.above,
                "reference": self.reference, "expected_rate": round(self.expected_rate, 6), "p_value": p,
                "alpha": self.alpha}

    def state(self) -> dict:
        return {"active": self.active, "events": self.events, "above": self.above, "seen": len(self._ring),
                "window": self.window, "reference": self.reference, "p_value": self.last_p}
