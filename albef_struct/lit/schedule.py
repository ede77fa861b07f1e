"""Learning-rate schedule (linear warm-up, then cosine) and the distillation-alpha ramp."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    """AdamW and schedule settings (defaults: ALBEF pretraining).

    ALBEF warms up linearly from ``warmup_lr`` to ``lr`` over ``warmup_steps``
    optimizer steps, then follows a cosine from ``lr`` to ``min_lr`` that is
    evaluated per epoch (``cosine="epoch"``, faithful: epoch 0 stays at ``lr``)
    or per step after the warm-up (``cosine="step"``, smooth). Weight decay applies to every parameter that is
    not 1-D and not a bias, the temperature and position embeddings included.
    ``lr_scale`` multiplies the whole schedule for parameters whose name contains a key
    (e.g. ``{crossattention: 10}`` for fusion layers that start fresh on pretrained encoders;
    ALBEF: none). ``freeze`` lists parameter-name substrings whose parameters are not trained
    at all (e.g. ``[visual_encoder]`` to keep the image encoder fixed; ALBEF: none).
    """

    lr: float = 1e-4
    weight_decay: float = 0.02
    warmup_lr: float = 1e-5
    warmup_steps: int = 2000
    min_lr: float = 1e-5
    cosine: Literal["epoch", "step"] = "epoch"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fused: bool | None = None  # fused AdamW kernel (None: where it takes every parameter, see lit/base.py fused_adamw_fits)
    lr_scale: dict[str, float] = field(default_factory=dict)  # parameter-name substring -> lr factor
    freeze: list[str] = field(default_factory=list)  # parameter-name substrings kept fixed

    def __post_init__(self) -> None:
        for key, factor in self.lr_scale.items():
            if not key or factor <= 0:
                raise ValueError(f"optim.lr_scale needs non-empty name patterns and positive factors, got {key!r}: {factor}")
        if isinstance(self.freeze, str):  # a bare name would be read as one pattern per character
            raise ValueError(f"optim.freeze takes a list of parameter-name patterns, e.g. [{self.freeze}], not {self.freeze!r}")
        if not all(self.freeze):
            raise ValueError(f"optim.freeze needs non-empty parameter-name patterns, got {self.freeze!r}")


class WarmupCosine:
    """``LambdaLR`` multiplier: step -> lr(step) / lr. A plain object so it checkpoints."""

    def __init__(self, cfg: OptimConfig, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        self.lr = cfg.lr
        self.warmup_lr = cfg.warmup_lr
        self.warmup_steps = cfg.warmup_steps
        self.min_lr = cfg.min_lr
        self.per_epoch = cfg.cosine == "epoch"
        self.set_length(total_steps, steps_per_epoch, epochs)

    def set_length(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        """The run's optimizer steps in all and per epoch, and its epochs (known once training starts)."""
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epochs = max(1, epochs)

    def learning_rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        if self.per_epoch:
            progress = min(step // self.steps_per_epoch, self.epochs) / self.epochs
        else:  # smooth: the cosine starts where the warm-up ends
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(step - self.warmup_steps, span) / span
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.learning_rate(step) / self.lr if self.lr > 0 else 0.0


def ramped_alpha(alpha: float, step: int, steps_per_epoch: int, warmup: bool = True) -> float:
    """ALBEF's distillation weight: ramped linearly from 0 over the first epoch when ``warmup``."""
    if not warmup:
        return alpha
    return alpha * min(1.0, step / max(1, steps_per_epoch))
