"""Training steps to time: pretraining (with fast-path variants) and the registered task modules.

A step is forward + backward + AdamW on a fixed synthetic batch, run through the
modules' own loss methods (``PretrainModule.pretrain_losses``, and for a task the
``training_loss`` its registry entry names, e.g. ``RetrievalModule.retrieval_losses``),
so momentum update, queue, hard negatives and MLM are all included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from albef_struct.lit.base import decay_groups
from albef_struct.lit.compile import compile_module_encoders
from albef_struct.tasks.registry import TASKS, TaskSpec
from benchmarks.sizes import Size, classification_batch, pretrain_batch, vqa_batch

ALPHA = 0.4


@dataclass(frozen=True)
class Variant:
    """One combination of the speed switches."""

    name: str
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    attention: str = "sdpa"  # "sdpa" or "eager"
    checkpointing: bool | tuple[str, ...] = False  # arch.grad_checkpointing: every encoder, or those named
    compile: bool = False
    single_itm: bool = True  # PretrainModule.itm_single_fusion_call
    masked_mlm: bool = True  # PretrainModule.mlm_masked_positions_only
    fused_adamw: bool = False
    recompute_gelu: bool = False  # arch.recompute_gelu
    queue_in_place: bool = True  # PretrainModule.itc_queue_in_place
    itm_first_token: bool = True  # PretrainModule.itm_first_token_only
    itc_fp32_logits: bool = True  # InfoNCEQueueLoss.fp32_logits (``contrastive_args``)
    compact_dropout: bool = True  # arch.compact_dropout (one-byte masks, quicker draws on CPU)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "plain", attention="eager", single_itm=False, masked_mlm=False, queue_in_place=False, itm_first_token=False,
            itc_fp32_logits=False, compact_dropout=False,
        ),
        Variant("fast"),
        Variant("fast_torch_dropout", compact_dropout=False),
        Variant("fast_bf16", precision="bf16"),
        Variant("fast_bf16_ckpt", precision="bf16", checkpointing=True),
        Variant("fast_bf16_eager", precision="bf16", attention="eager"),
        Variant("fast_bf16_eager_fused", precision="bf16", attention="eager", fused_adamw=True),
        Variant("fast_bf16_eager_fused_torch_dropout", precision="bf16", attention="eager", fused_adamw=True, compact_dropout=False),
        Variant("fast_eager", attention="eager"),
        Variant("fast_ckpt", checkpointing=True),
        Variant("fast_fused_adamw", fused_adamw=True),
        Variant("fast_recompute_gelu", recompute_gelu=True),
        Variant("fast_fused_adamw_recompute_gelu", fused_adamw=True, recompute_gelu=True),
        Variant("fast_fused_adamw_recompute_gelu_ckpt_fusion", fused_adamw=True, recompute_gelu=True, checkpointing=("fusion",)),
        Variant("fast_fused_adamw_recompute_gelu_ckpt_vision", fused_adamw=True, recompute_gelu=True, checkpointing=("vision",)),
        Variant("fast_bf16_eager_fused_recompute_gelu", precision="bf16", attention="eager", fused_adamw=True, recompute_gelu=True),
        Variant(
            "fast_bf16_eager_fused_recompute_gelu_ckpt_fusion", precision="bf16", attention="eager", fused_adamw=True,
            recompute_gelu=True, checkpointing=("fusion",),
        ),
        Variant("fast_compile", compile=True),
        Variant("fast_bf16_compile", precision="bf16", compile=True),
        Variant(
            "plain_bf16", precision="bf16", attention="eager", single_itm=False, masked_mlm=False, queue_in_place=False,
            itm_first_token=False, itc_fp32_logits=False, compact_dropout=False,
        ),
    )
}

@dataclass
class Workload:
    """A ready-to-run training step."""

    step: Callable[[], torch.Tensor]
    batch_size: int
    module: nn.Module
    info: dict[str, Any]
    loss_fn: Callable[[], torch.Tensor]
    variant: Variant


def reference_loss(work: Workload, seed: int = 0) -> float | None:
    """The step's loss at the current weights with dropout off and the random draws (MLM masks,
    hard negatives) seeded: variants built from the same seed must agree on it within their
    tolerance. Call it before the timed steps (like a step, it pushes the batch into the queue).
    None for compiled variants, whose eval-mode graph would be a second compilation.
    """
    if work.variant.compile:
        return None
    work.module.eval()
    torch.manual_seed(seed)
    try:
        with torch.no_grad(), autocast(work.variant.precision):
            return float(work.loss_fn())
    finally:
        work.module.train()


def task_missing(task: str) -> str | None:
    """Why a task cannot be benchmarked (None when it can)."""
    spec = TASKS.get(task)
    if spec is None:
        return f"no task {task!r} is registered (albef_struct.tasks.registry knows {sorted(TASKS)})"
    if spec.training_loss is None or not hasattr(spec.module, spec.training_loss):
        return f"{spec.class_path} declares no training loss method (batch, alpha) to time"
    return None


def task_batch(spec: TaskSpec, size: Size) -> dict[str, torch.Tensor]:
    """A synthetic batch of the kind ``spec``'s module trains on, read from its heads."""
    heads = spec.heads
    if heads["answer_decoder_layers"]:
        return vqa_batch(size)
    if heads["classifier_classes"]:
        return classification_batch(size, heads["classifier_classes"], images=heads["fusion_streams"])
    return pretrain_batch(size)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return contextlib.nullcontext()


