"""BPGG-style few-shot anomaly *localisation* with defective supports: a labelled reconstruction.

BPGG (Zhang et al., ICANN 2022) published only an abstract; no code exists. This package follows
the closest verifiable design, PANet's prototype alignment (algorithms.md 3.3): masked average
pooling prototypes (defect, normal), cosine scoring, and the reverse branch that swaps support and
query. It is not BPGG's published method; see docs/methods.md.
"""
from protospect.training.methods.bpgg.config import PRESETS, BPGGConfig, resolve_config
from protospect.training.methods.bpgg.fit import build, fit
from protospect.training.methods.bpgg.model import BPGGModel
from protospect.training.methods.bpgg.support import (
    DEFAULT_SUPPORT_SIZE, item_name, load_defect_support, prepare_eval, split_defect_support)

__all__ = ["PRESETS", "BPGGConfig", "BPGGModel", "DEFAULT_SUPPORT_SIZE", "build", "fit", "item_name",
           "load_defect_support", "prepare_eval", "resolve_config", "split_defect_support"]
