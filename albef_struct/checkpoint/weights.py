"""The weights each task's LightningModule holds, without its behaviour (from the task registry)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.tasks.registry import TASKS, TaskSpec

if TYPE_CHECKING:  # checkpoint I/O stays importable without the models (timm, transformers)
    from albef_struct.models import ALBEFConfig

DEFAULT_QUEUE_SIZE = 65536


def task_spec(task: str) -> TaskSpec:
    """The registered task ``task``; an unknown name is refused with the choices."""
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def task_arch(task: str, arch: ALBEFConfig | Mapping[str, Any]) -> ALBEFConfig:
    """``arch`` (sizes) with the head flags ``task`` builds (VQA: one decoder layer per fusion layer)."""
    return task_spec(task).arch(arch)


class TaskWeights(nn.Module):
    """The weights of a task module without its behaviour: ``model``, optional ``teacher`` and ``queue``.

    Its state-dict keys equal those of the task's LightningModule, so a converted
    state loads into either (``load_state_dict``, ``init_from``, ``--ckpt_path``).
    """

    def __init__(self, arch: ALBEFConfig, teacher: bool, queue_size: int | None, momentum: float = 0.995) -> None:
        super().__init__()
        from albef_struct.models import ALBEF, FeatureQueue, MomentumTeacher
        from albef_struct.models.momentum import TEACHER_EXCLUDES

        self.model = ALBEF(arch)
        self.teacher = MomentumTeacher(self.model, momentum, exclude=TEACHER_EXCLUDES) if teacher else None
        self.queue = FeatureQueue(arch.embed_dim, queue_size) if queue_size else None

    @classmethod
    def for_task(cls, task: str, arch: ALBEFConfig | Mapping[str, Any], queue_size: int | None = None) -> "TaskWeights":
        spec = task_spec(task)
        size = (queue_size or DEFAULT_QUEUE_SIZE) if spec.queue else None
        return cls(spec.arch(arch), spec.teacher, size)
