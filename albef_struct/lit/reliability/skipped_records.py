"""Counting and reporting the records the data loaders dropped (the SkippedRecordsReport callback)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["SkippedRecordsReport"]

log = logging.getLogger(__name__)


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
