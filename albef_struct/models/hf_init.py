"""Initialise the text, fusion and MLM parts of an ALBEF model from a HF BERT checkpoint.

ALBEF starts from ``bert-base-uncased``: BERT layers below ``fusion_layer`` become
the text encoder, the upper layers give the fusion layers their self-attention and
FFN, and the cross-attention starts fresh. The MLM head comes from the checkpoint
when it has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import BertConfig, BertForMaskedLM

from albef_struct.models.albef import ALBEF

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """Which parameters were copied from the checkpoint and which start fresh."""

    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for name in self.fresh:
            group = ".".join(part for part in name.split(".")[:4] if not part.isdigit())
            groups[group] = groups.get(group, 0) + 1
        fresh = ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())) or "none"
        return f"initialised from {self.source}: {len(self.loaded)} tensors loaded; fresh: {fresh}"


_CHECKED_SIZES = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden",
    "num_attention_heads": "heads",
    "intermediate_size": "intermediate",
}


def _hf_to_albef_key(key: str, fusion_layer: int) -> str | None:
    """``bert.encoder.layer.7.x`` -> ``fusion_encoder.layer.1.x`` (for fusion_layer 6), etc."""
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if key.startswith("embeddings.") and "position_ids" not in key and "token_type_ids" not in key:
        return f"text_encoder.{key}"
    if key.startswith("encoder.layer."):
        layer, _, tail = key[len("encoder.layer.") :].partition(".")
        index = int(layer)
        if index < fusion_layer:
            return f"text_encoder.layer.{index}.{tail}"
        return f"fusion_encoder.layer.{index - fusion_layer}.{tail}"
    if key.startswith("cls.predictions."):
        tail = key[len("cls.predictions.") :]
        return "mlm_head." + ("decoder.bias" if tail == "bias" else tail)
    return None


@torch.no_grad()
def init_text_from_hf(model: ALBEF, path: str) -> InitReport:
    """Copy BERT weights from a local HF directory (or hub name when online) into ``model``.

    Raises ``ValueError`` naming the mismatching sizes when the checkpoint does
    not fit the configured text encoder.
    """
    hf_config = BertConfig.from_pretrained(path)
    text = model.config.text
    mismatched = [
        f"{ours}={getattr(text, ours)} vs checkpoint {theirs}={getattr(hf_config, theirs)}"
        for theirs, ours in _CHECKED_SIZES.items()
        if getattr(hf_config, theirs) != getattr(text, ours)
    ]
    if mismatched:
        raise ValueError(f"text config does not match the BERT checkpoint at {path}: " + "; ".join(mismatched))
    hf_model, info = BertForMaskedLM.from_pretrained(path, output_loading_info=True)
    missing = set(info.get("missing_keys", []))
    ours = model.state_dict()
    report = InitReport(source=str(path))
    loaded: set[str] = set()
    for key, value in hf_model.state_dict().items():
        if key in missing:
            continue  # not in the checkpoint: HF initialised it randomly; ours stays fresh
        target = _hf_to_albef_key(key, text.fusion_layer)
        if target is None or target not in ours:
            continue
        if ours[target].shape == value.shape:
            ours[target].copy_(value)
        elif target.endswith("position_embeddings.weight"):  # fewer/more positions: copy the overlap
            rows = min(ours[target].shape[0], value.shape[0])
            ours[target][:rows].copy_(value[:rows])
        else:
            raise ValueError(f"{key} has shape {tuple(value.shape)}, {target} expects {tuple(ours[target].shape)}")
        loaded.add(target)
    report.loaded = sorted(loaded)
    tied = {"mlm_head.decoder.weight"} if "text_encoder.embeddings.word_embeddings.weight" in loaded else set()
    report.fresh = sorted(
        k
        for k in ours
        if k.startswith(("text_encoder.", "fusion_encoder.", "mlm_head."))
        and k not in loaded
        and k not in tied
    )
    log.info(report.summary())
    return report
