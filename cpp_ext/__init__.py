"""Fused prototype distance + top-k: one CUDA source, a numpy reference, a torch op and a torch-free launcher."""
