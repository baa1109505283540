"""Training room (needs torch): backbones, few-shot data, methods, metrics and the eval/train CLIs."""
