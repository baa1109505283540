"""The operating point (protospect/conformal.py): the split conformal guarantee measured on generated
score distributions, refusals naming the N needed, the uncertified fallback, p-values, the verdict rule,
and the drift watch's test (runtime/verdict/drift.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from protospect.errors import ArtifactError, ConfigError
from protospect import conformal
from protospect.conformal import OperatingPoint, judge, n_needed, operating_point
from protospect.runtime.verdict.drift import DriftWatch, beta_binomial_tail

REPS = 2000
NEW = 50  # new good parts judged per calibration


def _measured_rates(draw, n: int, frr: float, review_frr: float, seed: int) -> tuple[float, float]:
    """Mean over REPS calibrations of the fraction of NEW fresh good parts judged NG, and REVIEW-or-NG."""
    rng = np.random.default_rng(seed)
    ng = review = 0
    for _ in range(REPS):
        op = operating_point(draw(rng, n), frr, review_frr)
        new = draw(rng, NEW)
        ng += int(np.sum(new >= op.ng_threshold))
        review += int(np.sum(new >= op.review_threshold))
    return ng / (REPS * NEW), review / (REPS * NEW)


DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(0.3, 0.05, n),
    "heavy tail (lognormal)": lambda rng, n: np.exp(rng.normal(-2.0, 1.0, n)),
    "bounded, skewed (beta)": lambda rng, n: rng.beta(8.0, 2.0, n),
    # scores quantised to 3 decimals: many ties at the threshold; the guarantee must survive them
    "ties (quantised)": lambda rng, n: np.round(rng.gamma(2.0, 0.02, n), 3),
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("n,frr,review_frr", [(99, 0.01, 0.05), (40, 0.05, 0.10), (200, 0.01, 0.05)])
def test_the_false_reject_rate_stays_at_or_under_what_was_asked(name, n, frr, review_frr):
    draw = DISTRIBUTIONS[name]
    ng, review = _measured_rates(draw, n, frr, review_frr, seed=hash((name, n)) % 2**32)
    # the guarantee: at most A (binomial noise over REPS x NEW parts, plus the calibrations' spread)
    tol_ng = 3 * math.sqrt(frr / (REPS * NEW)) + 3 * math.sqrt(frr * (1 - frr) / REPS) / math.sqrt(n / 10)
    assert ng <= frr + tol_ng, f"{name}: measured false-reject rate {ng:.4f} > A = {frr}"
    assert review <= review_frr + 3 * math.sqrt(review_frr / REPS), f"{name}: REVIEW-or-NG {review:.4f} > B"
    if "ties" not in name:
        # and not a trivial threshold: for continuous scores the rate is (N + 1 - k) / (N + 1), close to A
        k = conformal.rank(n, frr)
        assert ng >= (n + 1 - k) / (n + 1) - tol_ng - 0.003


def test_rank_is_exact_at_the_boundary_and_refuses_one_part_short():
    assert n_needed(0.01) == 99 and n_needed(0.05) == 19 and n_needed(0.1) == 9 and n_needed(0.03) == 33
    s = np.arange(1.0, 100.0)  # N = 99 at A = 0.01: k = 99 exactly (floating point would say 100)
    op = operating_point(s, 0.01, 0.05)
    assert conformal.rank(99, 0.01) == 99 and op.certified and op.certified_frr == pytest.approx(0.01)
    assert s[98] < op.ng_threshold < np.nextafter(s[98], np.inf) * (1 + 1e-12)  # just above s_(99)
    assert judge(99.0, op.ng_threshold, op.review_threshold) == "REVIEW"  # exactly s_(k): not NG
    k_b = math.ceil(100 * 0.95)  # 95
    assert judge(s[k_b - 1], op.ng_threshold, op.review_threshold) == "OK"
    assert judge(s[k_b], op.ng_threshold, op.review_threshold) == "REVIEW"
    with pytest.raises(ConfigError, match=r"98 good parts .* N >= 1/A - 1 = 99"):
        operating_point(s[:98], 0.01, 0.05)
    with pytest.raises(ConfigError, match="= 19"):
        operating_point(s[:10], 0.05, 0.1)


def test_allow_uncertified_uses_the_largest_score_and_states_one_over_n_plus_one():
    s = np.linspace(0.1, 0.5, 40)
    op = operating_point(s, 0.01, 0.05, allow_uncertified=True)
    assert not op.certified and op.ng_threshold > 0.5 and op.ng_threshold == pytest.approx(0.5)
    assert op.certified_frr == pytest.approx(1 / 41)
    assert op.certified_review_frr == pytest.approx(2 / 41)  # B = 5 % is certified with 40 parts (needs 19)
    words = " ".join(op.describe())
    assert "NOT certified at 1 %" in words and "needs N >= 99" in words and "2.44 %" in words


def test_p_values_count_the_good_scores_at_or_above():
    op = operating_point([0.1, 0.2, 0.3, 0.4], 0.2, 0.2, allow_uncertified=True)
    assert op.p_value(0.05) == 1.0          # (1 + 4) / 5
    assert op.p_value(0.3) == pytest.approx(3 / 5)   # 0.3 and 0.4 are >= 0.3
    assert op.p_value(0.35) == pytest.approx(2 / 5)
    assert op.p_value(9.0) == pytest.approx(1 / 5)   # the smallest a p-value can be with N = 4
    assert op.p_value(float("nan")) is None
    # valid: for fresh good parts, P(p <= a) <= a
    rng = np.random.default_rng(3)
    ps = []
    for _ in range(300):
        op = operating_point(rng.normal(size=49), 0.05, 0.1)
        ps += [op.p_value(x) for x in rng.normal(size=20)]
    ps = np.array(ps)
    for a in (0.02, 0.1, 0.5):
        assert np.mean(ps <= a) <= a + 0.01


def test_rates_are_checked_and_review_equal_to_ng_means_no_band():
    s = np.linspace(0, 1, 200)
    for bad in (0, 1, -0.1, float("nan"), "x"):
        with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
            operating_point(s, bad, 0.05)
    with pytest.raises(ConfigError, match="below --frr"):
        operating_point(s, 0.05, 0.01)
    op = operating_point(s, 0.05, 0.05)
    assert op.review_threshold is None and judge(0.99, op.ng_threshold, None) == "NG"
    with pytest.raises(ConfigError, match="NaN"):
        operating_point(np.append(s, np.nan))
    assert judge(float("nan"), 1.0, 0.5) == "NG" and judge(0.1, 1.0, 0.5) == "OK"


def test_round_trip_through_json_and_malformed_records():
    op = operating_point(np.random.default_rng(0).random(120), 0.01, 0.05)
    again = OperatingPoint.from_dict(op.to_dict())
    assert again == op
    d = op.to_dict()
    d["n"] = 3
    with pytest.raises(ArtifactError, match="malformed"):
        OperatingPoint.from_dict(d)
    d = op.to_dict()
    d["review_threshold"] = d["ng_threshold"] + 1
    with pytest.raises(ArtifactError, match="review threshold"):
        OperatingPoint.from_dict(d)


# -- drift watch --------------------------------------------------------------------------------------------
def test_beta_binomial_tail_is_a_distribution_and_matches_simulation():
    tail = beta_binomial_tail(50, 3, 48)
    assert tail[0] == pytest.approx(1.0) and tail[51] == 0.0 and all(a >= b for a, b in zip(tail, tail[1:]))
    rng = np.random.default_rng(1)
    u = rng.beta(3, 48, 200_000)
    x = rng.binomial(50, u)
    for c in (3, 6, 10):
        assert tail[c] == pytest.approx(np.mean(x >= c), abs=0.005)


def test_drift_watch_is_quiet_on_good_parts_and_fires_on_a_drifting_source():
    rng = np.random.default_rng(5)
    calib = rng.normal(0.3, 0.05, 60)
    # quiet: 200 calibrations x 1000 fresh good parts each, window 100. Each window's test is exact at
    # alpha = 0.001, but a rolling window tests ~900 overlapping windows per line: a few lines in 200 may fire
    fired = 0
    for _ in range(200):
        w = DriftWatch(rng.normal(0.3, 0.05, 60), window=100, alpha=0.001)
        fired += any(w.update(v) for v in rng.normal(0.3, 0.05, 1000))
    assert fired <= 10, f"fired on {fired} of 200 stable lines"
    # drifting: the lighting changes at part 300, good parts score 0.06 higher (still mostly OK)
    w = DriftWatch(calib, window=100, alpha=0.001)
    events = []
    for i, v in enumerate(np.concatenate([rng.normal(0.3, 0.05, 300), rng.normal(0.36, 0.05, 400)])):
        e = w.update(float(v), seq=i)
        if e:
            events.append(e)
    assert events and events[0]["event"] == "drift" and 300 <= events[0]["seq"] < 420
    assert events[0]["p_value"] < 0.001 and events[0]["above"] > 5 * events[0]["expected_rate"] * 100 / 2
    assert w.events == 1 and w.active  # one onset, still drifting: no event per frame
