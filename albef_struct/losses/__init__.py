"""Pretraining and task losses as small, pure modules and functions."""

from albef_struct.losses.classification import distilled_cross_entropy
from albef_struct.losses.contrastive import CONTRASTIVE_LOSSES, build_contrastive_loss
from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.infonce_queue import InfoNCEQueueLoss
from albef_struct.losses.matching import itm_loss, sample_hard_negatives
from albef_struct.losses.mlm import mask_tokens, mlm_distill_loss, soft_cross_entropy

__all__ = [
    "CONTRASTIVE_LOSSES",
    "ContrastiveInputs",
    "ContrastiveLoss",
    "ContrastiveOutput",
    "InfoNCEQueueLoss",
    "build_contrastive_loss",
    "distilled_cross_entropy",
    "itm_loss",
    "mask_tokens",
    "mlm_distill_loss",
    "sample_hard_negatives",
    "soft_cross_entropy",
]
