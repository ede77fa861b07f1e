"""BERT text encoder, cross-attention fusion encoder, MLM head and answer decoder.

Built from transformers' BERT blocks so parameter names match ALBEF's
(``encoder.layer.N.attention.self.query.weight``, ``...crossattention...``). The
fusion and decoder layers are composed here because transformers 5.x only allows
cross-attention in causal decoder layers, while ALBEF's fusion encoder is
bidirectional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertCrossAttention,
    BertEmbeddings,
    BertIntermediate,
    BertLayer,
    BertOutput,
    BertPredictionHeadTransform,
    BertSelfAttention,
    eager_attention_forward,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from albef_struct.models.compact_dropout import EAGER_MODULE_DROPOUT

# ALBEF's additive mask value for padded positions (exp(-1e4) underflows to 0 in fp32).
MASK_VALUE = -10000.0


@dataclass
class TextConfig:
    """Sizes of the BERT text + fusion stack (ALBEF-base: BERT-base, fusion from layer 6).

    ``layers`` counts text and fusion layers together, as in ALBEF's
    ``config_bert.json``; the first ``fusion_layer`` layers form the text encoder.
    """

    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    fusion_layer: int = 6
    heads: int = 12
    intermediate: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103

    @property
    def fusion_layers(self) -> int:
        return self.layers - self.fusion_layer

    def bert_config(self, attention: str = "sdpa") -> BertConfig:
        """The equivalent transformers ``BertConfig``."""
        config = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_position,
            type_vocab_size=self.type_vocab_size,
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            layer_norm_eps=self.layer_norm_eps,
            hidden_act=self.hidden_act,
            pad_token_id=self.pad_token_id,
        )
        config._attn_implementation = EAGER_MODULE_DROPOUT if attention == "eager" else attention
        return config


def additive_mask(mask: torch.Tensor, dtype: torch.dtype, causal: bool = False) -> torch.Tensor:
    """``[B, L]`` 1/0 padding mask -> ``[B, 1, 1|L, L]`` additive attention mask."""
    keep = mask[:, None, None, :].to(torch.bool)
    if causal:
        length = mask.shape[1]
        lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        keep = keep & lower[None, None]
    zeros = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(keep, zeros, torch.tensor(MASK_VALUE, dtype=dtype, device=mask.device))


class _LayerStack(nn.Module):
    """A ``layer`` ModuleList with optional activation checkpointing."""

    layer: nn.ModuleList

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def _run(self, layer: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


class TextEncoder(_LayerStack):
    """BERT embeddings + the first ``fusion_layer`` self-attention layers (ALBEF ``mode='text'``)."""

    def __init__(self, config: BertConfig, num_layers: int) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.layer = nn.ModuleList(BertLayer(config, layer_idx=i) for i in range(num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layer:
            hidden = self._run(layer, hidden, mask)
        return hidden


class FusionLayer(nn.Module):
    """Self-attention, cross-attention to another stream, then the FFN (post-LN, as BERT)."""

    def __init__(self, config: BertConfig, encoder_width: int, causal: bool = False) -> None:
        super().__init__()
        self.attention = BertAttention(config, is_causal=causal)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        if encoder_width != config.hidden_size:
            cross = self.crossattention.self
            cross.key = nn.Linear(encoder_width, cross.all_head_size)
            cross.value = nn.Linear(encoder_width, cross.all_head_size)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None,
        first_token_only: bool = False,
        encoder_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N, L, hidden]``; with ``first_token_only`` ``[N, 1, hidden]``: the [CLS] position alone,
        attending every position as before (the rows a [CLS] head reads, without the others' cost).
        With ``encoder_index`` ``[N]``, ``encoder_hidden`` holds distinct images and row i attends
        image ``encoder_index[i]``: each image's keys and values are computed once."""
        if first_token_only:
            hidden = first_query_self_attention(self.attention, hidden, attention_mask)
        else:
            hidden = self.attention(hidden, attention_mask)[0]
        if encoder_index is None:
            hidden = self.crossattention(
                hidden, encoder_hidden_states=encoder_hidden, encoder_attention_mask=encoder_mask
            )[0]
        else:
            hidden = indexed_cross_attention(self.crossattention, hidden, encoder_hidden, encoder_index, encoder_mask)
        return self.output(self.intermediate(hidden), hidden)


