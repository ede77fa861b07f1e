"""Brownian-bridge regularizer ``L_Br`` (docs/regularizers.md)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from albef_struct.structure.base import LatentFeatures, StructureLoss


def bridge_point(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``μ = normalize(t·start + (1 − t)·end)``: the bridge mean projected onto the sphere.

    ``t`` is a float or a ``[N]`` tensor (one ``t`` per row); ``t`` weights ``start``.
    """
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        t = t[:, None]
    return F.normalize(t * start + (1.0 - t) * end, dim=-1)


class BrownianBridgeLoss(StructureLoss):
    """Augmented embeddings on the bridge between a sample's image and text embeddings.

    ``bridge_image = (1/N) Σ_j ‖z_Vj^a − normalize(t·z_Vj + (1−t)·z_Tj)‖²`` (Eq. 1 and
    the first printed line of ``L_Br``; ``t`` multiplies the **image** endpoint, so at
    ``t = 0.25`` the mean sits 75% of the way towards the text). The printed
    "simplified" second line is garbled (it would have to be maximised); this is the
    MSE form. The bridge variance ``t(1−t)`` drops out of the fixed-variance likelihood.

    ``mirror=True`` adds ``bridge_text = (1/N) Σ_j ‖z_Tj^a − normalize(t·z_Tj + (1−t)·z_Vj)‖²``
    (an extension; the paper constrains only the augmented image).

    ``t_mode="fixed"`` uses ``t`` (the paper's 0.25); ``"uniform"`` draws one
    ``t ~ U(t_min, t_max)`` per sample from ``generator`` (shared by both terms).
    ``detach_endpoints=True`` stops gradients through ``z_V``/``z_T`` in the bridge
    mean, so only the augmented features move (useful when they come from a second
    online view; with momentum-teacher features there is then no gradient at all).
    """

    needs_aug = True

    def __init__(
        self,
        t: float = 0.25,
        t_mode: Literal["fixed", "uniform"] = "fixed",
        t_min: float = 0.0,
        t_max: float = 1.0,
        mirror: bool = False,
        detach_endpoints: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if t_mode not in ("fixed", "uniform"):
            raise ValueError(f"t_mode must be 'fixed' or 'uniform', got {t_mode!r}")
        if not 0.0 <= t <= 1.0 or not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"need 0 <= t <= 1 and 0 <= t_min <= t_max <= 1, got t={t}, t_min={t_min}, t_max={t_max}")
        self.t, self.t_mode, self.t_min, self.t_max = t, t_mode, t_min, t_max
        self.mirror = mirror
        self.detach_endpoints = detach_endpoints
        self.generator = generator

    def sample_t(self, n: int, like: torch.Tensor) -> torch.Tensor | float:
        """The bridge time(s) for ``n`` samples: ``t`` or ``[n]`` uniform draws."""
        if self.t_mode == "fixed":
            return self.t
        device = self.generator.device if self.generator is not None else like.device
        u = torch.rand(n, generator=self.generator, device=device, dtype=like.dtype).to(like.device)
        return self.t_min + (self.t_max - self.t_min) * u

    def terms(self, feats: LatentFeatures) -> dict[str, torch.Tensor]:
        name = type(self).__name__
        needed = ("image", "text", "image_aug", "text_aug") if self.mirror else ("image", "text", "image_aug")
        image, text, image_aug, *rest = feats.require(name, *needed)
        if self.detach_endpoints:
            image, text = image.detach(), text.detach()
        t = self.sample_t(image.shape[0], image)
        out = {"bridge_image": (image_aug - bridge_point(image, text, t)).pow(2).sum(-1).mean()}
        if self.mirror:
            out["bridge_text"] = (rest[0] - bridge_point(text, image, t)).pow(2).sum(-1).mean()
        return out
