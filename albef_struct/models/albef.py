"""The ALBEF core: image encoder, text encoder, fusion encoder and the heads a task needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from albef_struct.errors import ProjectError
from albef_struct.models.compact_dropout import set_compact_dropout
from albef_struct.models.recompute import set_gelu_recompute
from albef_struct.models.text import (
    AnswerDecoder,
    FusionEncoder,
    MLMHead,
    TextConfig,
    TextEncoder,
    apply_to_stacks,
    set_bert_attention,
)
from albef_struct.models.vision import VisionConfig, build_image_encoder, set_vit_attention, vit_tokens_from_block

TEMP_MIN, TEMP_MAX = 0.001, 0.5


TEXT_POOLING = ("cls", "mean")


class ArchConfigError(ProjectError, ValueError):
    """An ``arch`` setting the model cannot be built with; the message names the key and the choices."""


#: the encoders ``arch.grad_checkpointing`` can name (true: all of them)
CHECKPOINT_PARTS = ("vision", "text", "fusion", "decoder")


def checkpointed_parts(setting: bool | list[str] | tuple[str, ...]) -> frozenset[str]:
    """The encoders whose blocks ``arch.grad_checkpointing`` recomputes in backward."""
    if isinstance(setting, bool):
        return frozenset(CHECKPOINT_PARTS) if setting else frozenset()
    choices = f"give true, false or a list drawn from {list(CHECKPOINT_PARTS)}, e.g. [fusion]"
    if not isinstance(setting, (list, tuple)):
        raise ArchConfigError(f"arch.grad_checkpointing: {setting!r} is neither a bool nor a list; {choices}")
    unknown = [part for part in setting if part not in CHECKPOINT_PARTS]
    if unknown:
        raise ArchConfigError(f"arch.grad_checkpointing: {unknown} are not encoders; {choices}")
    return frozenset(setting)


@dataclass
class ALBEFConfig:
    """Architecture of one ALBEF model; the defaults are ALBEF-base (ViT-B/16 @256 + BERT-base).

    The head flags choose what a task builds: pretraining uses projections, ITM
    and MLM; retrieval projections and ITM; VQA the answer decoder; VE and NLVR2
    an MLP classifier on the fused [CLS] (``classifier_classes``); NLVR2's
    text-assignment stage a linear 3-way ``ta_head``. ``private_heads`` adds the
    modality-private projections of the feature-separation loss. ``fusion_streams=2``
    is NLVR2's paired fusion encoder.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256
    temp: float = 0.07
    projections: bool = True
    itm_head: bool = True
    mlm_head: bool = False
    answer_decoder_layers: int = 0
    classifier_classes: int = 0
    ta_head: bool = False
    private_heads: bool = False
    fusion_streams: int = 1
    attention: str = "sdpa"
    # recompute blocks in backward: true (every encoder), false, or the encoders to recompute, e.g. [fusion]
    grad_checkpointing: bool | list[str] = False
    # keep each MLP's pre-activation only and recompute its GELU in backward (models/recompute.py)
    recompute_gelu: bool = False
    # dropout with a one-byte mask on CPU tensors, drawn about 2x quicker than torch's (models/compact_dropout.py);
    # the same Bernoulli masks by another random stream; CUDA keeps torch's fused dropout either way
    compact_dropout: bool = True
    # What the text projection sees: ALBEF's [CLS] state, or the mean of the unpadded token states
    # (for text encoders trained with mean pooling, e.g. all-MiniLM-L6-v2, whose [CLS] carries no content).
    text_pooling: str = "cls"  # one of TEXT_POOLING

    def __post_init__(self) -> None:
        checkpointed_parts(self.grad_checkpointing)
        if self.text_pooling not in TEXT_POOLING:
            raise ArchConfigError(f"arch.text_pooling must be one of {TEXT_POOLING}, got {self.text_pooling!r}")

    @classmethod
    def from_dict(cls, values: "ALBEFConfig | dict[str, Any]") -> "ALBEFConfig":
        """Build from a (possibly nested) dict, e.g. a checkpoint's hyper-parameters."""
        if isinstance(values, cls):
            return values
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("vision"), dict):
            values["vision"] = VisionConfig(**values["vision"])
        if isinstance(values.get("text"), dict):
            values["text"] = TextConfig(**values["text"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def without_weight_sources(self) -> "ALBEFConfig":
        """The same architecture with no pretrained-weight file or hub flag.

        What checkpoints store: they hold the weights, and rebuilding a model from
        them must not need (or load) the files it was first initialised from.
        """
        return replace(self, vision=replace(self.vision, pretrained=False, pretrained_file=None))


class Encoded(NamedTuple):
    """All tokens of one modality, the normalised projected feature, and the pooled vector it came from."""

    embeds: torch.Tensor
    feat: torch.Tensor | None
    pooled: torch.Tensor | None = None


class ALBEF(nn.Module):
    """Image, text and fusion encoders plus optional projections, ITM, MLM and answer heads.

    Attribute names are stable: they are the state-dict prefixes the checkpoint
    converter maps ALBEF's official keys onto.
    """

    def __init__(self, config: ALBEFConfig) -> None:
        super().__init__()
        self.config = config
        bert = config.text.bert_config(config.attention)
        self.visual_encoder = build_image_encoder(config.vision)
        self.text_encoder = TextEncoder(bert, config.text.fusion_layer)
        self.fusion_encoder = FusionEncoder(
            bert, config.text.fusion_layers, config.vision.width, streams=config.fusion_streams
        )
        if config.projections:
            self.vision_proj = nn.Linear(config.vision.width, config.embed_dim)
            self.text_proj = nn.Linear(config.text.hidden, config.embed_dim)
            self.temp = nn.Parameter(torch.tensor(float(config.temp)))
        if config.itm_head:
            self.itm_head = nn.Linear(config.text.hidden, 2)
        if config.mlm_head:
            self.mlm_head = MLMHead(bert, self.text_encoder.embeddings.word_embeddings)
        if config.answer_decoder_layers:
            self.answer_decoder = AnswerDecoder(bert, config.answer_decoder_layers, config.text.hidden)
        if config.classifier_classes:
            hidden = config.text.hidden
            self.cls_head = nn.Sequential(
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.classifier_classes)
            )
        if config.ta_head:
            self.ta_head = nn.Linear(config.text.hidden, 3)
        if config.private_heads:
            self.vision_private_proj = nn.Linear(config.vision.width, config.embed_dim)
            self.text_private_proj = nn.Linear(config.text.hidden, config.embed_dim)
        self._init_bert_weights(config.text)
        # what [B, T, width] image inputs are: None, the image encoder's output; k, the output of its
        # first k blocks (a partial image cache; ImageTokenCache.attach sets it). Not saved with the weights.
        self.cached_image_blocks: int | None = None
        self.set_attention(config.attention)
        self.set_grad_checkpointing(config.grad_checkpointing)
        self.set_gelu_recompute(config.recompute_gelu)
        self.set_compact_dropout(config.compact_dropout)

    # --- configuration switches -------------------------------------------------
    def set_attention(self, implementation: str) -> None:
        """``"sdpa"`` (fused kernels) or ``"eager"`` attention everywhere."""
        set_vit_attention(self.visual_encoder, implementation)
        set_bert_attention(self, implementation)

    def set_grad_checkpointing(self, enabled: bool | list[str] | tuple[str, ...] = True) -> None:
        """Recompute ViT blocks and BERT layers in the backward pass to save memory: every encoder's
        (``True``), none (``False``), or those named (``["fusion"]``; see :data:`CHECKPOINT_PARTS`)."""
        parts = checkpointed_parts(enabled)
        self.visual_encoder.set_grad_checkpointing("vision" in parts)
        kinds = {TextEncoder: "text", FusionEncoder: "fusion", AnswerDecoder: "decoder"}

        def toggle(stack: nn.Module) -> None:
            stack.grad_checkpointing = kinds[type(stack)] in parts

        apply_to_stacks(self, toggle)

    def set_gelu_recompute(self, enabled: bool = True) -> None:
        """Store each MLP's GELU input only and recompute its output in backward (same arithmetic, less memory)."""
        set_gelu_recompute(self, enabled, self.config.text.hidden_act)

    def set_compact_dropout(self, enabled: bool = True) -> None:
        """Every dropout layer as :class:`~albef_struct.models.compact_dropout.CompactDropout` (or torch's again)."""
        set_compact_dropout(self, enabled)

    # --- encoders --------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> Encoded:
        """``images`` ``[B, 3, H, W]``, or cached tokens ``[B, T, width]`` (``data.init_args.image_cache``):
        the encoder's output, used as it is, or with ``cached_image_blocks`` set the output of that many
        blocks, which the remaining blocks then encode."""
        if images.dim() != 3:
            embeds = self.visual_encoder(images)
        elif self.cached_image_blocks is None:
            embeds = images
        else:
            embeds = vit_tokens_from_block(self.visual_encoder, images, self.cached_image_blocks)
        pooled = embeds[:, 0]
        feat = F.normalize(self.vision_proj(pooled), dim=-1) if self.config.projections else None
        return Encoded(embeds, feat, pooled)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        embeds = self.text_encoder(input_ids, attention_mask)
        pooled = self.pool_text(embeds, attention_mask)
        feat = F.normalize(self.text_proj(pooled), dim=-1) if self.config.projections else None
        return Encoded(embeds, feat, pooled)

    def pool_text(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]``: the [CLS] state, or the mean over unpadded tokens (``text_pooling``)."""
        if self.config.text_pooling == "cls":
            return embeds[:, 0]
        weights = attention_mask.unsqueeze(-1).to(embeds.dtype)
        return (embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def private_features(self, image: Encoded, text: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised modality-private features of the pooled image and text vectors (feature separation)."""
        image_private = F.normalize(self.vision_private_proj(image.pooled), dim=-1)
        text_private = F.normalize(self.text_private_proj(text.pooled), dim=-1)
        return image_private, text_private

    def fuse(
        self,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image_mask: torch.Tensor | list[torch.Tensor] | None = None,
        first_token_only: bool = False,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fusion-encoder hidden states for text attending image tokens; with ``first_token_only``
        the [CLS] state alone (``[N, 1, hidden]``, enough for ``itm_logits`` and ``classify``); with
        ``image_index`` text row i attends ``image_embeds[image_index[i]]`` (distinct images, each
        projected once)."""
        return self.fusion_encoder(text_embeds, text_mask, image_embeds, image_mask, first_token_only, image_index)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits from the fused [CLS]; class 1 means "match"."""
        return self.itm_head(fused[:, 0])

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """Class logits from the fused [CLS] (VE, NLVR2)."""
        return self.cls_head(fused[:, 0])

    def mlm_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits of all text + fusion layers on ``input_ids`` attending the image.

        ``[B, L, vocab]``; or ``[n, vocab]`` for the ``n`` True entries of the
        ``[B, L]`` bool mask ``positions`` (the vocabulary projection dominates the
        cost of a small model, and only masked tokens enter the loss).
        """
        text_embeds = self.text_encoder(input_ids, attention_mask)
        hidden = self.fuse(text_embeds, attention_mask, image_embeds)
        if positions is not None:
            hidden = hidden[positions]
        return self.mlm_head(hidden)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Clamp the learnable temperature to ALBEF's [0.001, 0.5] in place."""
        self.temp.clamp_(TEMP_MIN, TEMP_MAX)

    # --- initialisation -----------------------------------------------------------------
    def _init_bert_weights(self, text: TextConfig, std: float = 0.02) -> None:
        """BERT's initialisation (normal(0, 0.02), zero bias, unit LayerNorm) for the text side."""
        bert_modules = [self.text_encoder, self.fusion_encoder]
        for name in ("mlm_head", "answer_decoder"):
            if hasattr(self, name):
                bert_modules.append(getattr(self, name))
        for root in bert_modules:
            for module in root.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, std=std)
                    if module.padding_idx is not None:
                        module.weight.data[module.padding_idx].zero_()
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
