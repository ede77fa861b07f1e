"""ALBEF's distilled classification loss (SNLI-VE, NLVR2 and their text-assignment stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from albef_struct.losses.mlm import soft_cross_entropy


def distilled_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE(logits, labels) + alpha * soft-CE(logits, softmax(teacher_logits))``.

    Averaged over the batch, computed in float32; plain cross-entropy without
    ``teacher_logits``. ``logits``/``teacher_logits`` are ``[B, C]``, ``labels`` ``[B]``.
    """
    loss = F.cross_entropy(logits.float(), labels)
    if teacher_logits is None:
        return loss
    soft = soft_cross_entropy(logits.float(), teacher_logits.detach().float().softmax(dim=-1)).mean()
    return (1.0 - alpha) * loss + alpha * soft
