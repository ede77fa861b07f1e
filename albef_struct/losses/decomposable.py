"""A decomposable contrastive loss for small batches: per-anchor dataset denominators.

For anchor ``i`` (image→text; text→image is symmetric) the full-data loss is
``ℓ_i = log g_i`` with ``g_i = Σ_j w_j·exp((s_ij − s_ii)/τ)`` over **all** ``N`` pairs
of the dataset (``w = 1/N`` each: mean-normalised InfoNCE, ``−s_ii/τ + log A_i``). The
log of a sum cannot be estimated without bias from a minibatch; the decomposition
(``log x ≤ x/u + log u − 1``, tight at ``u = x``) replaces it by the linear term
``ĝ_i/u_i`` with ``u_i`` a detached estimate of ``g_i`` and ``ĝ_i`` the minibatch
estimate of ``g_i``. Its gradient ``∇ĝ_i/u_i`` is unbiased for ``∇ℓ_i`` when
``u_i = g_i``. ``docs/decomposable_loss.md`` has the derivation and the measurements.

Two choices decide whether this works in training (both measured, see the docs):

* ``form``: ``"relative"`` (default) stores and divides the denominator *relative to
  the positive*, ``ĝ_i/u_i``, so a wrong ``u_i`` only rescales anchor ``i``'s whole
  step (pull and push together). ``"absolute"`` is the earlier surrogate
  ``−s_ii/τ + Â_i/Ā_i`` with ``A_i = g_i·exp(s_ii/τ)``: a stale ``Ā_i`` scales only the
  push, and when the denominators fall during training the pull wins: collapse.
* ``denominator``: where ``u_i`` comes from.
  ``"bank"`` (default): a dataset feature bank (one detached embedding per training
  pair and modality, overwritten whenever the pair is in a batch) gives
  ``u_i = Σ_j w_j exp((q_i·bank_j − s_ii)/τ)`` over the whole bank, with the live
  anchor and the *current* temperature every step: exact up to the staleness of
  the other pairs' embeddings; ``N × D`` memory per modality and a ``B × N``
  product per step (fine up to about a million pairs). Unvisited entries are left
  out of the mean until they are first seen.
  ``"running"``: one scalar per pair and direction, ``u ← (1−γ)u + γĝ`` (SogCLR,
  FastCLIP), for datasets too large for a bank. ``γ = 1`` on a pair's first visit,
  then a cosine from ``gamma`` down to ``gamma_min`` over ``gamma_decay_visits``
  visits (FastCLIP's schedule, counted per pair). ``u_from="updated"`` folds this
  batch's estimate in before use (SogCLR/FastCLIP order); ``"previous"`` uses the
  state before it. Stored values are computed at the temperature of the step that
  stored them, so they go stale when a learnable ``τ`` moves.

``calibrate="batch"`` (default) rescales the batch's ``u`` by one common factor so the
mean ``ĝ_i/u_i`` is 1: drifting embeddings shift every anchor's denominator alike, and
the resulting jumps in step size were measured to wreck AdamW runs; the anchors'
relative weights, what the decomposition adds over in-batch InfoNCE, are kept
(``"none"``: unbiased with exact ``u``, self-normalised bias ``O(1/B)`` otherwise).
``bank_max_age`` leaves bank rows older than that many steps out (0: none).

``positive_weight`` sets the positive's weight in ``g``: ``"dataset"`` (``1/N``: the
full-data loss above) or ``"batch"`` (``1/G`` for ``G`` candidates: with
``denominator="running"``, ``gamma=1`` and ``u_from="updated"`` the gradient is
exactly in-batch InfoNCE's). ``u_mode="sample"`` draws ``u⁻¹·Gamma(k, 1)/k`` instead
of using the mean (the stochastic E-step; ``k = gamma_shape``).

The returned ``loss`` is the surrogate (near 1 for the relative form) and is not
comparable to InfoNCE; ``logs`` carry the full-data loss estimate ``log u_i`` per
direction (``itc_generalized``) and the mean ratio ``ĝ_i/u_i`` (``itc_ratio``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.decomposable_estimators import (
    Form,
    PositiveWeight,
    cosine_gamma,
    decomposable_surrogate,
    ema_log_update,
    log_bank_denominator,
    log_minibatch_denominator,
)
from albef_struct.losses.infonce import candidate_similarities

Denominator = Literal["bank", "running"]
_STATE = ("state_i2t", "state_t2i", "visits", "bank_image", "bank_text", "written")


class DecomposableLoss(ContrastiveLoss):
    """Symmetric decomposable contrastive loss; see the module docstring for each option.

    Args:
        num_samples: dataset size (state length); 0 until :meth:`resize` is called.
        form: ``"relative"`` or ``"absolute"`` surrogate.
        denominator: ``"bank"`` (feature bank, exact dataset denominators) or ``"running"``.
        gamma, gamma_min, gamma_decay_visits: the running estimate's rate schedule.
        u_from: ``"updated"`` or ``"previous"`` running state for ``u``.
        u_mode: ``"mean"`` or ``"sample"`` (Gamma-distributed ``u``).
        gamma_shape: ``k`` of the Gamma draw.
        positive_weight: the positive's weight in the denominator.
        feature_dim: embedding size of the bank (:meth:`resize` can set it).
        bank_max_age: bank rows written more than this many steps ago are left out (0: none).
        calibrate: ``"batch"`` (common scale of ``u`` fitted to the batch) or ``"none"``.
        generator: random source of the Gamma draws (the global RNG when None).

    Needs ``inputs.sample_index`` (stable dataset indices). Under DDP pass
    ``inputs.gather``: every rank's indices, estimates and bank rows are gathered so
    each rank applies the same update and the state stays identical across ranks.
    """

    def __init__(
        self,
        num_samples: int = 0,
        form: Form = "relative",
        denominator: Denominator = "bank",
        gamma: float = 1.0,
        gamma_min: float = 0.2,
        gamma_decay_visits: int = 10,
        u_from: Literal["updated", "previous"] = "updated",
        u_mode: Literal["mean", "sample"] = "mean",
        gamma_shape: float = 1.0,
        positive_weight: PositiveWeight = "dataset",
        feature_dim: int = 0,
        bank_max_age: int = 0,
        calibrate: Literal["none", "batch"] = "batch",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_choice("form", form, ("relative", "absolute"))
        _check_choice("denominator", denominator, ("bank", "running"))
        _check_choice("u_from", u_from, ("updated", "previous"))
        _check_choice("u_mode", u_mode, ("mean", "sample"))
        _check_choice("positive_weight", positive_weight, ("batch", "dataset"))
        if not (0.0 < gamma_min <= 1.0 and 0.0 < gamma <= 1.0):
            raise ValueError(f"gamma and gamma_min must be in (0, 1], got {gamma} and {gamma_min}")
        if gamma_decay_visits < 0 or gamma_shape <= 0 or feature_dim < 0 or bank_max_age < 0:
            raise ValueError("gamma_decay_visits, feature_dim and bank_max_age must be >= 0 and gamma_shape > 0")
        self.form: Form = form
        self.denominator: Denominator = denominator
        self.gamma, self.gamma_min, self.gamma_decay_visits = gamma, gamma_min, gamma_decay_visits
        self.u_from, self.u_mode, self.gamma_shape = u_from, u_mode, gamma_shape
        self.positive_weight: PositiveWeight = positive_weight
        self.bank_max_age = bank_max_age
        self.calibrate = calibrate
        self._index_checked = False
        self.generator = generator
        for name in ("state_i2t", "state_t2i"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("visits", torch.zeros(0, dtype=torch.long))
        self.register_buffer("written", torch.zeros(0, dtype=torch.long))  # bank: the step each row was written at
        self.register_buffer("bank_step", torch.zeros((), dtype=torch.long))
        for name in ("bank_image", "bank_text"):
            self.register_buffer(name, torch.zeros(0, 0))
        self.resize(num_samples, feature_dim)

    @property
    def num_samples(self) -> int:
        return self.visits.shape[0]

    def resize(self, num_samples: int, feature_dim: int | None = None) -> None:
        """Size the state to the dataset (and the bank to ``feature_dim``); rows below
        ``min(old, new)`` are kept, the rest start unvisited."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        dim = self.bank_image.shape[1] if feature_dim is None else feature_dim
        running = self.denominator == "running"
        shapes = {"state_i2t": (num_samples if running else 0,), "state_t2i": (num_samples if running else 0,),
                  "visits": (num_samples,)}
        shapes["bank_image"] = shapes["bank_text"] = (0 if running else num_samples, dim)
        shapes["written"] = (0 if running else num_samples,)
        for name, shape in shapes.items():
            self._reshape_buffer(name, shape)
        self._index_checked = False

    def _reshape_buffer(self, name: str, shape: tuple[int, ...]) -> None:
        old = getattr(self, name)
        if tuple(old.shape) == shape:
            return
        new = torch.zeros(shape, dtype=old.dtype, device=old.device)
        if old.ndim == len(shape) and (len(shape) == 1 or old.shape[1] == shape[1]):
            keep = min(old.shape[0], shape[0])
            new[:keep] = old[:keep]
        setattr(self, name, new)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if prefix + "log_avg_i2t" in state_dict:
            raise ValueError(
                f"{prefix}log_avg_i2t: this checkpoint holds the decomposable loss's earlier state (absolute running "
                "averages), which this version no longer reads; start the loss's state afresh by loading the weights "
                "with init_from instead of resuming"
            )
        for name in _STATE:  # take the saved sizes (dataset length, bank width)
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        index = self._checked_index(inputs)
        sim_i2t, sim_t2i, positive = candidate_similarities(inputs)
        logits = {"i2t": sim_i2t / inputs.temp, "t2i": sim_t2i / inputs.temp}
        positive_logit = logits["i2t"].gather(1, positive[:, None]).squeeze(1)
        shift = positive_logit if self.form == "absolute" else torch.zeros_like(positive_logit)
        log_hat = {
            d: log_minibatch_denominator(l - positive_logit[:, None], positive, self.positive_weight, self.num_samples)
            + shift
            for d, l in logits.items()
        }
        with torch.no_grad():
            if self.denominator == "bank":
                log_used = self._bank_denominators(inputs, index, positive_logit.detach(), shift.detach())
            else:
                log_used = self._running_denominators(index, {d: v.detach() for d, v in log_hat.items()}, inputs.gather)
        # logged before calibration: the full-data loss as u sees it, and how far u is from this batch
        estimate = {d: (u - shift.detach()).mean() for d, u in log_used.items()}
        ratio = torch.stack([torch.exp(log_hat[d].detach() - log_used[d]) for d in logits]).mean()
        if self.calibrate == "batch":
            log_used = self._calibrated(log_used, log_hat, inputs.gather)
        surrogate = {d: decomposable_surrogate(positive_logit, log_hat[d], log_used[d], self.form,
                                               self.u_factor(log_hat[d])) for d in logits}
        logs = {"itc_i2t": estimate["i2t"], "itc_t2i": estimate["t2i"],
                "itc_generalized": (estimate["i2t"] + estimate["t2i"]) / 2, "itc_ratio": ratio}
        if self.denominator == "bank":
            logs["itc_bank_cosine"] = self.last_bank_cosine
        return ContrastiveOutput(
            loss=(surrogate["i2t"].mean() + surrogate["t2i"].mean()) / 2,
            sim_i2t=logits["i2t"][:, positive],
            sim_t2i=logits["t2i"][:, positive],
            logs=logs,
        )

    @staticmethod
    @torch.no_grad()
    def _calibrated(
        log_used: dict[str, torch.Tensor],
        log_hat: dict[str, torch.Tensor],
        gather: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """``u`` times the (global) batch's mean ``ĝ/u``: the anchors' relative weights stay, u's common scale goes."""
        out = {}
        for d, log_u in log_used.items():
            log_ratio = log_hat[d].detach() - log_u
            if gather is not None:  # every rank scales by the same, global-batch factor
                log_ratio = _gathered(gather, log_ratio)
            out[d] = log_u + torch.logsumexp(log_ratio, 0) - math.log(log_ratio.shape[0])
        return out

    def _checked_index(self, inputs: ContrastiveInputs) -> torch.Tensor:
        if inputs.sample_index is None:
            raise ValueError(
                "the decomposable loss needs ContrastiveInputs.sample_index: the DataModule must provide a "
                "stable dataset index per pair (batch['index']) so per-sample denominators can be tracked"
            )
        if self.num_samples == 0:
            raise ValueError("DecomposableLoss has no state: call resize(len(train_dataset)) before training")
        index = inputs.sample_index.to(self.visits.device).long()
        if not self._index_checked:  # once (a host sync): the dataset does not change within a run
            if index.min() < 0 or index.max() >= self.num_samples:
                raise ValueError(f"sample_index out of range [0, {self.num_samples}): the loss was sized for another "
                                 "dataset; resize it to len(train_dataset)")
            self._index_checked = True
        return index

    def _bank_denominators(
        self, inputs: ContrastiveInputs, index: torch.Tensor, positive_logit: torch.Tensor, shift: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Write this (global) batch into the bank, then ``log u`` of each local anchor over the whole bank."""
        image, text = inputs.image_feat.detach(), inputs.text_feat.detach()
        if self.bank_image.shape[1] != image.shape[1]:
            if self.visits.any():
                raise ValueError(f"the feature bank holds {self.bank_image.shape[1]}-d embeddings, the model "
                                 f"gives {image.shape[1]}-d ones")
            self.resize(self.num_samples, image.shape[1])
        rows, ranks_image, ranks_text = index, image, text
        if inputs.gather is not None:
            rows = _gathered(inputs.gather, index)
            ranks_image, ranks_text = _gathered(inputs.gather, image), _gathered(inputs.gather, text)
        revisited = (self.visits[index] > 0).to(text.dtype)  # no host sync: a masked mean, 1 when none
        count = revisited.sum()
        cosine = ((self.bank_text[index].to(text.dtype) * text).sum(-1) * revisited).sum() / count.clamp(min=1)
        self.last_bank_cosine = torch.where(count > 0, cosine, torch.ones_like(cosine))
        self.bank_step += 1
        self.bank_image[rows] = ranks_image.to(self.bank_image.dtype)
        self.bank_text[rows] = ranks_text.to(self.bank_text.dtype)
        self.visits[rows] += 1
        self.written[rows] = self.bank_step
        in_bank = self.visits > 0
        if self.bank_max_age > 0:
            in_bank &= self.bank_step - self.written < self.bank_max_age
        log_w = -math.log(self.num_samples) if self.positive_weight == "dataset" else -math.log(
            inputs.candidates()[0].shape[0])
        return {
            "i2t": log_bank_denominator(image, positive_logit, self.bank_text, in_bank, index, inputs.temp, log_w) + shift,
            "t2i": log_bank_denominator(text, positive_logit, self.bank_image, in_bank, index, inputs.temp, log_w) + shift,
        }

    def _running_denominators(
        self, index: torch.Tensor, log_hat: dict[str, torch.Tensor], gather: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Fold this (global) batch's estimates into the running state; the ``log u`` of each local anchor."""
        previous = {"i2t": self.state_i2t[index].clone(), "t2i": self.state_t2i[index].clone()}
        seen = self.visits[index] > 0
        self.update(index, log_hat["i2t"], log_hat["t2i"], gather)
        used = {"i2t": self.state_i2t[index], "t2i": self.state_t2i[index]}
        if self.u_from == "previous":
            used = {d: torch.where(seen, previous[d], used[d]) for d in used}
        return used

    def u_factor(self, like: torch.Tensor) -> torch.Tensor | None:
        """``u·(1/u)``-scale draws: None for the mean E-step, else ``Gamma(k, 1)/k`` shaped like ``like``."""
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
        """Fold minibatch estimates into the running state (all ranks' when ``gather`` is given).

        An index seen twice in one (global) batch is updated once, from its first occurrence.
        """
        log_hats = torch.stack([log_hat_i2t, log_hat_t2i], dim=1)
        if gather is not None:
            index, log_hats = _gathered(gather, index), _gathered(gather, log_hats)
        index, first = _first_occurrences(index)
        log_hats = log_hats[first].to(self.state_i2t.dtype)
        visits = self.visits[index]
        rate = cosine_gamma(visits, self.gamma, self.gamma_min, self.gamma_decay_visits).to(self.state_i2t.dtype)
        for column, state in enumerate((self.state_i2t, self.state_t2i)):
            state[index] = ema_log_update(state[index], log_hats[:, column], rate, visits > 0)
        self.visits[index] = visits + 1


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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
