"""Finding NaN and Inf: in a state dict's tensors or a step's loss terms, one sum per tensor and one read-back per device and dtype."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

__all__ = ["finite_flags", "nonfinite_kind", "nonfinite_tensors", "nonfinite_terms"]


def _any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Boolean flags true where they are true on any rank (every rank calls this, as it checks its shards)."""
    counts = flags.to(torch.float32)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return counts > 0


def nonfinite_kind(tensor: torch.Tensor) -> str:
    """``"NaN"`` or ``"Inf"`` for a tensor known to hold a non-finite value (a sharded one: on any rank)."""
    if isinstance(tensor, DTensor):
        return "NaN" if bool(_any_rank(torch.isnan(tensor.to_local()).any())) else "Inf"
    return "NaN" if bool(torch.isnan(tensor).any()) else "Inf"


def _sharded_flags(shards: list[torch.Tensor]) -> list[bool]:
    """Finite flags of sharded (FSDP) tensors: each rank checks its own shards and the ranks agree."""
    bad = [~torch.isfinite(s).all() if s.numel() else torch.zeros((), dtype=torch.bool, device=s.device) for s in shards]
    return (~_any_rank(torch.stack(bad))).tolist()


def finite_flags(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each (non-empty, floating) tensor is all finite: one sum per tensor, read back once per device and dtype.

    Sharded tensors (``DTensor``) are checked shard by shard with one all-reduce, so every rank
    returns the same flags (and must call this alike).
    """
    flags: list[bool] = [True] * len(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    sharded = [i for i, tensor in enumerate(tensors) if isinstance(tensor, DTensor)]
    if sharded:
        for i, finite in zip(sharded, _sharded_flags([tensors[i].to_local() for i in sharded]), strict=True):
            flags[i] = finite
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, DTensor):
            groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    for indices in groups.values():
        for i, finite in zip(indices, _finite_sums([tensors[i] for i in indices])):
            flags[i] = finite or bool(torch.isfinite(tensors[i]).all())  # a non-finite sum may be overflow
    return flags


def _finite_sums(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor's sum is finite: NaN and Inf always reach the sum, so a finite sum proves the
    tensor finite; a non-finite one needs the exact check (large finite values can overflow). One vectorised
    pass per tensor: several times quicker on a CPU than ``max |x|`` (``_foreach_norm(ord=inf)``)."""
    sums = [t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum() for t in tensors]
    return torch.stack(sums).isfinite().tolist()


def _floating(items: Iterable[tuple[str, Any]]) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, value.detach())
        for name, value in items
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0
    ]


def nonfinite_tensors(state: Mapping[str, Any]) -> dict[str, str]:
    """The floating tensors of ``state`` that hold NaN or Inf, as ``{name: "NaN" | "Inf"}`` (in order)."""
    named = _floating(state.items())
    if not named:
        return {}
    flags = finite_flags([t for _, t in named])
    return {name: nonfinite_kind(t) for (name, t), finite in zip(named, flags) if not finite}


def nonfinite_terms(losses: Mapping[str, Any]) -> dict[str, str]:
    """The loss terms that are NaN or Inf, as ``{name: "NaN" | "Inf"}``; plain floats are checked too."""
    as_tensors = {
        name: value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        for name, value in losses.items()
        if isinstance(value, (torch.Tensor, float, int))
    }
    return nonfinite_tensors(as_tensors)
