"""Image-text contrastive losses behind one interface.

Every loss takes a :class:`ContrastiveInputs` and returns a
:class:`ContrastiveOutput` holding the loss and the ``[B, B]`` in-batch logits
that ITM hard-negative sampling draws from. The pretraining and retrieval
modules select one by name from :data:`CONTRASTIVE_LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from albef_struct.losses.mlm import soft_cross_entropy


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


def positive_targets(image_ids: torch.Tensor | None, candidate_ids: torch.Tensor | None, batch: int, total: int, device: torch.device) -> torch.Tensor:
    """Row-normalised ``[B, total]`` targets: 1 where a candidate shows the anchor's image.

    Without ids the positives are the diagonal of the first ``batch`` columns.
    """
    if image_ids is None or candidate_ids is None:
        targets = torch.zeros(batch, total, device=device)
        targets[:, :batch].fill_diagonal_(1.0)
        return targets
    positives = (image_ids.view(-1, 1) == candidate_ids.view(1, -1)).float()
    return positives / positives.sum(dim=1, keepdim=True)


class InfoNCEQueueLoss(ContrastiveLoss):
    """ALBEF's ITC: candidates = [batch momentum features, queue], momentum-distilled targets.

    Targets are ``alpha * softmax(teacher logits) + (1 - alpha) * positives``;
    positives are the diagonal, or every candidate of the same image when
    ``same_image_positives`` is on and image ids are given (retrieval). The
    student's logits use the teacher's candidate features, as ALBEF does.
    """

    uses_queue = True
    uses_teacher = True

    def __init__(self, same_image_positives: bool = False) -> None:
        super().__init__()
        self.same_image_positives = same_image_positives

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        if inputs.image_feat_m is None or inputs.text_feat_m is None:
            raise ValueError("infonce_queue needs the momentum teacher's features")
        batch = inputs.image_feat.shape[0]
        image_all = _with_queue(inputs.image_feat_m, inputs.image_queue)
        text_all = _with_queue(inputs.text_feat_m, inputs.text_queue)
        ids, candidate_ids = None, None
        if self.same_image_positives and inputs.image_ids is not None:
            ids = inputs.image_ids
            candidate_ids = ids if inputs.queue_ids is None else torch.cat([ids, inputs.queue_ids.view(-1)])
        targets = positive_targets(ids, candidate_ids, batch, image_all.shape[1], image_all.device)

        with torch.no_grad():
            sim_i2t_m = inputs.image_feat_m @ text_all / inputs.temp
            sim_t2i_m = inputs.text_feat_m @ image_all / inputs.temp
            targets_i2t = inputs.alpha * F.softmax(sim_i2t_m, dim=1) + (1 - inputs.alpha) * targets
            targets_t2i = inputs.alpha * F.softmax(sim_t2i_m, dim=1) + (1 - inputs.alpha) * targets

        sim_i2t = inputs.image_feat @ text_all / inputs.temp
        sim_t2i = inputs.text_feat @ image_all / inputs.temp
        loss_i2t = soft_cross_entropy(sim_i2t, targets_i2t).mean()
        loss_t2i = soft_cross_entropy(sim_t2i, targets_t2i).mean()
        return ContrastiveOutput(
            loss=(loss_i2t + loss_t2i) / 2,
            sim_i2t=sim_i2t[:, :batch],
            sim_t2i=sim_t2i[:, :batch],
            logs={"itc_i2t": loss_i2t.detach(), "itc_t2i": loss_t2i.detach()},
        )


def _with_queue(batch_feats: torch.Tensor, queue: torch.Tensor | None) -> torch.Tensor:
    """``[D, B (+ Q)]``: the batch's features as columns, then the queue."""
    columns = batch_feats.T
    if queue is None:
        return columns
    return torch.cat([columns, queue.clone().detach().to(columns.dtype)], dim=1)


# Imported here, after the base classes they subclass, to avoid a circular import.
from albef_struct.losses.decomposable import DecomposableLoss  # noqa: E402
from albef_struct.losses.infonce import InfoNCELoss  # noqa: E402
from albef_struct.losses.siglip import SigLIPLoss  # noqa: E402

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
