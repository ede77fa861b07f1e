"""The LightningModule base every task shares: optimizer groups, schedule, alpha ramp, logging."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from albef_struct.lit import sharding
from albef_struct.lit.reliability.nonfinite_guard import observe_losses
from albef_struct.lit.reliability.state_shapes import check_state_shapes
from albef_struct.lit.schedule import OptimConfig, WarmupCosine, ramped_alpha


def fused_adamw_fits(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel takes every parameter of ``groups``: floating tensors (sharded
    DTensors included) on one CPU or CUDA device. ``optim.fused: null`` uses it then: on a CPU, torch's
    own default (one tensor at a time) took 336 ms a step for 61M parameters here, the fused kernel 28 ms."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def decay_groups(
    named_params: Iterator[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay_prefixes: tuple[str, ...] = (),
    lr_scale: Mapping[str, float] | None = None,
    lr: float | None = None,
) -> list[dict]:
    """ALBEF's two AdamW groups: no decay for 1-D tensors and biases, decay for the rest.

    0-D parameters (the temperature) decay, as in ALBEF. Parameters under
    ``no_decay_prefixes`` (e.g. a loss's learnable scale and bias) never decay.
    Frozen parameters (momentum copies) are left out. With ``lr_scale``, a parameter
    whose name contains one of its keys (the first that matches) goes into extra
    groups whose learning rate is ``lr`` times that factor.
    """
    scales = dict(lr_scale or {})
    if scales and lr is None:
        raise ValueError("decay_groups needs the base lr to apply lr_scale")
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    matched: set[str] = set()
    for name, param in named_params:
        if not param.requires_grad:
            continue
        exempt = param.ndim == 1 or name.endswith(".bias") or name.startswith(no_decay_prefixes)
        key = next((key for key in scales if key in name), None)
        matched.update([key] if key else [])
        buckets.setdefault((not exempt, scales.get(key, 1.0)), []).append(param)
    unmatched = sorted(set(scales) - matched)
    if unmatched:
        raise ValueError(f"optim.lr_scale key(s) {unmatched} match no trainable parameter name "
                         "(keys are substrings of names such as 'model.fusion_encoder.layer.0.crossattention.self.query.weight')")
    groups = []
    for (decays, scale), params in buckets.items():
        if scale != 1.0 and not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if scale != 1.0:
            group["lr"] = lr * scale
        groups.append(group)
    return groups


def freeze_parameters(named_params: Iterator[tuple[str, nn.Parameter]], patterns: list[str]) -> int:
    """Stop training every parameter whose name contains one of ``patterns``; returns how many.

    A pattern that matches no parameter name raises, naming it, so a typo cannot leave
    the encoder it meant to freeze training.
    """
    if not patterns:
        return 0
    params = [(name, param) for name, param in named_params if any(pattern in name for pattern in patterns)]
    unmatched = sorted(p for p in set(patterns) if not any(p in name for name, _ in params))
    if unmatched:
        raise ValueError(f"optim.freeze pattern(s) {unmatched} match no parameter name "
                         "(patterns are substrings of names such as 'model.visual_encoder.blocks.0.attn.qkv.weight')")
    frozen = sum(int(param.requires_grad) for _, param in params)
    for _, param in params:
        param.requires_grad_(False)
    return frozen


class ALBEFLitBase(pl.LightningModule):
    """Owns the optimizer, the warm-up + cosine schedule and the distillation-alpha ramp.

    Subclasses build their model in ``__init__`` and implement the steps; they
    call :meth:`log_losses` with a dict of loss terms.
    """

    def __init__(self, optim: OptimConfig | None = None, alpha: float = 0.4, alpha_warmup: bool = True) -> None:
        super().__init__()
        self.optim = optim or OptimConfig()
        self.alpha = alpha
        self.alpha_warmup = alpha_warmup

    # --- schedule --------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (1 before a trainer is attached)."""
        trainer = self._trainer
        if trainer is None:
            return 1
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
            return max(1, int(trainer.estimated_stepping_batches) // epochs)
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def current_alpha(self) -> float:
        """Distillation weight at the current optimizer step."""
        return ramped_alpha(self.alpha, self.global_step, self.steps_per_epoch, self.alpha_warmup)

    #: parameter-name prefixes that never get weight decay (loss parameters, not weights)
    no_decay_prefixes: tuple[str, ...] = ("contrastive.",)

    def configure_model(self) -> None:
        """Apply ``optim.freeze`` here, before the strategy wraps the model: DDP records which
        parameters need gradients when it is built, so freezing later would leave it waiting
        for gradients that never come.

        Under :class:`~albef_struct.lit.sharding.FullyShardedStrategy` (any strategy that gives the
        module a device mesh), the model and its teacher are then sharded over the data-parallel ranks.
        """
        freeze_parameters(self.named_parameters(), self.optim.freeze)
        if self.device_mesh is not None and not sharding.is_sharded(self.model):  # fit then test: shard once
            sharding.shard_module(self, sharding.data_parallel_mesh(self.device_mesh))

    def configure_optimizers(self):
        groups = decay_groups(self.named_parameters(), self.optim.weight_decay, self.no_decay_prefixes,
                              self.optim.lr_scale, self.optim.lr)
        kwargs = {"lr": self.optim.lr, "betas": tuple(self.optim.betas), "eps": self.optim.eps}
        fused = fused_adamw_fits(groups) if self.optim.fused is None else self.optim.fused
        if fused:
            kwargs["fused"] = True
        elif self.optim.fused is False:
            kwargs["fused"] = False
        optimizer = torch.optim.AdamW(groups, **kwargs)
        # The run's length is set in on_train_start (step 0 does not depend on it): reading
        # trainer.estimated_stepping_batches here would build the training loader before a
        # resumed run's loader state is restored, and Lightning then never applies that state,
        # so the epoch would restart from its first batch (Lightning issue #20550).
        schedule = WarmupCosine(self.optim, total_steps=1, steps_per_epoch=1, epochs=1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Give the learning-rate schedule the run's length, now that the (restored) loader exists."""
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        total = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", ()):
                if isinstance(schedule, WarmupCosine):
                    schedule.set_length(total, self.steps_per_epoch, epochs)

    @property
    def results_dir(self) -> str:
        """Where result tables (JSON) of this run go: the first logger's folder, else the root dir.

        Read from the logger directly: ``trainer.log_dir`` broadcasts from rank 0, so
        calling it on rank 0 alone (as result writers do) would hang under DDP.
        """
        loggers = self.trainer.loggers
        if loggers:
            return str(loggers[0].log_dir or loggers[0].save_dir or self.trainer.default_root_dir)
        return str(self.trainer.default_root_dir)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning loads the weights (``--ckpt_path``, ``load_from_checkpoint``): a shape mismatch
        names the first mismatching key and the settings that differ, instead of torch's list of sizes."""
        check_state_shapes(self, checkpoint)

    # --- logging -------------------------------------------------------------------
    def log_losses(self, stage: str, losses: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """Log every loss term as ``<stage>/<name>``; ``loss`` also on the progress bar.

        The terms are also shown to the run's ``NonFiniteGuard`` (if any), so a NaN/Inf
        is reported by the name of the term that produced it.
        """
        observe_losses(self, stage, losses)
        for name, value in losses.items():
            self.log(
                f"{stage}/{name}",
                value.detach() if isinstance(value, torch.Tensor) else value,
                prog_bar=name == "loss",
                on_step=stage == "train",
                on_epoch=stage != "train",
                batch_size=batch_size,
                sync_dist=stage != "train",
            )
