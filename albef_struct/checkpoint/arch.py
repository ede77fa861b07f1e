"""What a checkpoint says about the model: its architecture from the tensor shapes, and the task it was made for."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.layout import Source, count_layers
from albef_struct.tasks.registry import task_of

if TYPE_CHECKING:
    from albef_struct.models import ALBEFConfig


def _tensor(state: Mapping[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{name} has no {key}: cannot infer the architecture; pass --arch-from-config")
    return state[key]


def infer_arch(source: Source, heads_vision: int | None = None, heads_text: int | None = None) -> ALBEFConfig:
    """Architecture sizes read from a checkpoint's tensor shapes (head flags left at their defaults).

    Attention heads cannot be read from shapes: the default is width / 64
    (ALBEF-base: 12), override with ``heads_vision`` / ``heads_text``.
    """
    from albef_struct.models import ALBEFConfig, TextConfig, VisionConfig

    if source.arch is not None:
        return ALBEFConfig.from_dict(source.arch)
    state, name = source.state, source.name
    patch = _tensor(state, "model.visual_encoder.patch_embed.proj.weight", name)
    pos = _tensor(state, "model.visual_encoder.pos_embed", name)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    side = math.isqrt(pos.shape[1] - 1)
    fc1 = _tensor(state, "model.visual_encoder.blocks.0.mlp.fc1.weight", name)
    embeddings = "model.text_encoder.embeddings."
    words = _tensor(state, f"{embeddings}word_embeddings.weight", name)
    hidden = int(words.shape[1])
    layout = source.layout
    inter = _tensor(state, "model.fusion_encoder.layer.0.intermediate.dense.weight", name)
    vision = VisionConfig(
        img_size=side * patch_size, patch_size=patch_size, width=width,
        depth=count_layers(state, "model.visual_encoder.blocks."), heads=heads_vision or max(1, width // 64),
        mlp_ratio=fc1.shape[0] / width,
    )
    text = TextConfig(
        vocab_size=int(words.shape[0]), hidden=hidden, fusion_layer=layout.text_layers,
        layers=layout.text_layers + layout.fusion_layers // layout.fusion_streams,
        heads=heads_text or max(1, hidden // 64), intermediate=int(inter.shape[0]),
        max_position=int(_tensor(state, f"{embeddings}position_embeddings.weight", name).shape[0]),
        type_vocab_size=int(_tensor(state, f"{embeddings}token_type_embeddings.weight", name).shape[0]),
    )
    proj = state.get("model.vision_proj.weight")
    embed_dim = int(proj.shape[0]) if proj is not None else ALBEFConfig().embed_dim
    return ALBEFConfig(vision=vision, text=text, embed_dim=embed_dim, fusion_streams=layout.fusion_streams)


def guess_task(source: Source) -> str:
    """The task a checkpoint was made for, from its layout and heads."""
    state, layout = source.state, source.layout
    if source.arch is not None:
        from albef_struct.models import ALBEFConfig

        return task_of(ALBEFConfig.from_dict(source.arch))
    if layout.name == "pretrain":
        return "pretrain"
    if layout.decoder_layers:
        return "vqa"
    if layout.fusion_streams > 1:
        return "nlvr"
    head = state.get("model.cls_head.2.weight")
    if head is not None and head.shape[0] == 3:
        return "ve"
    if "model.itm_head.weight" in state:
        return "retrieval"
    raise CheckpointError(f"cannot tell which task {source.name} was made for; pass --task")
