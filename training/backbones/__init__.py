"""Frozen ImageNet feature backbones by name: ``create_backbone("efficientnet_lite0", stages=(2, 3))``.

Importing this package registers every family module below.
"""
from protospect.training.backbones._registry import (
    BackboneSpec, FrozenBackbone, create_backbone, list_backbones, register_backbone)
from protospect.training.backbones import efficientnet_lite, resnet  # noqa: F401  (registers the builders)

from protospect.training.backbones._memo import FeatureStore, memoize_features

__all__ = ["FeatureStore", "memoize_features", "BackboneSpec", "FrozenBackbone", "create_backbone", "list_backbones", "register_backbone"]
