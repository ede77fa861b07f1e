"""Checking the run's configuration before the first step (the ConfigValidator callback)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from albef_struct.lit.validation import validate_run

__all__ = ["ConfigValidator"]


class ConfigValidator(Callback):
    """Checks the run's configuration in ``setup`` (see :func:`~albef_struct.lit.validation.validate_run`)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        validate_run(trainer, pl_module, trainer.datamodule, stage)
