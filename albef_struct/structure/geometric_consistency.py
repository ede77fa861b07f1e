"""Geometric consistency ``L_GC + L_GC^a`` (docs/regularizers.md)."""

from __future__ import annotations

import torch

from albef_struct.structure.base import LatentFeatures, StructureLoss


class GeometricConsistencyLoss(StructureLoss):
    """Squared differences between similarity matrices (raw cosines, no temperature).

    With ``S_XY = X Yᵀ`` over the batch and ``(1/N) Σ_j Σ_k`` = ``N ×`` mean over
    the ``N × N`` matrix (CyCLIP's normalisation):

    * ``cross_symmetry`` — ``(1/N) ΣΣ (⟨z_Vj, z_Tk⟩ − ⟨z_Vk, z_Tj⟩)²``
    * ``intra_match`` — ``(1/N) ΣΣ (⟨z_Vj, z_Vk⟩ − ⟨z_Tj, z_Tk⟩)²``
    * ``aug_match`` — ``(1/N) ΣΣ [(⟨z_Vj, z_Vk⟩ − ⟨z_Vj^a, z_Vk^a⟩)² + (⟨z_Tj, z_Tk⟩ − ⟨z_Tj^a, z_Tk^a⟩)²]``
    * ``paired_match`` — ``(1/N) Σ_j (⟨z_Vj, z_Tj⟩ − ⟨z_Vj^a, z_Tj^a⟩)²``

    ``L_GC`` = the first two, ``L_GC^a`` = the last two; all unit-weighted as printed.
    ``<term>_weight`` re-weights one term in ``forward`` (0 drops it, for ablations).
    """

    needs_aug = True

    def __init__(self, cross_symmetry_weight: float = 1.0, intra_match_weight: float = 1.0,
                 aug_match_weight: float = 1.0, paired_match_weight: float = 1.0) -> None:
        super().__init__()
        self.term_weights = {"cross_symmetry": cross_symmetry_weight, "intra_match": intra_match_weight,
                             "aug_match": aug_match_weight, "paired_match": paired_match_weight}

    def terms(self, feats: LatentFeatures) -> dict[str, torch.Tensor]:
        image, text, image_aug, text_aug = feats.require(type(self).__name__, "image", "text", "image_aug", "text_aug")
        n = image.shape[0]
        s_vt, s_vv, s_tt = image @ text.T, image @ image.T, text @ text.T
        s_vv_aug, s_tt_aug = image_aug @ image_aug.T, text_aug @ text_aug.T
        paired = (image * text).sum(-1) - (image_aug * text_aug).sum(-1)
        return {
            "cross_symmetry": (s_vt - s_vt.T).pow(2).sum() / n,
            "intra_match": (s_vv - s_tt).pow(2).sum() / n,
            "aug_match": ((s_vv - s_vv_aug).pow(2).sum() + (s_tt - s_tt_aug).pow(2).sum()) / n,
            "paired_match": paired.pow(2).mean(),
        }
