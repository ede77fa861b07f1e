"""Grad-CAM of the ITM score through one fusion layer's cross-attention: where the model looks for a text.

ALBEF explains (and grounds) an image-text match this way: take the cross-attention
probabilities ``A`` of fusion layer ``layer`` (text tokens attending image patches, per head)
and the gradient ``dS/dA`` of the ITM match logit ``S``; the map of text token ``t`` is
``mean over heads of A * max(dS/dA, 0)`` over the image patches (the image's [CLS] token
dropped), on the ViT's patch grid. The whole text's map is the mean of its tokens' maps.
ALBEF's default layer is ``block_num = 8`` of ALBEF-base, the third of its six fusion layers;
here ``layer`` counts fusion layers from 0, so the default is 2 (or the last, for shallower
fusion encoders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from albef_struct.models import ALBEF

__all__ = ["GRADCAM_MODES", "GradCAM", "gradcam", "box_iou", "box_scores", "default_layer", "default_vit_block", "itc_gradcam", "itm_gradcam"]

ALBEF_FUSION_LAYER = 2  # ALBEF's block_num 8 with fusion from layer 6


@dataclass
class GradCAM:
    """Per-token and whole-text heat maps on the patch grid, and the logit they explain."""

    token_maps: torch.Tensor  # [B, L, h, w]: zero at padded tokens
    text_map: torch.Tensor  # [B, h, w]: mean over each text's unpadded tokens
    score: torch.Tensor  # [B]: the score explained: the ITM "match" logit, or (ITC mode) the cosine similarity
    match_probability: torch.Tensor | None  # [B]: the ITM match probability (None in ITC mode)
    layer: int  # the fusion layer (ITM mode) or ViT block (ITC mode) explained
    mode: str = "itm"


def default_layer(model: ALBEF) -> int:
    return min(ALBEF_FUSION_LAYER, model.config.text.fusion_layers - 1)


def itm_gradcam(model: ALBEF, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer: int | None = None) -> GradCAM:
    """Grad-CAM maps of image ``i`` for text ``i`` (``images`` ``[B, 3, H, W]``, texts tokenised ``[B, L]``)."""
    if not getattr(model.config, "itm_head", False):
        raise ValueError("Grad-CAM explains the ITM score: this model has no ITM head (use a pretraining or "
                         "retrieval checkpoint)")
    if model.config.fusion_streams != 1:
        raise ValueError("Grad-CAM is defined here for one image per text (not NLVR2's paired fusion layers)")
    layer = default_layer(model) if layer is None else layer
    if not 0 <= layer < model.config.text.fusion_layers:
        raise ValueError(f"layer {layer} is not a fusion layer: this model has {model.config.text.fusion_layers} "
                         f"(0 to {model.config.text.fusion_layers - 1})")
    captured: dict[str, torch.Tensor] = {}

    def keep_probabilities(module, args, output) -> None:
        captured["attention"] = output[1]

    was_training = model.training
    model.eval()
    model.set_attention("eager")  # the fused kernels do not expose the probabilities
    hook = model.fusion_encoder.layer[layer].crossattention.self.register_forward_hook(keep_probabilities)
    try:
        # evaluation loops run under inference mode: leave it, with copies of the inputs autograd may use
        with torch.inference_mode(False), torch.enable_grad():
            # the image needs gradients: with frozen encoders it is what puts the attention in the graph
            images, input_ids, attention_mask = images.clone().requires_grad_(), input_ids.clone(), attention_mask.clone()
            image = model.encode_image(images)
            text = model.encode_text(input_ids, attention_mask)
            logits = model.itm_logits(model.fuse(text.embeds, attention_mask, image.embeds))
            logit = logits[:, 1]
            attention = captured["attention"]
            (grad,) = torch.autograd.grad(logit.sum(), attention)
    finally:
        hook.remove()
        model.set_attention(model.config.attention)
        model.train(was_training)
    prefix = getattr(model.visual_encoder, "num_prefix_tokens", 1)
    cam = (attention[..., prefix:] * grad[..., prefix:].clamp_min(0)).mean(dim=1).detach()  # [B, L, patches]
    side = math.isqrt(cam.shape[-1])
    if side * side != cam.shape[-1]:
        raise ValueError(f"{cam.shape[-1]} image patches do not form a square grid")
    mask = attention_mask.to(cam.dtype)
    token_maps = cam.reshape(*cam.shape[:2], side, side) * mask[:, :, None, None]
    text_map = token_maps.sum(dim=1) / mask.sum(dim=1).clamp_min(1)[:, None, None]
    probability = logits.detach().float().softmax(dim=-1)[:, 1]
    return GradCAM(token_maps, text_map, logit.detach(), probability, layer, "itm")


def default_vit_block(model: ALBEF) -> int:
    """ALBEF's ``block_num = 8`` of a 12-block ViT: two thirds of the way up."""
    return model.config.vision.depth * 2 // 3


