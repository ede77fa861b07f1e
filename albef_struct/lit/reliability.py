"""What keeps a training run safe when things go wrong: Lightning callbacks and a checkpoint plugin.

* :class:`AtomicCheckpointIO` writes checkpoints atomically (temp file beside the
  target, fsync, ``os.replace``), refuses non-finite weights and loads only with
  ``torch.load(weights_only=True)``, with messages that say what to do.
* :class:`NonFiniteGuard` stops (``on_nonfinite="error"``) or skips
  (``"skip"``) an optimizer step whose loss or gradient is NaN/Inf, naming the
  loss term and the step; modules report their loss terms with :func:`observe_losses`.
* :class:`SkippedRecordsReport` sums the batches' ``n_skipped`` (records the data
  loader dropped with ``skip_bad_records``) per epoch and reports them.
* :class:`RNGStateCheckpoint` and the DataModules' training loader
  (:class:`~albef_struct.data.ResumableDataLoader`, re-exported here) make a run
  resumed mid-epoch see the same random numbers and the same batches as an
  uninterrupted one.
* :class:`ConfigValidator` runs :func:`albef_struct.lit.validation.validate_run`
  in ``setup``, so a configuration that cannot work fails before the first step.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from albef_struct.checkpoint import CheckpointError, load_checkpoint_file
from albef_struct.data.datamodules import ResumableDataLoader, ResumableEpochSampler
from albef_struct.errors import ProjectError
from albef_struct.lit.run_folder import DISK_FULL, RunFolderGuard, disk_full_error
from albef_struct.lit.validation import validate_run

__all__ = [
    "AtomicCheckpointIO",
    "ConfigValidator",
    "NonFiniteCheckpointError",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "ResumableDataLoader",
    "ResumableEpochSampler",
    "RunFolderGuard",
    "SkippedRecordsReport",
    "atomic_torch_save",
    "check_state_shapes",
    "install_atomic_checkpoint_io",
    "nonfinite_tensors",
    "nonfinite_terms",
    "observe_losses",
]

log = logging.getLogger(__name__)

OnNonFinite = Literal["error", "skip"]


# --- finding NaN / Inf ---------------------------------------------------------------------------------
def _kind(tensor: torch.Tensor) -> str:
    """``"NaN"`` or ``"Inf"`` for a tensor known to hold a non-finite value."""
    return "NaN" if bool(torch.isnan(tensor).any()) else "Inf"


def _finite_flags(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each (non-empty, floating) tensor is all finite; one reduction per device and dtype."""
    flags: list[bool] = [True] * len(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    for indices in groups.values():
        norms = torch._foreach_norm([tensors[i] for i in indices], ord=math.inf)  # max |x|; NaN propagates
        for i, finite in zip(indices, torch.stack(norms).isfinite().tolist()):
            flags[i] = finite
    return flags


def _floating(items: Iterable[tuple[str, Any]]) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, value.detach())
        for name, value in items
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0
    ]


def nonfinite_tensors(state: Mapping[str, Any]) -> dict[str, str]:
    """The floating tensors of ``state`` that hold NaN or Inf, as ``{name: "NaN" | "Inf"}`` (in order)."""
    named = _floating(state.items())
    if not named:
        return {}
    flags = _finite_flags([t for _, t in named])
    return {name: _kind(t) for (name, t), finite in zip(named, flags) if not finite}


def nonfinite_terms(losses: Mapping[str, Any]) -> dict[str, str]:
    """The loss terms that are NaN or Inf, as ``{name: "NaN" | "Inf"}``; plain floats are checked too."""
    as_tensors = {
        name: value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        for name, value in losses.items()
        if isinstance(value, (torch.Tensor, float, int))
    }
    return nonfinite_tensors(as_tensors)


# --- checkpoint files ----------------------------------------------------------------------------------
class NonFiniteCheckpointError(ProjectError, ValueError):
    """Refusal to write a checkpoint whose weights hold NaN or Inf."""


class NonFiniteLossError(ProjectError, FloatingPointError):
    """A training loss term or gradient became NaN or Inf (``on_nonfinite="error"``)."""


def _nonfinite_weights_message(bad: Mapping[str, str], step: Any, path: str | None) -> str:
    first = ", ".join(f"{name} ({kind})" for name, kind in itertools.islice(bad.items(), 3))
    more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
    target = f" {path}" if path else ""
    return (
        f"refusing to write the checkpoint{target} at step {step}: {first}{more} hold non-finite values, so "
        "training has diverged. The checkpoints already on disk are kept. Resume from the last good one with a "
        "lower learning rate or gradient clipping (trainer.gradient_clip_val), or add the NonFiniteGuard callback "
        "with on_nonfinite: skip to skip steps whose loss is NaN/Inf."
    )


