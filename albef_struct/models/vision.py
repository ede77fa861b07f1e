"""Image encoder: a timm VisionTransformer with DeiT/ViT parameter names, all tokens out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@dataclass
class VisionConfig:
    """Sizes of the ViT image encoder (ALBEF-base: ViT-B/16 at 256 px)."""

    img_size: int = 256
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6


class ImageEncoder(VisionTransformer):
    """timm ViT returning every token after the final norm: ``[B, 1 + N, width]``.

    Parameter names equal ALBEF's ``visual_encoder.*`` (``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.N.*``, ``norm``), so official weights load unchanged.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            drop_path_rate=cfg.drop_path,
            norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
        )
        self.config = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_features(images)

    def set_attention(self, implementation: str) -> None:
        """Select ``"sdpa"`` (fused kernel) or ``"eager"`` attention in every block."""
        fused = _check_attention(implementation) == "sdpa"
        for block in self.blocks:
            block.attn.fused_attn = fused


def _check_attention(implementation: str) -> str:
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {implementation!r}")
    return implementation


def resize_pos_embed(pos_embed: torch.Tensor, num_patches: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a ``[1, prefix + H*W, D]`` position embedding to ``num_patches`` (square grid).

    Bicubic, ``align_corners=False``, no antialiasing: the same grid ALBEF's
    ``interpolate_pos_embed`` produces. The prefix ([CLS]) token is kept as is.
    """
    old_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_patches == num_patches:
        return pos_embed
    new_side, old_side = math.isqrt(num_patches), math.isqrt(old_patches)
    if new_side * new_side != num_patches or old_side * old_side != old_patches:
        raise ValueError(
            f"position embedding has {old_patches} patch tokens and the model expects {num_patches}; "
            "only square grids can be resampled"
        )
    return resample_abs_pos_embed(
        pos_embed,
        new_size=[new_side, new_side],
        old_size=[old_side, old_side],
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic",
        antialias=False,
    )