def _heads(heads: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[N, T, hidden]`` projections as ``[N, heads, T, head_size]``."""
    return x.view(*x.shape[:2], -1, heads.attention_head_size).transpose(1, 2)


def _attend(attention: BertAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """The attention kernel the config selects, then BERT's output block (dense, dropout, residual norm)."""
    heads = attention.self
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(heads.config._attn_implementation, eager_attention_forward)
    context, _ = attend(
        heads, query, key, value, mask, dropout=heads.dropout.p if heads.training else 0.0, scaling=heads.scaling
    )
    return attention.output(context.reshape(*residual.shape[:2], -1).contiguous(), residual)


def first_query_self_attention(attention: BertAttention, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BERT self-attention output at position 0 only: its query against every key and value."""
    heads = attention.self
    first = hidden[:, :1]
    query = _heads(heads, heads.query(first))
    return _attend(attention, query, _heads(heads, heads.key(hidden)), _heads(heads, heads.value(hidden)), mask, first)


def indexed_cross_attention(
    attention: BertAttention,
    hidden: torch.Tensor,
    images: torch.Tensor,
    index: torch.Tensor,
    image_mask: torch.Tensor | None,
) -> torch.Tensor:
    """BERT cross-attention of ``hidden`` row i to ``images[index[i]]``, projecting each image's keys and
    values once (re-ranking pairs one image with many texts; ITM pairs reuse the batch's images)."""
    heads = attention.self

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.expand(hidden.shape[0], *x.shape[1:]) if x.shape[0] == 1 else x.index_select(0, index)

    key, value = rows(_heads(heads, heads.key(images))), rows(_heads(heads, heads.value(images)))
    mask = None if image_mask is None else rows(image_mask)
    return _attend(attention, _heads(heads, heads.query(hidden)), key, value, mask, hidden)


class FusionEncoder(_LayerStack):
    """The cross-attention layers of ALBEF (``mode='fusion'``).

    With ``streams > 1`` every pretrained layer is duplicated into a group of
    ``streams`` layers; layer ``i`` attends ``encoder_hidden[i % streams]`` and
    the cross-attention key/value projections are shared inside each group
    (ALBEF's NLVR2 architecture).
    """

    def __init__(self, config: BertConfig, num_layers: int, encoder_width: int, streams: int = 1) -> None:
        super().__init__()
        self.streams = streams
        self.layer = nn.ModuleList(
            FusionLayer(config, encoder_width) for _ in range(num_layers * streams)
        )
        if streams > 1:
            self.tie_cross_attention_kv()

    def tie_cross_attention_kv(self) -> None:
        """Make every layer of a group use its first member's key/value projections."""
        for start in range(0, len(self.layer), self.streams):
            first = self.layer[start].crossattention.self
            for offset in range(1, self.streams):
                other = self.layer[start + offset].crossattention.self
                other.key = first.key
                other.value = first.value

    def forward(
        self,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        image_embeds: torch.Tensor | Sequence[torch.Tensor],
        image_mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
        first_token_only: bool = False,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N, L, hidden]``, or ``[N, 1, hidden]`` with ``first_token_only`` (the last layer computes
        the [CLS] position alone: what ITM and the classifiers read, at less cost). With ``image_index``
        (one stream only) ``image_embeds`` holds distinct images and text row i attends
        ``image_embeds[image_index[i]]`` (each image's keys and values projected once per layer)."""
        if image_index is not None and self.streams != 1:
            raise ValueError("image_index needs a one-stream fusion encoder (NLVR2's pairs have no shared images)")
        images = [image_embeds] if isinstance(image_embeds, torch.Tensor) else list(image_embeds)
        if len(images) != self.streams:
            raise ValueError(f"fusion encoder expects {self.streams} image stream(s), got {len(images)}")
        masks = _stream_masks(image_mask, images, text_embeds.dtype)
        mask = additive_mask(text_mask, text_embeds.dtype)
        hidden = text_embeds
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            stream = i % self.streams
            hidden = self._run(
                layer, hidden, mask, images[stream], masks[stream], first_token_only and i == last, image_index
            )
        return hidden


def _stream_masks(
    image_mask: torch.Tensor | Sequence[torch.Tensor] | None,
    images: list[torch.Tensor],
    dtype: torch.dtype,
) -> list[torch.Tensor | None]:
    if image_mask is None:
        return [None] * len(images)  # every image token is attended
    masks = [image_mask] if isinstance(image_mask, torch.Tensor) else list(image_mask)
    return [additive_mask(m, dtype) for m in masks]


class MLMHead(nn.Module):
    """BERT's LM prediction head; the decoder weight is tied to the word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = word_embeddings.weight
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class AnswerDecoder(_LayerStack):
    """Causal BERT decoder with cross-attention to encoder states and a tied LM head (ALBEF VQA)."""

    def __init__(self, config: BertConfig, num_layers: int, encoder_width: int) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.layer = nn.ModuleList(
            FusionLayer(config, encoder_width, causal=True) for _ in range(num_layers)
        )
        self.head = MLMHead(config, self.embeddings.word_embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Next-token logits ``[B, L, vocab]`` for every position."""
        hidden = self.embeddings(input_ids=input_ids)
        mask = additive_mask(attention_mask, hidden.dtype, causal=True)
        cross_mask = additive_mask(encoder_mask, hidden.dtype)
        for layer in self.layer:
            hidden = self._run(layer, hidden, mask, encoder_hidden, cross_mask)
        return self.head(hidden)


def set_bert_attention(module: nn.Module, implementation: str) -> None:
    """Switch every BERT attention block under ``module`` to ``"sdpa"`` or ``"eager"`` (eager: BERT's
    eager attention whose probability dropout is the block's own dropout module, see
    :data:`~albef_struct.models.compact_dropout.EAGER_MODULE_DROPOUT`)."""
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {implementation!r}")
    name = EAGER_MODULE_DROPOUT if implementation == "eager" else implementation
    for sub in module.modules():
        if isinstance(sub, (BertSelfAttention, BertCrossAttention)):
            sub.config._attn_implementation = name


def bert_attention(module: nn.Module) -> str:
    """``"sdpa"`` or ``"eager"``: what :func:`set_bert_attention` last set on ``module``'s BERT blocks."""
    for sub in module.modules():
        if isinstance(sub, (BertSelfAttention, BertCrossAttention)):
            name = sub.config._attn_implementation
            return "eager" if name == EAGER_MODULE_DROPOUT else name
    raise ValueError(f"{type(module).__name__} has no BERT attention block")


def apply_to_stacks(module: nn.Module, fn: Callable[[_LayerStack], None]) -> None:
    """Call ``fn`` on every text/fusion/decoder layer stack under ``module``."""
    for sub in module.modules():
        if isinstance(sub, _LayerStack):
            fn(sub)
