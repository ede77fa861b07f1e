"""``torch.compile`` for ALBEF's encoders, in place, and a Lightning callback that applies it.

Each encoder (``visual_encoder``, ``text_encoder``, ``fusion_encoder``) is compiled
with :meth:`torch.nn.Module.compile`, which keeps the module object and its
state-dict keys (no ``_orig_mod.`` prefix): checkpoints, the EMA teacher update
and the checkpoint converter see the same names. The losses, the queue and the
hard-negative sampling stay eager. The student and the teacher share one code
object per encoder class, so with dynamo's default parameter inlining they
share compiled graphs (one per grad mode).

Text lengths change from batch to batch (captions are padded to the longest in
the batch). With ``dynamic=None`` (default) the first new length triggers one
recompile in which the changed sizes become symbolic, after which any length
reuses that graph; ``dynamic=True`` makes every size symbolic from the start.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn

ENCODERS: tuple[str, ...] = ("visual_encoder", "text_encoder", "fusion_encoder")


def compile_encoders(
    model: nn.Module,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    fullgraph: bool = False,
    encoders: tuple[str, ...] = ENCODERS,
) -> list[str]:
    """Compile ``model``'s encoders in place; returns the names compiled.

    ``mode`` is ``torch.compile``'s (``None``, ``"reduce-overhead"``,
    ``"max-autotune"``, ...). Missing encoders are skipped.
    """
    compiled = []
    for name in encoders:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module.compile(mode=mode, dynamic=dynamic, backend=backend, fullgraph=fullgraph)
            compiled.append(name)
    return compiled


def compile_module_encoders(pl_module: nn.Module, **options: Any) -> list[str]:
    """Compile the encoders of ``pl_module.model`` and, when present, of its EMA teacher."""
    names = [f"model.{n}" for n in compile_encoders(pl_module.model, **options)]
    teacher = getattr(pl_module, "teacher", None)
    if teacher is not None:
        names += [f"teacher.model.{n}" for n in compile_encoders(teacher.model, **options)]
    return names


class CompileEncoders(pl.Callback):
    """Compiles the module's encoders (student and teacher) once, when the trainer sets up.

    Add it to ``trainer.callbacks`` in a config::

        - class_path: albef_struct.lit.compile.CompileEncoders
          init_args: {mode: null, dynamic: null}
    """

    def __init__(self, mode: str | None = None, dynamic: bool | None = None, backend: str = "inductor") -> None:
        super().__init__()
        self.options = {"mode": mode, "dynamic": dynamic, "backend": backend}
        self.compiled: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.compiled:
            self.compiled = compile_module_encoders(pl_module, **self.options)
