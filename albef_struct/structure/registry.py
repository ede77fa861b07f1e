"""Config names → regularizer classes, and the weighted sum of the configured ones.

Adding a regularizer: one module with a :class:`StructureLoss` subclass, one line in
:data:`STRUCTURE_LOSSES`, one config entry ``{name: ..., weight: ..., args: {...}}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from albef_struct.structure.base import LatentFeatures, StructureLoss
from albef_struct.structure.brownian_bridge import BrownianBridgeLoss
from albef_struct.structure.feature_separation import FeatureSeparationLoss
from albef_struct.structure.geometric_consistency import GeometricConsistencyLoss

STRUCTURE_LOSSES: dict[str, type[StructureLoss]] = {
    "feature_separation": FeatureSeparationLoss,
    "brownian_bridge": BrownianBridgeLoss,
    "geometric_consistency": GeometricConsistencyLoss,
}


@dataclass
class StructureSpec:
    """One configured regularizer: registry ``name``, loss ``weight``, constructor ``args``."""

    name: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


def build_structure_loss(name: str, args: Mapping[str, Any] | None = None) -> StructureLoss:
    """Instantiate a registered regularizer, rejecting unknown names and arguments by name."""
    if name not in STRUCTURE_LOSSES:
        raise ValueError(f"unknown structure loss {name!r}; choose one of {sorted(STRUCTURE_LOSSES)}")
    cls = STRUCTURE_LOSSES[name]
    args = dict(args or {})
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"structure loss {name!r} got unknown argument(s) {unknown}; it accepts {accepted}")
    return cls(**args)


class StructureLosses(nn.Module):
    """The weighted sum of several configured regularizers.

    ``forward(feats)`` returns ``(Σ weight·loss, logs)`` where ``logs`` holds every
    term as ``"<name>/<term>"`` (unweighted) and each regularizer as ``"<name>"``
    (weighted), all detached.
    """

    def __init__(self, specs: Sequence[StructureSpec | Mapping[str, Any]] = ()) -> None:
        super().__init__()
        self.specs = [spec if isinstance(spec, StructureSpec) else _spec_from_mapping(spec) for spec in specs]
        names = [spec.name for spec in self.specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"structure loss(es) {duplicates} listed more than once; list each at most once")
        self.losses = nn.ModuleDict({spec.name: build_structure_loss(spec.name, spec.args) for spec in self.specs})
        self.weights = {spec.name: float(spec.weight) for spec in self.specs}

    @property
    def needs_private(self) -> bool:
        return any(loss.needs_private for loss in self.losses.values())

    @property
    def needs_aug(self) -> bool:
        return any(loss.needs_aug for loss in self.losses.values())

    def __len__(self) -> int:
        return len(self.losses)

    def forward(self, feats: LatentFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = feats.image.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        for name, loss in self.losses.items():
            parts = loss.terms(feats)
            weighted = self.weights[name] * loss.combine(parts)
            total = total + weighted
            logs.update({f"{name}/{term}": part.detach() for term, part in parts.items()})
            logs[name] = weighted.detach()
        return total, logs

    def weighted_terms(self, feats: LatentFeatures) -> dict[str, torch.Tensor]:
        """Every term as ``"<name>/<term>"``, times its regularizer's and its own weight (graph kept).

        Their sum is ``forward``'s total; used to measure each term's share of the gradient.
        """
        out = {}
        for name, loss in self.losses.items():
            for term, value in loss.terms(feats).items():
                out[f"{name}/{term}"] = self.weights[name] * loss.term_weights.get(term, 1.0) * value
        return out


def _spec_from_mapping(spec: Mapping[str, Any]) -> StructureSpec:
    unknown = sorted(set(spec) - {"name", "weight", "args"})
    if unknown or "name" not in spec:
        raise ValueError(f"a structure-loss entry needs 'name' and may have 'weight' and 'args'; got keys {sorted(spec)}")
    return StructureSpec(name=spec["name"], weight=spec.get("weight", 1.0), args=dict(spec.get("args") or {}))
