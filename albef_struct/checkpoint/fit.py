"""Fitting a state dict in this project's layout onto another task's module, every key accounted for."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.keymap import split_owner
from albef_struct.checkpoint.layout import count_layers

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
    ("vision_private_proj.", "this model has no private (feature-separation) heads"),
    ("text_private_proj.", "this model has no private (feature-separation) heads"),
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


_FUSION_LAYER_KEY = re.compile(r"fusion_encoder\.layer\.(\d+)\.(.*)$")


def _candidate_sources(rest: str, fusion_ratio: int) -> list[str]:
    """Module-relative names a target key can be initialised from, best first (ALBEF's task conversions).

    NLVR2 (``fusion_ratio > 1``): fusion layer ``j`` of a paired model comes from
    pretrained layer ``j // ratio`` only (never from layer ``j`` of the source).
    VQA: decoder layers from the fusion layers, decoder embeddings and LM head from
    the text embeddings and the MLM head.
    """
    match = _FUSION_LAYER_KEY.match(rest)
    if match and fusion_ratio > 1:
        return [f"fusion_encoder.layer.{int(match.group(1)) // fusion_ratio}.{match.group(2)}"]
    candidates = [rest]
    if rest.startswith("answer_decoder.layer."):
        candidates.append("fusion_encoder.layer." + rest[len("answer_decoder.layer.") :])
    if rest.startswith("answer_decoder.embeddings."):
        candidates.append("text_encoder.embeddings." + rest[len("answer_decoder.embeddings.") :])
    if rest.startswith("answer_decoder.head."):
        candidates.append("mlm_head." + rest[len("answer_decoder.head.") :])
    return candidates


def _shape_error(found: str, shown: str, key: str, value: torch.Tensor, expected: torch.Tensor) -> CheckpointError:
    if key.startswith("queue."):
        fix = f"set model.init_args.queue_size: {value.shape[-1]} (the checkpoint's queue length)"
    else:
        fix = "build the model with the checkpoint's sizes (`albef-struct convert` infers them from the file)"
    via = f", loaded as {found}," if found not in (shown, key) else ""
    return CheckpointError(
        f"{shown} has shape {tuple(value.shape)} in the checkpoint{via} but the model's {key} expects "
        f"{tuple(expected.shape)} (first mismatching key); {fix}"
    )


def adapt_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    fresh_ok: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], AdaptReport]:
    """Fit ``source`` (this project's layout) onto a module whose state dict is ``target``.

    Keys are matched by name, then by ALBEF's task conversions (VQA decoder from
    the fusion layers, embeddings and MLM head; NLVR2 fusion pairs from single
    layers, which take precedence over same-named layers). Momentum keys missing in
    the source are copied from the online weights; position embeddings are
    resampled to the target grid. Target keys whose prefix is in ``fresh_ok`` may
    stay at initialisation (e.g. a new classifier); anything else unexplained
    raises :class:`CheckpointError`. ``names`` maps source keys to the names shown
    in errors (e.g. ALBEF's own key names).
    """
    from albef_struct.models.vision import resize_pos_embed  # checkpoint I/O stays importable without models

    fresh_ok = dict(fresh_ok or {})
    names = names or {}
    report = AdaptReport()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    ratio_src = count_layers(source, "model.fusion_encoder.layer.")
    ratio_tgt = count_layers(target, "model.fusion_encoder.layer.")
    fusion_ratio = ratio_tgt // ratio_src if ratio_src and ratio_tgt % ratio_src == 0 else 1

    for key, expected in target.items():
        owner, rest = split_owner(key)
        candidates = _candidate_sources(rest, fusion_ratio)
        looked = [owner + c for c in candidates]
        if owner == "teacher.model.":
            looked += ["model." + c for c in candidates]
        found = next((n for n in looked if n in source), None)
        if found is None:
            reason = next(
                (why for prefix, why in fresh_ok.items() if rest.startswith(prefix) or key.startswith(prefix)), None
            )
            if reason is None:
                raise CheckpointError(
                    f"the checkpoint has no weights for {key} (looked for {looked}); it was made for another "
                    "architecture or task"
                )
            report.fresh[key] = reason
            continue
        value = source[found]
        if value.shape != expected.shape:
            if rest == "visual_encoder.pos_embed" and value.shape[-1] == expected.shape[-1]:
                value = resize_pos_embed(value, expected.shape[1] - 1)
                report.resized.append(key)
            else:
                raise _shape_error(found, names.get(found, found), key, value, expected)
        out[key] = value
        used.add(found)
        report.loaded[key] = found
        if owner == "teacher.model." and found.startswith("model."):
            report.from_online.append(key)

    for key in source:
        if key in used:
            continue
        owner, rest = split_owner(key)
        reason = next((why for prefix, why in _UNUSED_REASONS if rest.startswith(prefix)), None)
        if reason is None and key.startswith("queue."):
            reason = "this task keeps no feature queue"
        if reason is None and owner == "teacher.model.":
            reason = "this model runs without a momentum teacher (distillation off or kept as initialised)"
        if reason is None:
            raise CheckpointError(f"the checkpoint's {names.get(key, key)} ({key}) has no counterpart in this model")
        report.dropped[key] = reason
    return out, report
