"""What a checkpoint holds: its layout (official or this project's), the sizes that decide where it fits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.keymap import ImportReport, same_tensor

if TYPE_CHECKING:  # checkpoint I/O stays importable without the models (timm, transformers)
    from albef_struct.models import ALBEFConfig

LAYOUTS = {
    "pretrain": "ALBEF pretraining checkpoint (text_encoder.bert.* with the MLM head)",
    "finetuned": "ALBEF fine-tuned task state dict (text_encoder.* without bert.)",
    "nlvr": "ALBEF NLVR2 layout (paired fusion layers with tied cross-attention key/value)",
    "albef_struct": "checkpoint of this project",
}


@dataclass(frozen=True)
class Layout:
    """What a checkpoint holds: its layout name and the sizes that decide where it fits."""

    name: str
    wrapped: bool  # ``{'model': state, ...}`` (ALBEF's training scripts) rather than a bare state dict
    text_layers: int  # = ALBEF's ``fusion_layer``: the first layer with cross-attention
    fusion_layers: int  # all fusion layers (both members of NLVR2's pairs)
    fusion_streams: int
    momentum: bool
    queues: bool
    decoder_layers: int

    def describe(self) -> str:
        parts = [LAYOUTS[self.name]]
        if self.name != "albef_struct":
            parts.append("{'model': ...} wrapper" if self.wrapped else "bare state dict")
        parts.append(
            f"BERT {self.text_layers} text + {self.fusion_layers} fusion layers (fusion_layer {self.text_layers}"
            + (f", {self.fusion_streams} streams)" if self.fusion_streams > 1 else ")")
        )
        if self.decoder_layers:
            parts.append(f"answer decoder {self.decoder_layers} layers")
        parts.append("momentum copies" if self.momentum else "no momentum copies")
        parts.append("feature queues" if self.queues else "no queues")
        return "; ".join(parts)


@dataclass
class Source:
    """A checkpoint read once: its weights in this project's layout, how they were laid out, and names."""

    name: str
    state: dict[str, torch.Tensor]
    layout: Layout
    conversion: ImportReport | None = None  # official key -> ours (None: this project's file)
    arch: dict[str, Any] | None = None  # this project's files record their architecture

    @property
    def official(self) -> bool:
        return self.conversion is not None

    def original_names(self) -> dict[str, str]:
        """Our key -> the file's own key name."""
        if self.conversion is None:
            return {}
        return {ours: official for official, ours in self.conversion.mapped.items()}

    @property
    def queue_size(self) -> int | None:
        queue = self.state.get("queue.image_feats")
        return None if queue is None else int(queue.shape[-1])


def count_layers(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def paired_fusion(state: Mapping[str, torch.Tensor]) -> bool:
    """NLVR2's pairs: fusion layers 0 and 1 share their cross-attention key projection."""
    first = state.get("model.fusion_encoder.layer.0.crossattention.self.key.weight")
    second = state.get("model.fusion_encoder.layer.1.crossattention.self.key.weight")
    if first is None or second is None:
        return False
    if first.is_meta or second.is_meta:  # shapes only: NLVR2 doubles the fusion layers
        fusion = count_layers(state, "model.fusion_encoder.layer.")
        return fusion == 2 * count_layers(state, "model.text_encoder.layer.")
    return same_tensor(first, second)


def detect_layout(state: Mapping[str, torch.Tensor], name: str, wrapped: bool) -> Layout:
    fusion = count_layers(state, "model.fusion_encoder.layer.")
    return Layout(
        name=name,
        wrapped=wrapped,
        text_layers=count_layers(state, "model.text_encoder.layer."),
        fusion_layers=fusion,
        fusion_streams=2 if fusion >= 2 and fusion % 2 == 0 and paired_fusion(state) else 1,
        momentum=any(k.startswith("teacher.model.") for k in state),
        queues=any(k.startswith("queue.") for k in state),
        decoder_layers=count_layers(state, "model.answer_decoder.layer."),
    )


def check_fits(layout: Layout, config: ALBEFConfig, name: str) -> None:
    """Refuse a checkpoint whose BERT depth, fusion layer or pairing differs from the model's."""
    if layout.text_layers == 0 and layout.fusion_layers == 0:
        return  # no text weights at all: adapt_state_dict names what is missing
    text = config.text
    per_stream = layout.fusion_layers // layout.fusion_streams
    fix = (
        f"set model.init_args.arch.text.fusion_layer: {layout.text_layers} and text.layers: "
        f"{layout.text_layers + per_stream} (or convert the file with `albef-struct convert`, which reads the sizes)"
    )
    if layout.text_layers != text.fusion_layer:
        raise CheckpointError(
            f"{name}: the checkpoint's first cross-attention layer is {layout.text_layers} (BERT with "
            f"{layout.text_layers + layout.fusion_layers} layers), but the model's text.fusion_layer is "
            f"{text.fusion_layer} ({text.layers} layers); {fix}"
        )
    if per_stream != text.fusion_layers:
        raise CheckpointError(
            f"{name}: the checkpoint has {per_stream} fusion layers per stream, the model "
            f"{text.fusion_layers} (text.layers {text.layers} - fusion_layer {text.fusion_layer}); {fix}"
        )
    if layout.fusion_streams > config.fusion_streams:
        raise CheckpointError(
            f"{name} holds NLVR2's paired fusion layers ({layout.fusion_layers} layers in pairs); it initialises only "
            "NLVR2 models (task nlvr / nlvr_pretrain), not this single-stream model"
        )
