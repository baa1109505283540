"""Verdict code on the station: the drift watch.

    from protospect.runtime.verdict.drift import DriftWatch

The operating point (split conformal thresholds, p-values, judge) is protospect/conformal.py, in the
core because training's eval reports the operating point register would set with the same code.
"""
