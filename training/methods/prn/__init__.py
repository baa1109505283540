"""PRN (Prototypical Residual Networks, Zhang et al. CVPR 2023) from K good shots, defects P1-P10 fixed.

Spec: algorithms.md section 2 (after the unofficial xcyao00/PRNet); what changed and why: docs/methods.md.
"""
from protospect.training.methods.prn.config import PRESETS, PRNConfig, resolve_config
from protospect.training.methods.prn.fit import build, fit
from protospect.training.methods.prn.model import PRNModel

__all__ = ["PRESETS", "PRNConfig", "PRNModel", "build", "fit", "resolve_config"]
