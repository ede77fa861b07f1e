"""CLIP-style symmetric in-batch InfoNCE on the online features (no teacher, no queue)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput


def candidate_similarities(inputs: ContrastiveInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image @ text_candidatesᵀ, text @ image_candidatesᵀ, positive_index)``: ``[B, G]``, ``[B, G]``, ``[B]``.

    Local anchors against the (possibly all-gathered) candidates; ``positive_index[i]``
    is the column of anchor ``i``'s pair, so ``sims[:, positive_index]`` is the local block.
    """
    image_c, text_c, positive = inputs.candidates()
    return inputs.image_feat @ text_c.T, inputs.text_feat @ image_c.T, positive


class InfoNCELoss(ContrastiveLoss):
    """``(CE(image→text) + CE(text→image)) / 2`` with logits ``s/τ``, ``τ = inputs.temp``.

    Under DDP the candidates are the global batch (all-gathered with gradients by the
    caller) and the loss is the mean over local anchors, so DDP's gradient average
    equals the single-process gradient on the combined batch.
    """

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        sim_i2t, sim_t2i, positive = candidate_similarities(inputs)
        logits_i2t, logits_t2i = sim_i2t / inputs.temp, sim_t2i / inputs.temp
        loss_i2t = F.cross_entropy(logits_i2t, positive)
        loss_t2i = F.cross_entropy(logits_t2i, positive)
        return ContrastiveOutput(
            loss=(loss_i2t + loss_t2i) / 2,
            sim_i2t=logits_i2t[:, positive],
            sim_t2i=logits_t2i[:, positive],
            logs={"itc_i2t": loss_i2t.detach(), "itc_t2i": loss_t2i.detach()},
        )
