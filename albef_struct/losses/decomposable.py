"""A decomposable contrastive loss with per-sample running denominators, for small batches.

INFERRED reconstruction (LOSSES_REFERENCE.md §2.4; SogCLR §3): for anchor ``i`` the
generalized loss is ``ℓ_i = −s_ii/τ + log A_i`` with ``A_i`` the mean of
``exp(s_ij/τ)`` over **all** candidates ``j`` of the dataset. Since
``1/A = ∫₀^∞ exp(−uA) du``, an auxiliary ``u_i`` with ``E[u_i] = 1/A_i`` turns
``log A_i`` into the linear (decomposable) term ``u_i·A_i``, estimated without bias
from a minibatch. ``A_i`` itself is tracked across steps in a per-sample buffer.

Per step, for each direction (image→text, text→image), with ``Â_i`` the minibatch
estimate of ``A_i`` (detached for the update):

* state: ``Ā_i ← Â_i`` on a sample's first visit, else ``Ā_i ← (1−γ)Ā_i + γÂ_i``;
* E-step: ``u_i = 1/Ā_i`` (``u_mode="mean"``) or ``u_i ~ Gamma(k, rate k·Ā_i)``
  (``"sample"``, mean ``1/Ā_i``; ``k = gamma_shape``, ``k = 1`` is Exponential), from
  the state after this step's update (``u_from="updated"``, SogCLR's order) or before
  it (``"previous"``: ``u_i`` independent of this batch; a first visit uses ``Â_i``);
* M-step surrogate: ``−s_ii/τ + u_i·Â_i`` with ``u_i`` detached, whose gradient
  ``−∇s_ii/τ + ∇Â_i/Ā_i`` is unbiased for ``∇ℓ_i`` when ``Ā_i = A_i`` and the
  candidates are drawn like the dataset. In practice ``Ā_i`` is a noisy, lagged
  estimate: ``"updated"`` correlates ``u_i`` with this batch's ``Â_i`` (weight ``γ``;
  ``γ = 1`` with ``positive_weight="batch"`` is exactly in-batch InfoNCE), and
  ``E[1/Ā] > 1/A`` (Jensen) unless ``Ā`` averages many visits (small ``γ``), at the
  price of a lag. ``experiments/gradient_bias.py`` measures these effects at batch 8:
  there the defaults (γ = 0.9, ``"updated"``) are biased or diverge; ``"previous"``
  with γ = 0.1 matches the exact-denominator result under heavy label noise but is
  still biased where the loss is flat.

The returned ``loss`` is the surrogate: its value is near ``1 − s_ii/τ`` and is not
comparable to InfoNCE. ``logs`` carry the generalized-loss estimate
``−s_ii/τ + log Ā_i`` per direction. State is kept as ``log Ā`` (stable for small τ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from albef_struct.losses.contrastive import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.infonce import candidate_similarities

PositiveWeight = Literal["batch", "dataset"]


def log_minibatch_denominator(
    logits: torch.Tensor, positive_index: torch.Tensor, positive_weight: PositiveWeight, num_samples: int
) -> torch.Tensor:
    """``log Â_i`` for logits ``[..., B, G]`` (anchors × candidates) → ``[..., B]``.

    ``"batch"``: ``Â_i = mean_j exp(logit_ij)`` over the ``G`` candidates, the positive
    included with weight ``1/G``. It is unbiased for the dataset mean only when the
    candidates are drawn independently of the anchor; with the positive always in the
    batch it targets ``A_i`` with positive weight ``1/G`` (the §2.4 generalized loss
    with ``λ = G − 1`` negatives).
    ``"dataset"``: positive weight ``1/N`` (``N = num_samples``), the other ``G − 1``
    candidates share ``1 − 1/N``; unbiased for ``A_i`` = mean over all ``N`` dataset
    candidates when the other candidates are uniform draws from the rest of the dataset
    (any shuffled sampler).
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


def ema_log_update(
    log_old: torch.Tensor, log_new: torch.Tensor, gamma: float | torch.Tensor, visited: torch.Tensor
) -> torch.Tensor:
    """``log((1−γ)·Ā + γ·Â)`` where ``visited``, else ``log Â`` (all in log space; ``γ`` may be a tensor)."""
    if isinstance(gamma, torch.Tensor):
        blended = torch.logaddexp(log_old + torch.log1p(-gamma), log_new + torch.log(gamma))
    elif gamma >= 1.0:
        blended = log_new
    elif gamma <= 0.0:
        blended = log_old
    else:
        blended = torch.logaddexp(log_old + math.log1p(-gamma), log_new + math.log(gamma))
    return torch.where(visited, blended, log_new)