def make_optimizer(module: nn.Module, fused: bool) -> torch.optim.Optimizer:
    """AdamW with ALBEF's decay groups, as ``ALBEFLitBase.configure_optimizers`` builds it."""
    groups = decay_groups(module.named_parameters(), 0.02, ("contrastive.",))
    return torch.optim.AdamW(groups, lr=1e-4, **({"fused": True} if fused else {}))


def _train_step(module: nn.Module, loss_fn: Callable[[], torch.Tensor], variant: Variant) -> Callable[[], torch.Tensor]:
    optimizer = make_optimizer(module, variant.fused_adamw)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(variant.precision):
            loss = loss_fn()
        loss.backward()
        module.on_after_backward()  # as Lightning calls it (a queue's pending enqueue)
        optimizer.step()
        return loss.detach()

    return step


def _finish(module: nn.Module, variant: Variant) -> None:
    module.train()
    if variant.compile:
        compile_module_encoders(module)


def pretrain_workload(
    size: Size,
    variant: Variant,
    batch: int | None = None,
    contrastive: str = "infonce_queue",
    objective: str = "full",
    queue_size: int = 65536,
    num_samples: int = 4_000_000,
    device: str = "cpu",
) -> Workload:
    """``PretrainModule.pretrain_losses`` + AdamW on ``device``. ``objective``: ``full`` (ITC+ITM+MLM) or ``contrastive``."""
    from albef_struct.lit.pretrain import PretrainModule

    args: dict[str, Any] = {"fp32_logits": variant.itc_fp32_logits} if contrastive == "infonce_queue" else {}
    if contrastive == "decomposable":  # at web scale the bank (N x D per modality) gives way to running estimates
        args = {"num_samples": num_samples, "denominator": "running"}
    module = PretrainModule(
        arch=size.arch(
            mlm_head=True, attention=variant.attention, grad_checkpointing=variant.checkpointing,
            recompute_gelu=variant.recompute_gelu, compact_dropout=variant.compact_dropout,
        ),
        queue_size=queue_size,
        contrastive=contrastive,
        contrastive_args=args,
        itm_weight=1.0 if objective == "full" else 0.0,
        mlm_weight=1.0 if objective == "full" else 0.0,
        itm_single_fusion_call=variant.single_itm,
        mlm_masked_positions_only=variant.masked_mlm,
        itc_queue_in_place=variant.queue_in_place,
        itm_first_token_only=variant.itm_first_token,
    )
    module.to(device)
    _finish(module, variant)
    data = pretrain_batch(size, batch)
    if contrastive == "decomposable":
        data["index"] = torch.randperm(num_samples, generator=torch.Generator().manual_seed(0))[: data["index"].shape[0]]
    data = {k: v.to(device) for k, v in data.items()}

    def loss_fn() -> torch.Tensor:
        return module.pretrain_losses(data, ALPHA)["loss"]

    step = _train_step(module, loss_fn, variant)
    info = {"contrastive": contrastive, "objective": objective, "queue_size": queue_size}
    if contrastive == "decomposable":
        info["num_samples"] = num_samples
    return Workload(step, data["image"].shape[0], module, info, loss_fn, variant)


def task_workload(task: str, size: Size, variant: Variant) -> Workload:
    """One fine-tuning step of a registered task's module (see :func:`task_missing`)."""
    reason = task_missing(task)
    if reason:
        raise RuntimeError(f"task {task!r} cannot be benchmarked: {reason}")
    spec = TASKS[task]
    arch = size.arch(
        attention=variant.attention, grad_checkpointing=variant.checkpointing, recompute_gelu=variant.recompute_gelu
    )
    module = spec.module(arch=arch, **({"queue_size": 65536} if spec.queue else {}))
    _finish(module, variant)
    data = task_batch(spec, size)
    loss_method = getattr(module, spec.training_loss)

    def loss_fn() -> torch.Tensor:
        out = loss_method(data, ALPHA)
        return out["loss"] if isinstance(out, dict) else out

    step = _train_step(module, loss_fn, variant)
    return Workload(step, size.batch, module, {"task_module": spec.class_path}, loss_fn, variant)


def with_batch(size: Size, batch: int) -> Size:
    return replace(size, batch=batch)


def parameter_count(module: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"trainable": trainable, "total": total}
