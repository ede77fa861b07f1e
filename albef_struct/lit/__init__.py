"""LightningModules: the shared base and the pretraining module."""

from albef_struct.lit.base import ALBEFLitBase, decay_groups
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig, WarmupCosine, ramped_alpha

__all__ = ["ALBEFLitBase", "OptimConfig", "PretrainModule", "WarmupCosine", "decay_groups", "ramped_alpha"]
