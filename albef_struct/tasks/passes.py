"""The task heads' forward passes as plain functions of an :class:`ALBEF` (no Lightning).

The task LightningModules train and evaluate with them; :mod:`albef_struct.inference`
uses them on a loaded checkpoint.
"""

from __future__ import annotations

import torch

from albef_struct.models import ALBEF

VE_LABELS = ("contradiction", "neutral", "entailment")  # class index = position (ALBEF's ve_dataset)
NLVR_CLASSES = ("False", "True")  # class index = position


def ve_logits(
    model: ALBEF, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Class logits ``[B, 3]``: text layers, fusion layers attending every image token, ``cls_head``."""
    image = model.encode_image(images).embeds
    text = model.encode_text(input_ids, attention_mask).embeds
    return model.classify(model.fuse(text, attention_mask, image, first_token_only=True))


def fuse_pair(
    model: ALBEF,
    image0_embeds: torch.Tensor,
    image1_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    first_token_only: bool = False,
) -> torch.Tensor:
    """Fused text states; even fusion layers attend ``image0_embeds``, odd ones ``image1_embeds``
    (with ``first_token_only``, the [CLS] state alone: what the NLVR2 and text-assignment heads read)."""
    text = model.encode_text(input_ids, attention_mask).embeds
    return model.fuse(text, attention_mask, [image0_embeds, image1_embeds], first_token_only=first_token_only)


def nlvr_logits(
    model: ALBEF,
    image0: torch.Tensor,
    image1: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """NLVR2 logits ``[B, 2]`` (class 1 = "True"); both images go through the ViT in one call."""
    embeds = model.encode_image(torch.cat([image0, image1])).embeds
    embeds0, embeds1 = embeds.split(image0.shape[0])
    return model.classify(fuse_pair(model, embeds0, embeds1, input_ids, attention_mask, first_token_only=True))