def itc_gradcam(model: ALBEF, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                block: int | None = None) -> GradCAM:
    """ALBEF's ``itc`` mode: Grad-CAM of the image-text ITC similarity through the [CLS] row of ViT block
    ``block``'s self-attention (what the image's [CLS] gathers from each patch, weighted by how much that
    raises the similarity to the text). One map per text, in ``text_map``; ``token_maps`` holds it once."""
    if not model.config.projections:
        raise ValueError("ITC Grad-CAM needs the contrastive projections (a pretraining or retrieval checkpoint)")
    block = default_vit_block(model) if block is None else block
    blocks = model.visual_encoder.blocks
    if not 0 <= block < len(blocks):
        raise ValueError(f"block {block} is not a ViT block: this model has {len(blocks)} (0 to {len(blocks) - 1})")
    captured: dict[str, torch.Tensor] = {}

    def keep_probabilities(module, args, output) -> None:
        captured["attention"] = output

    was_training = model.training
    model.eval()
    model.set_attention("eager")
    hook = blocks[block].attn.attn_drop.register_forward_hook(keep_probabilities)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # the image needs gradients: with frozen encoders it is what puts the attention in the graph
            images, input_ids, attention_mask = images.clone().requires_grad_(), input_ids.clone(), attention_mask.clone()
            if images.dim() != 4:
                raise ValueError("ITC Grad-CAM runs the image encoder: pass images, not cached tokens")
            similarity = (model.encode_image(images).feat * model.encode_text(input_ids, attention_mask).feat).sum(-1)
            attention = captured["attention"]
            (grad,) = torch.autograd.grad(similarity.sum() / model.temp, attention)
    finally:
        hook.remove()
        model.set_attention(model.config.attention)
        model.train(was_training)
    prefix = getattr(model.visual_encoder, "num_prefix_tokens", 1)
    cam = (attention[:, :, 0, prefix:] * grad[:, :, 0, prefix:].clamp_min(0)).mean(dim=1).detach()  # [B, patches]
    side = math.isqrt(cam.shape[-1])
    text_map = cam.reshape(-1, side, side)
    return GradCAM(text_map[:, None], text_map, similarity.detach(), None, block, "itc")


GRADCAM_MODES = ("itm", "itc")


def gradcam(model: ALBEF, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            mode: str = "itm", layer: int | None = None) -> GradCAM:
    """:func:`itm_gradcam` (``layer``: a fusion layer) or :func:`itc_gradcam` (``layer``: a ViT block)."""
    if mode not in GRADCAM_MODES:
        raise ValueError(f"Grad-CAM mode must be one of {GRADCAM_MODES}, got {mode!r}")
    explain = itm_gradcam if mode == "itm" else itc_gradcam
    return explain(model, images, input_ids, attention_mask, layer)


def box_scores(heatmap: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], alpha: float = 0.5) -> torch.Tensor:
    """How strongly each box holds ``heatmap`` (``[h, w]`` on the patch grid), ALBEF's grounding rule: the map is
    resized (bicubic) to the image's ``(width, height)``, and a box ``[x, y, w, h]`` in pixels (its pixel rows
    ``int(y)`` to ``int(y + h)`` and columns likewise) scores its heat mass over ``area ** alpha`` (ALBEF: 0.5,
    so that neither a tiny box on the peak nor the whole image wins by its size)."""
    width, height = image_size
    full = F.interpolate(heatmap[None, None].float(), size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    integral = F.pad(full.cumsum(0).cumsum(1), (1, 0, 1, 0))  # summed-area table
    x0 = boxes[:, 0].floor().long().clamp(0, width)
    y0 = boxes[:, 1].floor().long().clamp(0, height)
    x1 = (boxes[:, 0] + boxes[:, 2]).floor().long().clamp(0, width)
    y1 = (boxes[:, 1] + boxes[:, 3]).floor().long().clamp(0, height)
    mass = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return mass / (boxes[:, 2] * boxes[:, 3]).float().clamp_min(1e-6) ** alpha


def box_iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of ``box`` with each of ``boxes``, all ``[x, y, w, h]`` in pixels (RefCOCO's inclusive-pixel convention:
    a box covers ``w`` columns from ``x``)."""
    x0 = torch.maximum(box[0], boxes[:, 0])
    y0 = torch.maximum(box[1], boxes[:, 1])
    x1 = torch.minimum(box[0] + box[2] - 1, boxes[:, 0] + boxes[:, 2] - 1)
    y1 = torch.minimum(box[1] + box[3] - 1, boxes[:, 1] + boxes[:, 3] - 1)
    inter = torch.where((x0 < x1) & (y0 < y1), (x1 - x0 + 1) * (y1 - y0 + 1), torch.zeros_like(x0))
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)
