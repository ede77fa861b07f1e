"""ALBEF's official key names -> this project's: the mapping for every layout, momentum copies and queues."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from albef_struct.checkpoint.errors import CheckpointError

# ALBEF's momentum copies carry an ``_m`` suffix on the top-level module name.
_MOMENTUM_PREFIXES = (
    "visual_encoder_m.",
    "vision_proj_m.",
    "text_encoder_m.",
    "text_proj_m.",
    "text_decoder_m.",
    "cls_head_m.",
)
_QUEUE_KEYS = {
    "image_queue": "queue.image_feats",
    "text_queue": "queue.text_feats",
    "idx_queue": "queue.idx",
    "queue_ptr": "queue.ptr",
}
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")


@dataclass
class ImportReport:
    """What happened to every source key: mapped, or dropped with a reason."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason


def _map_bert_key(rest: str, fusion_layer: int) -> tuple[str, str] | None:
    """Map a key under ALBEF's ``text_encoder.`` (``bert.`` already stripped) to ours."""
    if rest.startswith("embeddings.position_ids"):
        return None
    if rest.startswith("embeddings."):
        return "text_encoder", rest
    match = _LAYER.match(rest)
    if match:
        layer, tail = int(match.group(1)), match.group(2)
        if layer < fusion_layer:
            return "text_encoder", f"layer.{layer}.{tail}"
        return "fusion_encoder", f"layer.{layer - fusion_layer}.{tail}"
    if rest.startswith("cls.predictions."):
        tail = rest[len("cls.predictions.") :]
        if tail == "bias":
            tail = "decoder.bias"
        return "mlm_head", tail
    return None


def _map_decoder_key(rest: str) -> str | None:
    """ALBEF VQA ``text_decoder.`` keys (``bert.`` stripped) -> our ``answer_decoder.``."""
    if rest.startswith("embeddings.position_ids"):
        return None
    if rest.startswith("embeddings."):
        return "answer_decoder." + rest
    if rest.startswith("encoder.layer."):
        return "answer_decoder.layer." + rest[len("encoder.layer.") :]
    if rest.startswith("cls.predictions."):
        tail = rest[len("cls.predictions.") :]
        return "answer_decoder.head." + ("decoder.bias" if tail == "bias" else tail)
    return None


def map_albef_model_key(key: str, fusion_layer: int) -> str | None:
    """Our module path (relative to the :class:`~albef_struct.models.ALBEF`) for an official key.

    Covers every official layout: ``text_encoder.bert.*`` (pretraining) or
    ``text_encoder.*`` (fine-tuned), any number of fusion layers (NLVR2's 18-layer
    BERT maps onto paired fusion layers), ``text_decoder.*`` (VQA) and the task heads.
    """
    if key.startswith("visual_encoder."):
        return key
    if key == "temp" or key.startswith(("vision_proj.", "text_proj.", "itm_head.", "cls_head.", "ta_head.")):
        return key
    for module in ("text_encoder.", "text_decoder."):
        if key.startswith(module):
            rest = key[len(module) :]
            if rest.startswith("bert."):
                rest = rest[len("bert.") :]
            if module == "text_decoder.":
                return _map_decoder_key(rest)
            mapped = _map_bert_key(rest, fusion_layer)
            return None if mapped is None else f"{mapped[0]}.{mapped[1]}"
    return None


def convert_albef_state_dict(
    state: Mapping[str, torch.Tensor], fusion_layer: int
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Official ALBEF state dict (any layout) -> this project's keys.

    Online weights go to ``model.*``, momentum copies to ``teacher.model.*`` and the
    queues to ``queue.*``. Aliased tensors (the MLM decoder weight tied to the word
    embeddings, ``cls.predictions.bias`` = ``decoder.bias``) are checked for
    equality and recorded as dropped duplicates.
    """
    out: dict[str, torch.Tensor] = {}
    report = ImportReport()
    for key, value in state.items():
        if key in _QUEUE_KEYS:
            target = _QUEUE_KEYS[key]
        else:
            prefix = "model."
            source = key
            for momentum_prefix in _MOMENTUM_PREFIXES:
                if key.startswith(momentum_prefix):
                    prefix = "teacher.model."
                    source = momentum_prefix[:-3] + "." + key[len(momentum_prefix) :]
                    break
            mapped = map_albef_model_key(source, fusion_layer)
            if mapped is None:
                report.drop(key, _drop_reason(key))
                continue
            target = prefix + mapped
        if target in out:
            if not (value.is_meta or same_tensor(out[target], value)):
                raise CheckpointError(f"{key} and another key both map to {target} but hold different values")
            report.drop(key, f"alias of the tensor already mapped to {target}")
            continue
        out[target] = value
        report.mapped[key] = target
    return out, report


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _drop_reason(key: str) -> str:
    if key.endswith("embeddings.position_ids"):
        return "position ids are a non-persistent buffer in transformers >= 4.31 (re-created as arange on export)"
    return "not part of this architecture"


def split_owner(key: str) -> tuple[str, str]:
    """``teacher.model.x`` -> (``teacher.model.``, ``x``); ``model.x`` -> (``model.``, ``x``)."""
    for owner in ("teacher.model.", "model."):
        if key.startswith(owner):
            return owner, key[len(owner) :]
    return "", key
