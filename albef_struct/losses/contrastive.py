"""Image-text contrastive losses behind one interface, chosen by name.

Every loss takes a :class:`ContrastiveInputs` and returns a
:class:`ContrastiveOutput` (the interface is defined in
:mod:`albef_struct.losses.contrastive_base` and re-exported here, beside the
losses). The pretraining and retrieval modules select one by name from
:data:`CONTRASTIVE_LOSSES` with :func:`build_contrastive_loss`.
"""

from __future__ import annotations

from typing import Any

from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.decomposable import DecomposableLoss
from albef_struct.losses.infonce import InfoNCELoss
from albef_struct.losses.infonce_queue import InfoNCEQueueLoss
from albef_struct.losses.siglip import SigLIPLoss

__all__ = [
    "CONTRASTIVE_LOSSES",
    "ContrastiveInputs",
    "ContrastiveLoss",
    "ContrastiveOutput",
    "build_contrastive_loss",
]

CONTRASTIVE_LOSSES: dict[str, type[ContrastiveLoss]] = {
    "infonce_queue": InfoNCEQueueLoss,
    "infonce": InfoNCELoss,
    "decomposable": DecomposableLoss,
    "siglip": SigLIPLoss,
}


def build_contrastive_loss(name: str, **kwargs: Any) -> ContrastiveLoss:
    """Instantiate a registered contrastive loss by its config name."""
    if name not in CONTRASTIVE_LOSSES:
        raise ValueError(f"unknown contrastive loss {name!r}; choose one of {sorted(CONTRASTIVE_LOSSES)}")
    return CONTRASTIVE_LOSSES[name](**kwargs)
