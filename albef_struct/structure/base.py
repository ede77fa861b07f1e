"""The features a latent-structure regularizer sees, and the regularizer interface."""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields

import torch
from torch import nn


@dataclass
class LatentFeatures:
    """L2-normalised unimodal embeddings of one step (``[N, D]`` each).

    ``image``/``text`` are the online features used by the contrastive loss
    (with gradients). ``*_aug`` are the augmented view: the momentum teacher's
    features by default (no gradient), or a second augmented view.
    ``*_private`` are the private ("independent") features of the extra
    separation heads, ``*_private_aug`` the same heads on the augmented view.
    ``temp`` is the contrastive temperature, for losses that borrow it.
    """

    image: torch.Tensor
    text: torch.Tensor
    image_aug: torch.Tensor | None = None
    text_aug: torch.Tensor | None = None
    image_private: torch.Tensor | None = None
    text_private: torch.Tensor | None = None
    image_private_aug: torch.Tensor | None = None
    text_private_aug: torch.Tensor | None = None
    temp: torch.Tensor | None = None

    def require(self, owner: str, *names: str) -> tuple[torch.Tensor, ...]:
        """The named fields, or a ValueError naming every missing one and who needs it."""
        known = {f.name for f in fields(self)}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise AttributeError(f"LatentFeatures has no field(s) {unknown}")
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"{owner} needs LatentFeatures.{', LatentFeatures.'.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} None; the training module must compute "
                f"{'it' if len(missing) == 1 else 'them'} (augmented view: teacher or second view; "
                "private: separation heads) when this regularizer is configured"
            )
        return tuple(getattr(self, name) for name in names)


class StructureLoss(nn.Module, abc.ABC):
    """A latent-structure regularizer: named unweighted terms, summed with per-term weights.

    Subclasses implement :meth:`terms`; ``forward`` returns
    ``sum(term_weights.get(name, 1) * term)``.
    """

    #: whether the loss needs ``image_private``/``text_private`` (separation heads)
    needs_private: bool = False
    #: whether the loss needs an augmented view (``*_aug`` or ``*_private_aug``)
    needs_aug: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.term_weights: dict[str, float] = {}

    @abc.abstractmethod
    def terms(self, feats: LatentFeatures) -> dict[str, torch.Tensor]:
        """Each named term of the loss as a scalar tensor, unweighted."""

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of terms returned by :meth:`terms`."""
        return sum(self.term_weights.get(name, 1.0) * value for name, value in parts.items())

    def forward(self, feats: LatentFeatures) -> torch.Tensor:
        return self.combine(self.terms(feats))


def pairwise_squared_distance(points: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` squared Euclidean distances, ``‖u‖² + ‖v‖² − 2⟨u, v⟩`` clamped at 0."""
    squared = points.pow(2).sum(dim=-1)
    return (squared[:, None] + squared[None, :] - 2.0 * points @ points.T).clamp(min=0.0)
