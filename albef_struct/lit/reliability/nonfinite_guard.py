"""Stopping or skipping an optimizer step whose loss terms or gradients are NaN/Inf (the NonFiniteGuard callback)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from albef_struct.errors import ProjectError
from albef_struct.lit.reliability.checkpoint_io import check_finite_checkpoint
from albef_struct.lit.reliability.nonfinite import finite_flags, nonfinite_kind, nonfinite_terms

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "OnNonFinite", "observe_losses"]

log = logging.getLogger(__name__)

OnNonFinite = Literal["error", "skip"]


class NonFiniteLossError(ProjectError, FloatingPointError):
    """A training loss term or gradient became NaN or Inf (``on_nonfinite="error"``)."""


class _StateSnapshot:
    """Copies of a module's buffers and frozen parameters (EMA teacher, queues, loss state), reused per step."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.saved: list[torch.Tensor] = []

    @staticmethod
    def _current(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = {name: buf for name, buf in module.named_buffers() if buf is not None}
        state.update((name, p) for name, p in module.named_parameters() if not p.requires_grad)
        return state

    @torch.no_grad()
    def capture(self, module: torch.nn.Module) -> None:
        state = self._current(module)
        names = list(state)
        tensors = [state[n].detach() for n in names]
        same = names == self.names and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in zip(self.saved, tensors)
        )
        if same and tensors:
            torch._foreach_copy_(self.saved, tensors)
        elif not same:
            self.names, self.saved = names, [t.clone() for t in tensors]

    @torch.no_grad()
    def restore(self, module: torch.nn.Module) -> None:
        state = self._current(module)
        for name, saved in zip(self.names, self.saved):
            state[name].copy_(saved)


def _gradient_problem(module: torch.nn.Module) -> str | None:
    """``"the gradient of <param> is NaN"`` for the first parameter whose gradient is not finite, else None."""
    named = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None and p.grad.numel()]
    if not named:
        return None
    flags = finite_flags([g.detach() for _, g in named])
    for (name, grad), finite in zip(named, flags):
        if not finite:
            return f"the gradient of {name} is {nonfinite_kind(grad)}"
    return None


class NonFiniteGuard(Callback):
    """Stops or skips an optimizer step whose loss terms or gradients are NaN/Inf; never saves NaN weights.

    Modules name their loss terms by calling :func:`observe_losses` (ALBEF's
    ``log_losses`` does); without it the guard still sees the returned loss and
    the gradients, and names ``train/loss``. The decision is taken just before
    the optimizer step (after backward), on every rank alike under DDP.

    ``on_nonfinite="error"`` raises :class:`NonFiniteLossError`, e.g. ``train/mlm
    is NaN at step 7 ...``; the failing step is not applied.

    ``on_nonfinite="skip"`` drops that step's gradients so the optimizer changes
    no parameter and no optimizer state, and (with ``restore_state``) puts back
    every buffer and frozen parameter as it was before the batch: the EMA teacher,
    the feature queue and the decomposable loss's per-sample state, which the
    forward pass updates. What still advances: ``global_step``, the learning-rate
    schedule (and the alpha ramp that follows it) and the random-number streams;
    the batch is consumed. Skipped steps are logged as ``train/skipped_steps``
    and listed at the end of training.

    Args:
        on_nonfinite: ``"error"`` or ``"skip"``.
        check_grads: also check every gradient (catches a finite loss with an
            Inf gradient); one sum per gradient tensor per step. Not done
            under 16-bit mixed precision, whose gradient scaler skips such steps itself.
        restore_state: in skip mode, snapshot buffers and frozen parameters
            before each step (memory: one copy of the teacher and the queues).
    """

    def __init__(self, on_nonfinite: OnNonFinite = "error", check_grads: bool = True, restore_state: bool = True) -> None:
        if on_nonfinite not in ("error", "skip"):
            raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.check_grads = check_grads
        self.restore_state = restore_state
        self.skipped: list[tuple[int, str]] = []
        self._reason: str | None = None
        self._observed = False
        self._batch_idx = 0
        self._snapshot = _StateSnapshot()

    # called by modules (observe_losses) from inside training_step
    def observe(self, trainer: pl.Trainer, stage: str, losses: Mapping[str, Any]) -> None:
        """Record the first non-finite term of a training step's ``losses``."""
        if stage != "train" or not trainer.training:
            return
        self._observed = True
        if self._reason is None:
            bad = nonfinite_terms(losses)
            if len(bad) > 1:
                bad.pop("loss", None)  # the total is non-finite because a named term is
            if bad:
                self._reason = ", ".join(f"{stage}/{name} is {kind}" for name, kind in bad.items())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx
        self._observed = False
        first_of_step = batch_idx % trainer.accumulate_grad_batches == 0
        if self.on_nonfinite == "skip" and self.restore_state and first_of_step:
            self._snapshot.capture(pl_module)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self._observed and self._reason is None and not bool(torch.isfinite(loss.detach()).all()):
            self._reason = f"train/loss is {nonfinite_kind(loss.detach())}"

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        reason, self._reason = self._reason, None
        if reason is None and self.check_grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            reason = _gradient_problem(pl_module)
        if trainer.world_size > 1:
            anywhere = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if anywhere and reason is None:
                reason = "another rank's loss or gradient is not finite"
        if reason is None:
            return
        step = trainer.global_step
        where = f"at step {step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        if self.on_nonfinite == "error":
            raise NonFiniteLossError(
                f"{reason} {where}. Training stopped before this optimizer step, so no parameter took a "
                "non-finite value and no such checkpoint was written. What to do: resume from the last "
                "checkpoint with a lower learning rate or gradient clipping (trainer.gradient_clip_val), check "
                "this batch's data, or skip such steps with the NonFiniteGuard callback's on_nonfinite: skip."
            )
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone by the optimizer
        if self.restore_state:
            self._snapshot.restore(pl_module)
        self.skipped.append((step, reason))
        if trainer.is_global_zero:
            log.warning("skipped the optimizer step %s: %s", where, reason)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.on_nonfinite == "skip":
            pl_module.log("train/skipped_steps", float(len(self.skipped)), on_step=True, on_epoch=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped and trainer.is_global_zero:
            log.warning("%s", self.summary())

    def summary(self) -> str:
        """One line per skipped step (the first ten)."""
        if not self.skipped:
            return "no optimizer step was skipped"
        lines = [f"skipped {len(self.skipped)} optimizer step(s) with a non-finite loss or gradient:"]
        lines += [f"  step {step}: {reason}" for step, reason in self.skipped[:10]]
        return "\n".join(lines)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        check_finite_checkpoint(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": [list(item) for item in self.skipped]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = [(int(step), str(reason)) for step, reason in state_dict.get("skipped", [])]


def observe_losses(module: pl.LightningModule, stage: str, losses: Mapping[str, Any]) -> None:
    """Show a step's loss terms to the run's :class:`NonFiniteGuard` callbacks (a no-op without one)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return
    for callback in trainer.callbacks:
        if isinstance(callback, NonFiniteGuard):
            callback.observe(trainer, stage, losses)
