"""Pluggable latent-structure regularizers (equations: docs/regularizers.md) and their registry."""

from albef_struct.structure.base import LatentFeatures, StructureLoss
from albef_struct.structure.brownian_bridge import BrownianBridgeLoss, bridge_point
from albef_struct.structure.feature_separation import FeatureSeparationLoss
from albef_struct.structure.geometric_consistency import GeometricConsistencyLoss
from albef_struct.structure.registry import STRUCTURE_LOSSES, StructureLosses, StructureSpec, build_structure_loss

__all__ = [
    "STRUCTURE_LOSSES",
    "BrownianBridgeLoss",
    "FeatureSeparationLoss",
    "GeometricConsistencyLoss",
    "LatentFeatures",
    "StructureLoss",
    "StructureLosses",
    "StructureSpec",
    "bridge_point",
    "build_structure_loss",
]
