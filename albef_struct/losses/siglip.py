"""SigLIP's pairwise sigmoid loss (Zhai et al., 2023), in the form its released code trains."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.infonce import candidate_similarities


class SigLIPLoss(ContrastiveLoss):
    """``−Σ_ij log σ(z_ij · (t·⟨x_i, y_j⟩ + b)) / n_local_anchors``, ``z_ij = +1`` on positives else ``−1``.

    ``t = exp(logit_scale)`` and ``b = logit_bias`` are learnable parameters of this
    module (init ``t = 10``, ``b = −10``); ``inputs.temp`` is not used. Local image
    anchors are paired with every text candidate: over all ranks that covers every
    image-text pair of the global batch once, so no text→image direction is needed.
    """

    def __init__(self, scale_init: float = 10.0, bias_init: float = -10.0) -> None:
        super().__init__()
        if scale_init <= 0:
            raise ValueError(f"scale_init must be positive, got {scale_init}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        sim_i2t, _, positive = candidate_similarities(inputs)
        logits = self.logit_scale.exp() * sim_i2t + self.logit_bias
        labels = torch.full_like(logits, -1.0)
        labels.scatter_(1, positive[:, None], 1.0)
        pair_losses = -F.logsigmoid(labels * logits)
        anchors = logits.shape[0]
        positive_part = pair_losses.gather(1, positive[:, None]).sum()
        loss = pair_losses.sum() / anchors
        local = logits[:, positive]
        return ContrastiveOutput(
            loss=loss,
            sim_i2t=local,
            sim_t2i=local.T,
            logs={
                "siglip_pos": (positive_part / anchors).detach(),
                "siglip_neg": (loss - positive_part / anchors).detach(),
                "siglip_scale": self.logit_scale.detach().exp(),
                "siglip_bias": self.logit_bias.detach(),
            },
        )
