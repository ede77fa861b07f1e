"""Fully sharded data parallelism (FSDP2) for ALBEF models, applied in ``configure_model``.

Lightning's ``ModelParallelStrategy`` builds a device mesh and leaves the sharding to the
module. Each transformer block (ViT blocks, BERT text layers, fusion layers) becomes one
FSDP unit and the model's root holds the rest (embeddings, norms, projections, heads), so a
rank keeps ``1 / world`` of every weight, gradient and optimizer state between uses. The
student and the EMA teacher are sharded alike, so the teacher's update is a local
operation on matching shards.

What FSDP cannot hold is replicated and averaged here instead: ``fully_shard`` refuses 0-d
parameters (the contrastive temperature), and parameters outside the model (a contrastive
loss's learnable scale and bias) are not under any FSDP unit. Their gradients are averaged
over the ranks as they are accumulated, as DDP would.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn

#: ALBEF methods the task modules call directly (not through ``forward``): each must gather the
#: root's shards first, which ``register_fsdp_forward_method`` arranges.
FORWARD_METHODS = ("encode_image", "encode_text", "pool_text", "private_features", "fuse", "itm_logits",
                   "classify", "mlm_logits")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The per-block FSDP units of an ALBEF model (the fusion encoder whole when its layers share weights)."""
    from albef_struct.models.text import FusionEncoder, _LayerStack

    units: list[nn.Module] = list(getattr(model.visual_encoder, "blocks", []))
    for stack in model.modules():
        if not isinstance(stack, _LayerStack):
            continue
        if isinstance(stack, FusionEncoder) and stack.streams > 1:
            units.append(stack)  # cross-attention keys/values are tied across each group of layers
        else:
            units.extend(stack.layer)
    return units


def scalar_parameters(module: nn.Module) -> set[nn.Parameter]:
    """Parameters ``fully_shard`` cannot shard (0-d): kept whole on every rank."""
    return {p for p in module.parameters() if p.ndim == 0}


def shard_model(model: nn.Module, mesh) -> None:
    """Shard one ALBEF model (student or teacher) block by block, then its root."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=scalar_parameters(model))
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def average_gradients_across_ranks(params: Iterable[nn.Parameter], group=None) -> int:
    """Average each parameter's gradient over the ranks once backward has accumulated it; returns how many."""
    count = 0
    for param in params:
        if not param.requires_grad:
            continue

        def average(p: torch.Tensor) -> None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(dist.get_world_size(group))

        param.register_post_accumulate_grad_hook(average)
        count += 1
    return count


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of ``module`` that no FSDP unit holds (plain tensors after sharding)."""
    from torch.distributed.tensor import DTensor

    return [p for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]


def data_parallel_mesh(mesh):
    """The data-parallel dimension of Lightning's mesh; ALBEF has no tensor-parallel plan."""
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        from albef_struct.lit.validation import ConfigError

        raise ConfigError(
            f"ALBEF models shard over data-parallel ranks only, but the strategy's mesh has "
            f"tensor_parallel size {mesh['tensor_parallel'].size()}: use "
            "--trainer.strategy albef_struct.lit.sharding.FullyShardedStrategy (or tensor_parallel_size: 1)"
        )
    return mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh


def shard_module(module: nn.Module, mesh) -> None:
    """Shard a task module's student and teacher over ``mesh``; replicate and average what FSDP cannot hold."""
    shard_model(module.model, mesh)
    teacher = getattr(module, "teacher", None)
    if teacher is not None:
        shard_model(teacher.model, mesh)
    average_gradients_across_ranks(replicated_parameters(module), group=mesh.get_group())


def fill_missing_adam_state(optimizer: torch.optim.Optimizer) -> int:
    """Give each parameter of an Adam/AdamW optimizer without a state the state it would start from
    (step 0, zero moments); returns how many. Adam's update is the same with or without it."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return 0
    filled = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            if optimizer.state.get(param):
                continue
            on_device = group.get("fused") or group.get("capturable")  # where Adam itself keeps ``step``
            step = torch.zeros((), dtype=torch.float32, device=param.device) if on_device else torch.tensor(0.0)
            state = {"step": step, "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            optimizer.state[param] = state
            filled += 1
    return filled


def local_shards(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each sharded tensor replaced by this rank's shard (no communication)."""
    from torch.distributed.tensor import DTensor

    return {name: value.to_local() if isinstance(value, DTensor) else value for name, value in state.items()}


def replace_folder(partial: Path, target: Path) -> None:
    """Move the complete ``partial`` folder onto ``target``; the old ``target`` is removed only afterwards."""
    previous = target.with_name(target.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
    if target.exists():
        target.rename(previous)
    partial.rename(target)
    if previous.exists():
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` set up for FSDP alone: every process is one data-parallel rank.

    ``--trainer.strategy albef_struct.lit.sharding.FullyShardedStrategy``. ``save_distributed_checkpoint``
    (default true) writes a folder with one shard file per rank; false gathers a single ``.ckpt``
    file on rank 0, loadable without this strategy.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout_s: float = 1800.0) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timedelta(seconds=timeout_s))

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer's state, with an untouched Adam state for every parameter that has none yet.

        A sharded checkpoint is loaded into an optimizer whose every parameter has a state, so a
        parameter that has had no gradient so far (the fusion encoder while ITM and MLM are off)
        would be missing from the file and the resume would stop.
        """
        fill_missing_adam_state(getattr(optimizer, "_optimizer", optimizer))
        return super().optimizer_state(optimizer)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """A sharded checkpoint is refused when a rank's shard holds NaN/Inf, written to ``NAME.partial`` and
        moved onto ``NAME`` once every rank has finished, so a crash mid-save keeps the previous checkpoint.

        (A gathered single file goes through the trainer's ``CheckpointIO``, ``AtomicCheckpointIO`` under the CLI.)
        """
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        from albef_struct.lit.reliability.checkpoint_io import check_finite_checkpoint

        target = Path(self.broadcast(filepath))
        partial = target.with_name(target.name + ".partial")
        refusal = None
        try:
            check_finite_checkpoint({**checkpoint, "state_dict": local_shards(checkpoint["state_dict"])}, str(target))
        except ValueError as error:
            refusal = error
        refused = torch.tensor(float(refusal is not None), device=self.root_device)  # NCCL reduces GPU tensors only
        if self.reduce(refused, reduce_op="sum") > 0:  # every rank stops
            raise refusal or RuntimeError(f"another rank refused to write {target}: its shard holds non-finite "
                                          "weights (that rank's error names them); the checkpoints on disk are kept")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)
        self.barrier("albef_sharded_checkpoint_clear")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("albef_sharded_checkpoint_written")
        if self.global_rank == 0:
            replace_folder(partial, target)
        self.barrier("albef_sharded_checkpoint_moved")

    def setup_environment(self) -> None:
        """Data parallel over every process: the parent's ``auto`` would mean one rank per node."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
