"""Verdict code: the operating point (split conformal thresholds, p-values) and the drift watch.

    from protospect.runtime.verdict.conformal import operating_point, judge
    from protospect.runtime.verdict.drift import DriftWatch
"""