def check_finite_checkpoint(checkpoint: Mapping[str, Any], path: str | None = None) -> None:
    """Raise :class:`NonFiniteCheckpointError` when the checkpoint's ``state_dict`` holds NaN or Inf."""
    bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
    if bad:
        raise NonFiniteCheckpointError(_nonfinite_weights_message(bad, checkpoint.get("global_step", "?"), path))


def _fsync_dir(directory: str) -> None:
    """Make a rename durable (a no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike, fsync: bool = True) -> None:
    """``torch.save`` to ``path + ".tmp"`` in the same folder, then ``os.replace`` onto ``path``.

    A process killed while saving leaves at most a partial ``.tmp`` file; ``path``
    is either the old file or the complete new one; a full disk removes the partial
    file and raises a :class:`~albef_struct.checkpoint.CheckpointError` saying so (``os.replace`` within one
    folder is atomic on POSIX and Windows). With ``fsync`` the data and the rename
    also survive a power loss.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise disk_full_error(path, err) from err
        raise
    if fsync:
        _fsync_dir(directory)


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def earlier_checkpoints(path: Path) -> str:
    """The other ``.ckpt`` files beside ``path``, newest first, as a hint."""
    with contextlib.suppress(OSError):
        others = sorted(
            (p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if others:
            return " Other checkpoints in that folder, newest first: " + ", ".join(p.name for p in others[:5]) + "."
    return ""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``CheckpointIO`` with atomic writes, a non-finite-weights guard and weights-only loading.

    Lightning's own ``TorchCheckpointIO`` (2.6) serialises into memory and commits
    through an fsspec temp file in the *system* temp folder: when that folder is
    on another file system the final move is a copy, and a kill during the copy
    leaves a truncated ``last.ckpt``. This plugin writes beside the target and
    renames (see :func:`atomic_torch_save`); remote paths (``s3://`` ...) use
    Lightning's writer.

    Loading always uses ``torch.load(weights_only=True)`` (also when
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set), so a checkpoint carrying
    pickled objects that could run code is refused with an explanation, as are
    empty, truncated or corrupt files. Tensors are loaded on the CPU.

    Args:
        refuse_nonfinite: raise :class:`NonFiniteCheckpointError` instead of writing
            a checkpoint whose ``state_dict`` holds NaN or Inf.
        fsync: flush the file and the folder entry to disk before returning.
    """

    def __init__(self, refuse_nonfinite: bool = True, fsync: bool = True) -> None:
        super().__init__()
        self.refuse_nonfinite = refuse_nonfinite
        self.fsync = fsync

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got {storage_options!r}")
        if self.refuse_nonfinite:
            check_finite_checkpoint(checkpoint, str(path))
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path, self.fsync)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                f"{path}: loading with weights_only=False is switched off in this project (unpickling can run "
                "arbitrary code). Convert a trusted file once with `albef-struct convert IN OUT`, or extract its "
                "weights with torch.load(..., weights_only=False) yourself, and pass the new file."
            )
        if _is_remote(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        try:
            return load_checkpoint_file(path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}{earlier_checkpoints(Path(path))}") from err.__cause__


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``."""
    if not isinstance(values, Mapping):
        return {prefix: values} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return out


def check_state_shapes(module: torch.nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming the first key of ``checkpoint["state_dict"]`` whose shape differs.

    Keys owned by a submodule that adapts its own state when loading (one that
    overrides ``_load_from_state_dict``, e.g. the decomposable loss resizing its
    per-sample state) are left to it. The message also lists the hyper-parameters
    that differ between the checkpoint and ``module`` (its ``hparams``).
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return
    own = module.state_dict(keep_vars=True)
    mismatched = []
    for key, mine in own.items():
        theirs = state.get(key)
        if not isinstance(theirs, torch.Tensor) or theirs.shape == mine.shape:
            continue
        owner = module.get_submodule(key.rpartition(".")[0])
        if type(owner)._load_from_state_dict is not torch.nn.Module._load_from_state_dict:
            continue
        mismatched.append((key, tuple(theirs.shape), tuple(mine.shape)))
    if not mismatched:
        return
    key, theirs, mine = mismatched[0]
    saved, current = _flat(checkpoint.get("hyper_parameters") or {}), _flat(dict(getattr(module, "hparams", {}) or {}))
    names = [name for name in saved if name in current and saved[name] != current[name] and name != "init_from"]
    names.sort(key=lambda name: not name.startswith("arch."))  # the architecture first: it decides the shapes
    differ = [f"{name}: {saved[name]!r} in the checkpoint, {current[name]!r} here" for name in names]
    settings = f" Settings that differ: {'; '.join(differ[:6])}." if differ else ""
    more = f" ({len(mismatched) - 1} more key(s) differ)" if len(mismatched) > 1 else ""
    raise CheckpointError(
        f"{key} has shape {theirs} in the checkpoint but {mine} in the model (first mismatching key){more}: the "
        f"checkpoint was written by a model built with other settings.{settings} Build the model with the "
        "checkpoint's settings (model.init_args, e.g. from the config.yaml saved beside it), or start from its "
        "weights with model.init_args.init_from, which adapts what it can and reports the rest."
    )


def install_atomic_checkpoint_io(trainer: pl.Trainer) -> bool:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless the user configured another plugin.

    Returns whether it was installed (for ALBEFCLI: call it on the new trainer).
    """
    current = trainer.strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


# --- non-finite losses -----------------------------------------------------------------------------------
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
    flags = _finite_flags([g.detach() for _, g in named])
    for (name, grad), finite in zip(named, flags):
        if not finite:
            return f"the gradient of {name} is {_kind(grad)}"
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
            Inf gradient); one reduction over the gradients per step. Not done
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
            self._reason = f"train/loss is {_kind(loss.detach())}"

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


# --- skipped records -------------------------------------------------------------------------------------
class SkippedRecordsReport(Callback):
    """Counts the records the data loaders dropped (``n_skipped`` of every batch) and reports them per epoch.

    With ``skip_bad_records`` a record whose image cannot be read is dropped by the
    collate function and counted in the batch's ``n_skipped`` (the count covers
    every worker, since collation runs in the worker). At the end of each train,
    validation and test epoch the counts are summed over ranks, logged as
    ``<stage>/skipped_records`` (when the DataModule's ``skip_bad_records`` is on
    or the count is not zero) and, when not zero, printed as a warning; the end
    of training also lists the records excluded when the annotation files were
    read (the DataModule's ``skip_report``, with reasons).
    """

    def __init__(self) -> None:
        self._pending: dict[str, torch.Tensor] = {}
        self.totals: dict[str, int] = {}

    def _add(self, stage: str, batch: Any) -> None:
        count = batch.get("n_skipped") if isinstance(batch, Mapping) else None
        if count is None:
            return
        count = torch.as_tensor(count).detach().sum()
        previous = self._pending.get(stage)
        self._pending[stage] = count if previous is None else previous + count.to(previous.device)

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, when: str) -> int:
        pending = self._pending.pop(stage, None)
        local = torch.zeros((), dtype=torch.float32, device=pl_module.device)
        if pending is not None:
            local = local + pending.to(local.device, torch.float32)
        total = int(trainer.strategy.reduce(local, reduce_op="sum")) if trainer.world_size > 1 else int(local)
        self.totals[stage] = self.totals.get(stage, 0) + total
        if total or getattr(trainer.datamodule, "skip_bad_records", False):
            pl_module.log(f"{stage}/skipped_records", float(total), on_step=False, on_epoch=True, sync_dist=False)
        if total and trainer.is_global_zero:
            log.warning(
                "%s: skipped %d %s record(s) whose image could not be read (missing, empty or corrupt files; "
                "skip_bad_records is on). Set skip_bad_records: false to stop at the first one with its file and record.",
                when, total, stage,
            )
        return total

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._add("train", batch)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._add("val", batch)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._add("test", batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module, "train", f"epoch {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._flush(trainer, pl_module, "val", f"validation at step {trainer.global_step}")
        else:
            self._pending.pop("val", None)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module, "test", "test")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        report = getattr(trainer.datamodule, "skip_report", None) if trainer.datamodule is not None else None
        loaded = report.summary() if report is not None and report.total else None
        dropped = self.totals.get("train", 0)
        if dropped or loaded:
            parts = [f"training skipped {dropped} unreadable record(s) while loading batches"]
            if loaded:
                parts.append(f"and, when reading the annotation files, {loaded}")
            log.warning("%s", " ".join(parts))


# --- resuming mid-epoch: random state and data order -------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, CUDA) random states as plain values that load with ``weights_only``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where the same devices exist)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(Callback):
    """Saves the random states in every checkpoint and restores them when training resumes from it.

    Lightning does not: a resumed run otherwise draws other dropout masks, MLM
    masks, hard negatives and (with ``num_workers: 0``) augmentations than the
    uninterrupted run. The states are restored in ``on_train_start``, after the
    data loader's iterator exists and before the first batch is loaded. The saved
    state is rank 0's; with ``num_workers > 0`` each worker is re-seeded, so
    augmentations after a resume differ (the data order does not, see
    :class:`ResumableDataLoader`).
    """

    def __init__(self) -> None:
        self._pending: Mapping[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            restore_rng_state(self._pending)
        self._pending = None


# --- configuration ------------------------------------------------------------------------------------------
class ConfigValidator(Callback):
    """Checks the run's configuration in ``setup`` (see :func:`~albef_struct.lit.validation.validate_run`)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        validate_run(trainer, pl_module, trainer.datamodule, stage)
