"""The decomposable contrastive loss's estimators as pure functions of tensors.

Log-denominators over a minibatch's candidates or over a dataset feature bank, the
running estimate's update and its per-pair rate schedule, and the per-anchor
surrogate whose gradient estimates the full-data loss's. The notation and the
choices they implement are described in :mod:`albef_struct.losses.decomposable`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "Form",
    "PositiveWeight",
    "cosine_gamma",
    "decomposable_surrogate",
    "ema_log_update",
    "log_bank_denominator",
    "log_minibatch_denominator",
]

PositiveWeight = Literal["batch", "dataset"]
Form = Literal["relative", "absolute"]


def log_minibatch_denominator(
    logits: torch.Tensor, positive_index: torch.Tensor, positive_weight: PositiveWeight, num_samples: int
) -> torch.Tensor:
    """``log Σ_j w_j exp(logit_ij)`` over ``G`` candidates, logits ``[B, G]`` → ``[B]``.

    ``"batch"``: ``w = 1/G`` for every candidate. ``"dataset"``: the positive gets
    ``1/N`` (``N = num_samples``) and the other ``G − 1`` candidates share ``1 − 1/N``,
    so the result is unbiased for the mean over all ``N`` dataset candidates when the
    other candidates are uniform draws from the rest of the dataset (a shuffled sampler).
    Pass logits relative to the positive to get ``log ĝ``, absolute ones to get ``log Â``.
    """
    candidates = logits.shape[-1]
    if positive_weight == "batch":
        return torch.logsumexp(logits, dim=-1) - math.log(candidates)
    if candidates < 2 or num_samples < 2:
        raise ValueError(
            f"positive_weight='dataset' needs at least 2 candidates and 2 samples, got {candidates} and {num_samples}"
        )
    log_weights = torch.full(logits.shape[-2:], math.log1p(-1.0 / num_samples) - math.log(candidates - 1),
                             dtype=logits.dtype, device=logits.device)
    log_weights.scatter_(1, positive_index[:, None], -math.log(num_samples))
    return torch.logsumexp(logits + log_weights, dim=-1)


def log_bank_denominator(
    anchor: torch.Tensor,
    positive_logit: torch.Tensor,
    bank: torch.Tensor,
    in_bank: torch.Tensor,
    own_index: torch.Tensor,
    temp: torch.Tensor,
    log_positive_weight: float,
) -> torch.Tensor:
    """``log g_i`` of anchors against a feature bank, relative to the positive.

    ``g_i = w₊ + (1 − w₊)·mean_{j ∈ bank, j ≠ own_i} exp(anchor_i·bank_j/τ − positive_logit_i)``
    with ``w₊ = exp(log_positive_weight)``; entries whose ``in_bank`` is False are left
    out, and an anchor with no other entry gets ``w₊`` alone. Shapes: anchors
    ``[..., B, D]``, bank ``[..., N, D]``, ``in_bank`` ``[..., N]``, ``own_index`` and
    ``positive_logit`` ``[..., B]``, ``temp`` broadcastable to ``[..., B, N]``. Returns
    ``[..., B]``; call it without gradients.
    """
    relative = (anchor @ bank.transpose(-1, -2).to(anchor.dtype)) / temp - positive_logit[..., None]
    relative = relative + torch.zeros_like(in_bank, dtype=relative.dtype).masked_fill(~in_bank, float("-inf"))[..., None, :]
    relative.scatter_(-1, own_index[..., None], float("-inf"))
    count = in_bank.sum(dim=-1, keepdim=True).to(relative.dtype) - in_bank.gather(-1, own_index).to(relative.dtype)
    log_mean = torch.logsumexp(relative, dim=-1) - count.clamp(min=1).log()
    negatives = log_mean + math.log1p(-math.exp(log_positive_weight))
    return torch.logaddexp(torch.full_like(negatives, log_positive_weight), negatives)


def ema_log_update(
    log_old: torch.Tensor, log_new: torch.Tensor, gamma: float | torch.Tensor, visited: torch.Tensor
) -> torch.Tensor:
    """``log((1−γ)·exp(log_old) + γ·exp(log_new))`` where ``visited``, else ``log_new``; ``γ`` may be a tensor."""
    gamma = torch.as_tensor(gamma, dtype=log_old.dtype, device=log_old.device)
    keep = torch.log1p(-gamma.clamp(max=1.0))  # -inf at γ = 1
    blended = torch.logaddexp(log_old + keep, log_new + torch.log(gamma))
    blended = torch.where(gamma >= 1.0, log_new, blended)
    return torch.where(visited, blended, log_new)


def cosine_gamma(
    visits: torch.Tensor, gamma: float | torch.Tensor, gamma_min: float | torch.Tensor, decay_visits: int | torch.Tensor
) -> torch.Tensor:
    """The running estimate's rate for a pair seen ``visits`` times before: 1 on the first
    visit, then a cosine from ``gamma`` to ``gamma_min`` over ``decay_visits`` visits
    (``gamma_min`` throughout when ``decay_visits`` is 0). Arguments broadcast."""
    visits = visits.double()
    gamma, gamma_min, decay = (torch.as_tensor(v, dtype=torch.float64, device=visits.device)
                               for v in (gamma, gamma_min, decay_visits))
    progress = torch.minimum((visits - 1).clamp(min=0), decay) / decay.clamp(min=1)
    progress = torch.where(decay > 0, progress, torch.ones_like(progress))
    rate = gamma_min + (gamma - gamma_min) * 0.5 * (1 + torch.cos(math.pi * progress))
    return torch.where(visits == 0, torch.ones_like(rate), rate)


def decomposable_surrogate(
    positive_logit: torch.Tensor,
    log_hat: torch.Tensor,
    log_used: torch.Tensor,
    form: Form = "relative",
    u_factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-anchor surrogate whose gradient estimates the full-data loss's.

    ``log_hat`` and ``log_used`` are ``log ĝ`` and ``log u`` in the form's coordinates
    (relative: ``log g``; absolute: ``log A = log g + s_ii/τ``). Relative surrogate
    ``ĝ/u``; absolute ``−s_ii/τ + Â/Ā``; ``u_factor`` (detached) multiplies ``1/u``.
    """
    weighted = torch.exp(log_hat - log_used.detach().to(log_hat.dtype))
    if u_factor is not None:
        weighted = u_factor.detach() * weighted
    return weighted if form == "relative" else -positive_logit + weighted
