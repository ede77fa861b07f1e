"""Base of every ALBEF LightningModule: the model, its optional EMA teacher and weight import."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

from pytorch_lightning.utilities import rank_zero_info

from albef_struct.checkpoint.files import stored_class_path
from albef_struct.checkpoint.fit import AdaptReport
from albef_struct.lit.base import ALBEFLitBase
from albef_struct.lit.checkpoints import load_weights
from albef_struct.lit.schedule import OptimConfig
from albef_struct.models import ALBEF, ALBEFConfig, MomentumTeacher
from albef_struct.models.momentum import TEACHER_EXCLUDES
from albef_struct.tasks.registry import TaskSpec, current_class_path


def with_text_dropout(arch: ALBEFConfig, text_dropout: float | None) -> ALBEFConfig:
    """``arch`` with the text and fusion encoders' hidden and attention dropout set to ``text_dropout``
    (None: unchanged). A run's recipe choice (fine-tuning often turns dropout off) kept apart from the
    shared architecture file it names."""
    if text_dropout is None:
        return arch
    if not 0.0 <= text_dropout < 1.0:
        raise ValueError(f"text_dropout must be in [0, 1), got {text_dropout}")
    return replace(arch, text=replace(arch.text, hidden_dropout=text_dropout, attention_dropout=text_dropout))


class ALBEFModule(ALBEFLitBase):
    """Builds ``self.model`` (an :class:`ALBEF`), ``self.teacher`` when distilling, and loads ``init_from``.

    Every task module is registered with
    :func:`~albef_struct.tasks.registry.register_task`, which sets :attr:`task_spec`:
    its heads, defaults and the parameters a source checkpoint may lack (e.g. a new
    classifier), with the reason reported when they start fresh. ``init_from``
    accepts this project's checkpoints and official ALBEF files.
    """

    task_spec: ClassVar[TaskSpec]

    def __init__(
        self,
        arch: ALBEFConfig | dict[str, Any],
        optim: OptimConfig | dict[str, Any] | None = None,
        alpha: float = 0.4,
        alpha_warmup: bool = True,
        distill: bool = True,
        momentum: float = 0.995,
        init_from: str | None = None,
        albef_momentum_before_load: bool = False,
        text_dropout: float | None = None,
    ) -> None:
        arch = with_text_dropout(ALBEFConfig.from_dict(arch), text_dropout)
        optim = OptimConfig(**optim) if isinstance(optim, dict) else optim
        super().__init__(optim=optim, alpha=alpha, alpha_warmup=alpha_warmup)
        self.save_hyperparameters(ignore=["arch", "optim"])
        # plain values: checkpoints load with weights_only=True
        self.hparams["arch"] = arch.without_weight_sources().to_dict()
        self.hparams["optim"] = asdict(self.optim)
        self.distill = distill
        if init_from and arch != arch.without_weight_sources():
            # init_from's weights replace the image encoder's: its pretrained file is not needed (or read)
            rank_zero_info(f"init_from given: not loading the image encoder's pretrained weights ({init_from} has them)")
            arch = arch.without_weight_sources()
        self.model = ALBEF(arch)
        vision_report = getattr(self.model.visual_encoder, "init_report", None)
        if vision_report is not None:
            rank_zero_info(f"image encoder {arch.vision.timm_model}: {vision_report.table()}")
        self.teacher = MomentumTeacher(self.model, momentum, exclude=TEACHER_EXCLUDES) if distill else None
        self._init_from = init_from
        self._albef_momentum_before_load = albef_momentum_before_load
        self.init_report: AdaptReport | None = None

    def load_init_weights(self) -> None:
        """Load ``init_from``; subclasses call it at the end of ``__init__`` once every module exists.

        Momentum weights come from the file when it has them and are copied from
        the loaded online weights otherwise. ``albef_momentum_before_load``
        reproduces ALBEF's NLVR2 script, which copies the momentum model before
        loading, so the teacher keeps its initial weights (a parity flag).
        """
        if not self._init_from:
            return
        keep = {}
        if self._albef_momentum_before_load and self.teacher is not None:
            self.teacher.copy_from(self.model)
            keep["teacher."] = "ALBEF's NLVR2 script copies the momentum model before loading (parity flag)"
        self.init_report = load_weights(self, self._init_from, self.task_spec.fresh_ok, keep)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path | Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``; a checkpoint written before the task modules moved into
        ``albef_struct`` (its hyper-parameters name ``tasks.<module>.<Class>``) loads under the current path."""
        if "_class_path" not in kwargs and isinstance(checkpoint_path, (str, Path)):
            stored = stored_class_path(checkpoint_path)
            if stored is not None and current_class_path(stored) != stored:
                kwargs["_class_path"] = current_class_path(stored)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def update_teacher(self) -> None:
        """One EMA step of the teacher towards the online model (training only)."""
        if self.teacher is not None and self.training:
            self.teacher.update(self.model)
