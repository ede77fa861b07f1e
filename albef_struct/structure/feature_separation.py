"""Deep feature separation ``L_Sep = L_Ortho + L_Con^i + L_Uni^i`` (docs/regularizers.md)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from albef_struct.structure.base import LatentFeatures, StructureLoss, pairwise_squared_distance


class FeatureSeparationLoss(StructureLoss):
    """Private features orthogonal to the shared ones, yet informative and spread out.

    Terms (both modalities each):

    * ``ortho`` — ``(1/N) Σ_j (⟨z_Vj, z_Vj^i⟩² + ⟨z_Tj, z_Tj^i⟩²)``: each sample's
      private feature against its own shared feature (not a batch Frobenius norm).
    * ``private_nce`` — ``L_V2V^i + L_T2T^i``, in-modal InfoNCE on private features.
      Printed typo resolved (docs/regularizers.md): the printed numerator ``⟨z_Vj^i, z_Vj^i⟩``
      is a constant ``1/τ``; the positive is the augmented view's private feature
      ``z_Vj^{i,a}`` and the denominator runs over the augmented private features,
      as in the paper's cross-modal ``L_V2V``. Temperature: ``temperature`` if
      given, else ``feats.temp``.
    * ``uniformity`` — ``log (1/Z) Σ_j Σ_k [G_t(z_Vj^i, z_Vk^i) + G_t(z_Tj^i, z_Tk^i)]``
      with ``G_t(u, v) = exp(−t‖u − v‖²)``, ``t = 2``, diagonal included as printed.
      ``uniformity_normalizer="pairs"`` uses ``Z = N²`` (a mean over pairs, the
      default); ``"paper"`` uses the printed ``Z = N``. They differ by the constant
      ``log N``, which changes the value and not the gradient. The two modalities'
      potentials share one log, so fully collapsed features give ``log 2`` ("pairs").

    ``ortho_weight``, ``private_nce_weight`` and ``uniformity_weight`` weight the
    terms in ``forward`` (all 1, as printed).
    """

    needs_private = True
    needs_aug = True

    def __init__(
        self,
        temperature: float | None = None,
        uniformity_t: float = 2.0,
        uniformity_normalizer: Literal["pairs", "paper"] = "pairs",
        ortho_weight: float = 1.0,
        private_nce_weight: float = 1.0,
        uniformity_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if uniformity_normalizer not in ("pairs", "paper"):
            raise ValueError(f"uniformity_normalizer must be 'pairs' or 'paper', got {uniformity_normalizer!r}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.uniformity_t = uniformity_t
        self.uniformity_normalizer = uniformity_normalizer
        self.term_weights = {"ortho": ortho_weight, "private_nce": private_nce_weight, "uniformity": uniformity_weight}

    def terms(self, feats: LatentFeatures) -> dict[str, torch.Tensor]:
        name = type(self).__name__
        image, text, image_p, text_p, image_pa, text_pa = feats.require(
            name, "image", "text", "image_private", "text_private", "image_private_aug", "text_private_aug"
        )
        temp = self._temperature(feats)
        ortho = ((image * image_p).sum(-1).pow(2) + (text * text_p).sum(-1).pow(2)).mean()
        nce = in_modal_infonce(image_p, image_pa, temp) + in_modal_infonce(text_p, text_pa, temp)
        return {"ortho": ortho, "private_nce": nce, "uniformity": self.uniformity(image_p, text_p)}

    def uniformity(self, image_private: torch.Tensor, text_private: torch.Tensor) -> torch.Tensor:
        """``L_Uni^i`` with the configured normaliser, as a stable log-sum-exp."""
        exponents = torch.cat(
            [
                (-self.uniformity_t * pairwise_squared_distance(image_private)).flatten(),
                (-self.uniformity_t * pairwise_squared_distance(text_private)).flatten(),
            ]
        )
        n = image_private.shape[0]
        log_z = 2.0 * math.log(n) if self.uniformity_normalizer == "pairs" else math.log(n)
        return torch.logsumexp(exponents, dim=0) - log_z

    def _temperature(self, feats: LatentFeatures) -> torch.Tensor | float:
        if self.temperature is not None:
            return self.temperature
        if feats.temp is None:
            raise ValueError(
                "FeatureSeparationLoss needs a temperature: set its 'temperature' argument or pass LatentFeatures.temp"
            )
        return feats.temp


def in_modal_infonce(anchors: torch.Tensor, keys: torch.Tensor, temp: torch.Tensor | float) -> torch.Tensor:
    """``−(1/N) Σ_j log softmax_k(⟨a_j, k_k⟩/τ)_j``: positives on the diagonal."""
    logits = anchors @ keys.T / temp
    return F.cross_entropy(logits, torch.arange(anchors.shape[0], device=anchors.device))
