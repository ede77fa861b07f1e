"""Momentum (EMA) teacher and the feature queues of ALBEF's contrastive loss."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Replicate

#: What ALBEF's momentum models leave out: they copy encoders, projections and heads, but not the ITM head or
#: the temperature (every teacher of this project's task modules, and of their checkpoints' weights).
TEACHER_EXCLUDES = ("itm_head", "temp")


def make_teacher(student: nn.Module, exclude: Iterable[str] = ()) -> nn.Module:
    """Deep-copy ``student`` without the named direct children/parameters, frozen.

    Weight ties inside the student (e.g. MLM decoder = word embeddings) are kept
    in the copy. ALBEF's teachers hold the encoders and projections but not the
    ITM head or the temperature, hence ``exclude``.
    """
    memo: dict[int, object] = {}
    for name in exclude:
        member = getattr(student, name, None)
        if member is not None:
            memo[id(member)] = None
    teacher = copy.deepcopy(student, memo)
    for name in exclude:
        if name in teacher._modules:
            del teacher._modules[name]
        if name in teacher._parameters:
            del teacher._parameters[name]
    teacher.requires_grad_(False)
    return teacher


class MomentumTeacher(nn.Module):
    """Holds the EMA copy of a student model: ``p_m <- m * p_m + (1 - m) * p``."""

    def __init__(self, student: nn.Module, momentum: float, exclude: Iterable[str] = ()) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.model = make_teacher(student, exclude)

    def forward(self, *args, **kwargs):  # pragma: no cover - use .model's methods
        raise RuntimeError("call the teacher's encoders through `teacher.model`")

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Set every teacher parameter to the student's value (ALBEF's ``copy_params``)."""
        reshard_forward_only(self.model)
        teacher_params, student_params = self._pairs(student)
        torch._foreach_copy_(teacher_params, student_params)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student`` (parameters only; buffers are not averaged)."""
        reshard_forward_only(self.model)
        teacher_params, student_params = self._pairs(student)
        if not teacher_params:
            return
        torch._foreach_mul_(teacher_params, self.momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - self.momentum)

    def _pairs(self, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student_params = dict(student.named_parameters())
        pairs = [(p, student_params[name]) for name, p in self.model.named_parameters()]
        return [t for t, _ in pairs], [in_layout_of(t, s.detach()) for t, s in pairs]


def reshard_forward_only(model: nn.Module) -> None:
    """Put a teacher sharded with FSDP2 back into shards before it is written to.

    FSDP keeps a root module's parameters gathered from its forward until its backward, and a
    teacher has no backward: written to then, the gathered copy would take the update and the
    shards, which FSDP keeps and saves, would not.
    """
    if isinstance(model, FSDPModule):
        model.reshard()


def in_layout_of(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``student`` laid out as ``teacher`` is, for an element-wise update of the teacher.

    Under FSDP2 (``albef_struct.lit.sharding``) parameters are shards (``DTensor``), except that a
    module's root stays gathered whole, as plain tensors, from its forward until its backward: a
    task that updates the teacher after the student's forward sees whole student weights beside
    teacher shards (resharded by :func:`reshard_forward_only`), and takes this rank's slice of them
    (no communication).
    """
    if not isinstance(teacher, DTensor) or isinstance(student, DTensor):
        return student
    whole = DTensor.from_local(student, teacher.device_mesh, [Replicate()] * teacher.device_mesh.ndim, run_check=False)
    return whole.redistribute(teacher.device_mesh, teacher.placements)


class FeatureQueue(nn.Module):
    """Ring buffers of momentum image/text features (``[dim, size]``) and their image ids.

    Layout equals ALBEF's ``image_queue``/``text_queue``/``idx_queue``/``queue_ptr``.
    """

    image_feats: torch.Tensor
    text_feats: torch.Tensor
    idx: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, size: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size = size
        self.register_buffer("image_feats", F.normalize(torch.randn(dim, size, generator=generator), dim=0))
        self.register_buffer("text_feats", F.normalize(torch.randn(dim, size, generator=generator), dim=0))
        self.register_buffer("idx", torch.full((1, size), -100, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Write ``[n, dim]`` features at the pointer, wrapping around the end."""
        n = image_feats.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} features into a queue of size {self.size}")
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.image_feats[:, slots] = image_feats.T.to(self.image_feats.dtype)
        self.text_feats[:, slots] = text_feats.T.to(self.text_feats.dtype)
        if idx is not None:
            self.idx[0, slots] = idx.to(self.idx.dtype)
        self.ptr.copy_((self.ptr + n) % self.size)
