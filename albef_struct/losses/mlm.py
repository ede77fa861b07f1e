"""Masked language modelling: ALBEF's 80/10/10 masking and the distilled MLM loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    protected_ids: Sequence[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask tokens the way ALBEF (and BERT) does; returns ``(masked_ids, labels)``.

    Each token not in ``protected_ids`` (ALBEF: ``[PAD]`` and ``[CLS]``) is
    selected with ``probability``; of those, 80% become ``[MASK]``, 10% a random
    id from the whole vocabulary and 10% stay unchanged. Labels are the original
    ids at selected positions and ``-100`` elsewhere.
    """
    device = input_ids.device

    def bernoulli(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device) < p

    protected = torch.isin(input_ids, torch.as_tensor(list(protected_ids), device=device))
    selected = bernoulli(probability) & ~protected
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = bernoulli(0.8) & selected
    to_random = bernoulli(0.5) & selected & ~to_mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Per-row ``-sum(targets * log_softmax(logits))`` over the last dimension."""
    return -(soft_targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def mlm_distill_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE(labels) + alpha * soft-CE(teacher)``, both averaged over labelled tokens.

    A batch with no labelled token gives 0 (with a gradient path) instead of NaN.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    selected = (flat_labels != IGNORE_INDEX).to(flat_logits.dtype)
    count = selected.sum().clamp(min=1.0)
    nll = F.cross_entropy(flat_logits, flat_labels.clamp(min=0), reduction="none")
    loss = (nll * selected).sum() / count
    if teacher_logits is None:
        return loss
    soft = F.softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1]).float(), dim=-1)
    distill = (soft_cross_entropy(flat_logits, soft) * selected).sum() / count
    return (1.0 - alpha) * loss + alpha * distill
