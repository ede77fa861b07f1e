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
        self._cache_checked = False
        cache = getattr(trainer.datamodule, "loaded_image_cache", None)
        if cache is not None:  # before the optimizer is built: a partial cache freezes the blocks it stands for
            cache.attach(pl_module)

    def _check_image_cache(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A DataModule reading cached image tokens needs the frozen encoder they came from; checked once
        the weights are in place (after ``--ckpt_path`` restored them), before the first batch."""
        cache = getattr(trainer.datamodule, "loaded_image_cache", None)
        model = getattr(pl_module, "model", None)
        if cache is None or model is None or getattr(self, "_cache_checked", False):
            return
        cache.check_encoder(model.visual_encoder, model.config.vision.img_size)
        self._cache_checked = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_image_cache(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_image_cache(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_image_cache(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_image_cache(trainer, pl_module)
