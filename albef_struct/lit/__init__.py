"""LightningModules: the shared base and the pretraining module."""

from albef_struct.lit.base import ALBEFLitBase, decay_groups, freeze_parameters
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig, WarmupCosine, ramped_alpha

__all__ = ["ALBEFLitBase", "OptimConfig", "PretrainModule", "WarmupCosine", "decay_groups", "freeze_parameters", "ramped_alpha"]
