"""The interface every image-text contrastive loss shares: its inputs, its output and the base class.

Every loss takes a :class:`ContrastiveInputs` and returns a
:class:`ContrastiveOutput` holding the loss and the ``[B, B]`` in-batch logits
that ITM hard-negative sampling draws from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ContrastiveInputs", "ContrastiveLoss", "ContrastiveOutput"]


@dataclass
class ContrastiveInputs:
    """Features of one step. Online features carry gradients; teacher features do not."""

    image_feat: torch.Tensor  # [B, D], L2-normalised
    text_feat: torch.Tensor  # [B, D]
    temp: torch.Tensor  # scalar temperature
    image_feat_m: torch.Tensor | None = None  # [B, D] momentum-teacher features
    text_feat_m: torch.Tensor | None = None
    image_queue: torch.Tensor | None = None  # [D, Q] queued momentum features
    text_queue: torch.Tensor | None = None
    alpha: float | torch.Tensor = 0.0  # distillation weight
    image_ids: torch.Tensor | None = None  # [B] image identity, for same-image positives
    queue_ids: torch.Tensor | None = None  # [Q] image identity of queued entries (-100 = empty)
    sample_index: torch.Tensor | None = None  # [B] stable dataset index of each pair
    # Global-batch candidates for the losses without a queue. Under DDP the module
    # all-gathers them with gradients; None means "the local batch".
    image_candidates: torch.Tensor | None = None  # [G, D]
    text_candidates: torch.Tensor | None = None  # [G, D]
    positive_index: torch.Tensor | None = None  # [B] column of each anchor's positive in the candidates
    candidate_sample_index: torch.Tensor | None = None  # [G] dataset index of each candidate
    # All-gather without gradients (rank-consistent state updates); None on one process.
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_candidates, text_candidates, positive_index)``, defaulting to the local batch."""
        image = self.image_feat if self.image_candidates is None else self.image_candidates
        text = self.text_feat if self.text_candidates is None else self.text_candidates
        if self.positive_index is not None:
            positive = self.positive_index
        else:
            positive = torch.arange(self.image_feat.shape[0], device=self.image_feat.device)
        return image, text, positive


@dataclass
class ContrastiveOutput:
    loss: torch.Tensor
    sim_i2t: torch.Tensor  # [B, B] in-batch image->text logits (hard-negative weights)
    sim_t2i: torch.Tensor  # [B, B]
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class ContrastiveLoss(nn.Module):
    """Base class: ``forward(inputs) -> ContrastiveOutput``."""

    #: whether the pretraining module must keep a feature queue for this loss
    uses_queue: bool = False
    #: whether the loss needs the momentum teacher's features
    uses_teacher: bool = False

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:  # pragma: no cover - interface
        raise NotImplementedError
