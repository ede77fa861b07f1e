"""Official ALBEF checkpoint import: key mapping from ALBEF's layouts onto this project's modules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

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


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be imported, with the reason and the fix."""


@dataclass
class ImportReport:
    """What happened to every source key: mapped, or dropped with a reason."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason


def load_checkpoint_file(path: str | Path) -> dict:
    """Load a ``.pth``/``.ckpt`` with ``torch.load(weights_only=True)`` and a readable error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise CheckpointError(
            f"could not load {path} with torch.load(weights_only=True): {err}. If the file is truncated or "
            "corrupt, download it again. If it holds pickled Python objects (not just tensors), this project "
            "refuses to unpickle it; convert it once in a trusted environment with "
            "`torch.save(torch.load(path, weights_only=False)['model'], 'weights_only.pth')`."
        ) from err


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
            if not (value.is_meta or _same(out[target], value)):
                raise CheckpointError(f"{key} and another key both map to {target} but hold different values")
            report.drop(key, f"alias of the tensor already mapped to {target}")
            continue
        out[target] = value
        report.mapped[key] = target
    return out, report


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _drop_reason(key: str) -> str:
    if key.endswith("embeddings.position_ids"):
        return "position ids are a non-persistent buffer in transformers >= 4.31"
    return "not part of this architecture"


# --- adapting a state dict in this project's layout to another task's module ---------------------

# Why a source tensor may legitimately have no place in the target module.
_UNUSED_REASONS = (
    ("mlm_head.", "the MLM head is only used in pretraining"),
    ("itm_head.", "this task has no image-text matching head"),
    ("vision_proj.", "this task uses no contrastive projections"),
    ("text_proj.", "this task uses no contrastive projections"),
    ("temp", "this task uses no contrastive temperature"),
    ("ta_head.", "the text-assignment head is only used in NLVR2's text-assignment pretraining"),
    ("cls_head.", "the classifier head belongs to another task"),
    ("answer_decoder.", "this task has no answer decoder"),
    ("private_", "this model has no private (feature-separation) heads"),
    ("structure.", "this task uses no latent-structure losses"),
    ("contrastive.", "this task keeps no contrastive-loss state"),
)


@dataclass
class AdaptReport:
    """How a source state dict was fitted onto a module: every target and source key accounted for."""

    loaded: dict[str, str] = field(default_factory=dict)  # target <- source
    resized: list[str] = field(default_factory=list)
    from_online: list[str] = field(default_factory=list)  # momentum keys copied from online weights
    fresh: dict[str, str] = field(default_factory=dict)  # target keys left at initialisation, with reason
    dropped: dict[str, str] = field(default_factory=dict)  # source keys not used, with reason

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded ({len(self.resized)} resized, {len(self.from_online)} momentum "
            f"copies made from online weights), {len(self.fresh)} initialised fresh, {len(self.dropped)} dropped"
        )


def _split_owner(key: str) -> tuple[str, str]:
    """``teacher.model.x`` -> (``teacher.model.``, ``x``); ``model.x`` -> (``model.``, ``x``)."""
    for owner in ("teacher.model.", "model."):
        if key.startswith(owner):
            return owner, key[len(owner) :]
    return "", key


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _derived_sources(rest: str, fusion_ratio: int) -> list[str]:
    """Other names a module-relative key can be initialised from (ALBEF's task conversions)."""
    candidates = []
    match = re.match(r"fusion_encoder\.layer\.(\d+)\.(.*)$", rest)
    if match and fusion_ratio > 1:  # NLVR2: each pretrained fusion layer seeds a pair
        candidates.append(f"fusion_encoder.layer.{int(match.group(1)) // fusion_ratio}.{match.group(2)}")
    if rest.startswith("answer_decoder.layer."):  # VQA: decoder layers from the fusion layers
        candidates.append("fusion_encoder.layer." + rest[len("answer_decoder.layer.") :])
    if rest.startswith("answer_decoder.embeddings."):
        candidates.append("text_encoder.embeddings." + rest[len("answer_decoder.embeddings.") :])
    if rest.startswith("answer_decoder.head."):
        candidates.append("mlm_head." + rest[len("answer_decoder.head.") :])
    return candidates


def adapt_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    fresh_ok: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], AdaptReport]:
    """Fit ``source`` (this project's layout) onto a module whose state dict is ``target``.

    Keys are matched by name, then by ALBEF's task conversions (VQA decoder from
    the fusion layers, embeddings and MLM head; NLVR2 fusion pairs from single
    layers). Momentum keys missing in the source are copied from the online
    weights; position embeddings are resampled to the target grid. Target keys
    whose prefix is in ``fresh_ok`` may stay at initialisation (e.g. a new
    classifier); anything else unexplained raises :class:`CheckpointError`.
    """
    from albef_struct.models.vision import resize_pos_embed  # checkpoint I/O stays importable without models

    fresh_ok = dict(fresh_ok or {})
    report = AdaptReport()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    ratio_src = _count_layers(source, "model.fusion_encoder.layer.")
    ratio_tgt = _count_layers(target, "model.fusion_encoder.layer.")
    fusion_ratio = ratio_tgt // ratio_src if ratio_src and ratio_tgt % ratio_src == 0 else 1

    for key, expected in target.items():
        owner, rest = _split_owner(key)
        names = [key] + [owner + alt for alt in _derived_sources(rest, fusion_ratio)]
        if owner == "teacher.model.":
            online = ["model." + rest] + ["model." + alt for alt in _derived_sources(rest, fusion_ratio)]
            names = names + online
        found = next((n for n in names if n in source), None)
        if found is None:
            reason = next((why for prefix, why in fresh_ok.items() if rest.startswith(prefix) or key.startswith(prefix)), None)
            if reason is None:
                raise CheckpointError(
                    f"the checkpoint has no weights for {key} (looked for {names}); it was made for another "
                    "architecture or task"
                )
            report.fresh[key] = reason
            continue
        value = source[found]
        if value.shape != expected.shape:
            if rest == "visual_encoder.pos_embed":
                value = resize_pos_embed(value, expected.shape[1] - 1)
                report.resized.append(key)
            else:
                raise CheckpointError(
                    f"{found} has shape {tuple(value.shape)} but {key} expects {tuple(expected.shape)}; "
                    "set the model sizes to the checkpoint's"
                )
        out[key] = value
        used.add(found)
        report.loaded[key] = found
        if owner == "teacher.model." and found.startswith("model."):
            report.from_online.append(key)

    for key in source:
        if key in used:
            continue
        owner, rest = _split_owner(key)
        reason = next((why for prefix, why in _UNUSED_REASONS if rest.startswith(prefix)), None)
        if reason is None and key.startswith("queue."):
            reason = "this task keeps no feature queue"
        if reason is None and owner == "teacher.model.":
            reason = "this model runs without a momentum teacher (distillation off or kept as initialised)"
        if reason is None:
            raise CheckpointError(f"the checkpoint's {key} has no counterpart in this model")
        report.dropped[key] = reason
    return out, report