def decomposable_terms(
    positive_logit: torch.Tensor, log_hat: torch.Tensor, log_avg: torch.Tensor, u_factor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ``(surrogate, generalized-loss estimate)``.

    ``surrogate = −s_ii/τ + u·Â`` with ``u = u_factor/Ā`` (``u_factor = 1`` when None:
    the mean E-step); ``generalized = −s_ii/τ + log Ā`` (detached).
    """
    log_avg = log_avg.detach().to(log_hat.dtype)
    weighted = torch.exp(log_hat - log_avg)
    if u_factor is not None:
        weighted = u_factor.detach() * weighted
    return -positive_logit + weighted, (-positive_logit + log_avg).detach()


class DecomposableLoss(ContrastiveLoss):
    """Symmetric decomposable contrastive loss with per-sample running denominators.

    Args:
        num_samples: dataset size (buffer length); 0 until :meth:`resize` is called.
        gamma: EMA rate ``γ`` of the running denominators; ``γ = 1`` reproduces in-batch
            InfoNCE's gradient exactly. SogCLR uses 0.9 with ``u_from="updated"``, which the
            synthetic gradient-bias experiment (experiments/gradient_bias.py) measured to be
            biased at batch 8; the defaults (0.1, "previous", "dataset") were the variant
            that reached the optimum there.
        u_mode: ``"mean"`` (``u = 1/Ā``) or ``"sample"`` (``u ~ Gamma(k, k·Ā)``).
        gamma_shape: ``k`` of the Gamma draw.
        positive_weight: how ``Â`` weights the positive, see :func:`log_minibatch_denominator`.
        u_from: ``"updated"`` (SogCLR) or ``"previous"`` state for ``u``, see the module docstring.
        generator: random source of the Gamma draws (the global RNG when None).

    Needs ``inputs.sample_index`` (stable dataset indices). Under DDP, pass
    ``inputs.gather``: the ``(index, Â)`` of every rank are gathered so each rank
    applies the same update. The buffers are identical on all ranks by construction,
    so DDP's ``broadcast_buffers`` (a rank-0 broadcast every step) is not needed for them.
    """

    def __init__(
        self,
        num_samples: int = 0,
        gamma: float = 0.1,
        u_mode: Literal["mean", "sample"] = "mean",
        gamma_shape: float = 1.0,
        positive_weight: PositiveWeight = "dataset",
        u_from: Literal["updated", "previous"] = "previous",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if u_mode not in ("mean", "sample"):
            raise ValueError(f"u_mode must be 'mean' or 'sample', got {u_mode!r}")
        if positive_weight not in ("batch", "dataset"):
            raise ValueError(f"positive_weight must be 'batch' or 'dataset', got {positive_weight!r}")
        if u_from not in ("updated", "previous"):
            raise ValueError(f"u_from must be 'updated' or 'previous', got {u_from!r}")
        if gamma_shape <= 0:
            raise ValueError(f"gamma_shape must be positive, got {gamma_shape}")
        self.gamma, self.u_mode, self.gamma_shape = gamma, u_mode, gamma_shape
        self.positive_weight: PositiveWeight = positive_weight
        self.u_from = u_from
        self.generator = generator
        self.register_buffer("log_avg_i2t", torch.zeros(num_samples))
        self.register_buffer("log_avg_t2i", torch.zeros(num_samples))
        self.register_buffer("visited", torch.zeros(num_samples, dtype=torch.bool))

    @property
    def num_samples(self) -> int:
        return self.visited.shape[0]

    def running_denominators(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Ā image→text, Ā text→image)``, each ``[num_samples]`` (unvisited entries are meaningless)."""
        return self.log_avg_i2t.exp(), self.log_avg_t2i.exp()

    def resize(self, num_samples: int) -> None:
        """Size the state to the dataset; entries below ``min(old, new)`` are kept, the rest start unvisited."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        keep = min(self.num_samples, num_samples)
        for name in ("log_avg_i2t", "log_avg_t2i", "visited"):
            old = getattr(self, name)
            new = torch.zeros(num_samples, dtype=old.dtype, device=old.device)
            new[:keep] = old[:keep]
            setattr(self, name, new)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "visited")
        if saved is not None and saved.shape[0] != self.num_samples:
            self.resize(saved.shape[0])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        if inputs.sample_index is None:
            raise ValueError(
                "the decomposable loss needs ContrastiveInputs.sample_index: the DataModule must provide a "
                "stable dataset index per pair (batch['index']) so per-sample denominators can be tracked"
            )
        if self.num_samples == 0:
            raise ValueError("DecomposableLoss has no state: call resize(len(train_dataset)) before training")
        sim_i2t, sim_t2i, positive = candidate_similarities(inputs)
        logits_i2t, logits_t2i = sim_i2t / inputs.temp, sim_t2i / inputs.temp
        log_hat_i2t = log_minibatch_denominator(logits_i2t, positive, self.positive_weight, self.num_samples)
        log_hat_t2i = log_minibatch_denominator(logits_t2i, positive, self.positive_weight, self.num_samples)
        index = inputs.sample_index.to(self.visited.device).long()
        previous = (self.visited[index], self.log_avg_i2t[index], self.log_avg_t2i[index])  # copies
        self.update(index, log_hat_i2t.detach(), log_hat_t2i.detach(), inputs.gather)
        used = [self.log_avg_i2t[index], self.log_avg_t2i[index]]
        if self.u_from == "previous":
            used = [torch.where(previous[0], old, new) for old, new in zip(previous[1:], used)]

        terms = {}
        for direction, logits, log_hat, log_avg in (
            ("i2t", logits_i2t, log_hat_i2t, used[0]),
            ("t2i", logits_t2i, log_hat_t2i, used[1]),
        ):
            positive_logit = logits.gather(1, positive[:, None]).squeeze(1)
            terms[direction] = decomposable_terms(positive_logit, log_hat, log_avg, self.u_factor(log_hat))
        surrogate = (terms["i2t"][0].mean() + terms["t2i"][0].mean()) / 2
        generalized_i2t, generalized_t2i = terms["i2t"][1].mean(), terms["t2i"][1].mean()
        return ContrastiveOutput(
            loss=surrogate,
            sim_i2t=logits_i2t[:, positive],
            sim_t2i=logits_t2i[:, positive],
            logs={
                "itc_i2t": generalized_i2t,
                "itc_t2i": generalized_t2i,
                "itc_generalized": (generalized_i2t + generalized_t2i) / 2,
            },
        )

    def u_factor(self, like: torch.Tensor) -> torch.Tensor | None:
        """``u·Ā``: None for the mean E-step, else ``Gamma(k, 1)/k`` draws shaped like ``like``."""
        if self.u_mode == "mean":
            return None
        device = self.generator.device if self.generator is not None else like.device
        shape = torch.full(like.shape, self.gamma_shape, dtype=like.dtype, device=device)
        # torch._standard_gamma is what torch.distributions.Gamma samples with; it takes a generator.
        return (torch._standard_gamma(shape, generator=self.generator) / self.gamma_shape).to(like.device)

    @torch.no_grad()
    def update(
        self,
        index: torch.Tensor,
        log_hat_i2t: torch.Tensor,
        log_hat_t2i: torch.Tensor,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Fold minibatch estimates into the running denominators (all ranks' when ``gather`` is given).

        An index seen twice in one (global) batch is updated once, from its first occurrence.
        """
        log_hats = torch.stack([log_hat_i2t, log_hat_t2i], dim=1)
        if gather is not None:
            index, log_hats = _gathered(gather, index), _gathered(gather, log_hats)
        index, first = _first_occurrences(index)
        log_hats = log_hats[first].to(self.log_avg_i2t.dtype)
        seen = self.visited[index]
        for column, state in enumerate((self.log_avg_i2t, self.log_avg_t2i)):
            state[index] = ema_log_update(state[index], log_hats[:, column], self.gamma, seen)
        self.visited[index] = True


def _gathered(gather: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 (accepts a gather that stacks ``[R, ...]``)."""
    out = gather(tensor)
    return out.flatten(0, 1) if out.ndim == tensor.ndim + 1 else out


def _first_occurrences(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unique indices, position of each one's first occurrence)``; deterministic."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.shape[0], device=index.device)
    first = torch.full_like(unique, index.shape[0]).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first
