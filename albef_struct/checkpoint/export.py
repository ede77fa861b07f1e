"""This project's weights -> ALBEF's official layout for a task (the inverse of :mod:`~albef_struct.checkpoint.keymap`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.keymap import split_owner
from albef_struct.checkpoint.layout import count_layers
from albef_struct.checkpoint.weights import task_spec

_QUEUE_EXPORT = {"queue.image_feats": "image_queue", "queue.text_feats": "text_queue", "queue.ptr": "queue_ptr"}
_PLAIN_KEYS = ("visual_encoder.", "vision_proj.", "text_proj.", "itm_head.", "cls_head.", "ta_head.")
_BERT_ROOTS = ("text_encoder.bert.", "text_encoder.", "text_decoder.bert.")


def _lm_head_names(root: str, tail: str) -> list[str]:
    """ALBEF's names of an MLM head tensor; the decoder bias is stored twice (``bias`` aliases it)."""
    head = f"{root}cls.predictions."
    return [head + "bias", head + "decoder.bias"] if tail == "decoder.bias" else [head + tail]


def _albef_model_names(rest: str, fusion_layer: int, bert: bool) -> list[str]:
    """ALBEF names of a key relative to our :class:`ALBEF` (``[]``: ALBEF has no such tensor)."""
    if rest == "temp" or rest.startswith(_PLAIN_KEYS):
        return [rest]
    text = "text_encoder.bert." if bert else "text_encoder."
    if rest.startswith("text_encoder.embeddings."):
        return [text + rest[len("text_encoder.") :]]
    match = re.match(r"^(text|fusion)_encoder\.layer\.(\d+)\.(.*)$", rest)
    if match:
        layer = int(match.group(2)) + (fusion_layer if match.group(1) == "fusion" else 0)
        return [f"{text}encoder.layer.{layer}.{match.group(3)}"]
    if rest.startswith("mlm_head."):
        return _lm_head_names("text_encoder.", rest[len("mlm_head.") :])
    if rest.startswith("answer_decoder.embeddings."):
        return ["text_decoder.bert." + rest[len("answer_decoder.") :]]
    if rest.startswith("answer_decoder.layer."):
        return ["text_decoder.bert.encoder." + rest[len("answer_decoder.") :]]
    if rest.startswith("answer_decoder.head."):
        return _lm_head_names("text_decoder.", rest[len("answer_decoder.head.") :])
    return []


def _momentum_name(name: str) -> str:
    top, _, tail = name.partition(".")
    return f"{top}_m.{tail}" if tail else f"{top}_m"


def albef_names(key: str, task: str, fusion_layer: int) -> list[str]:
    """ALBEF's name(s) for one of this project's state keys in ``task``'s official layout.

    ``[]`` when ALBEF's model for that task has no such tensor (e.g. the image-id
    queue in pretraining, the feature-separation heads).
    """
    if key in _QUEUE_EXPORT:
        return [_QUEUE_EXPORT[key]]
    if key == "queue.idx":
        return ["idx_queue"] if task == "retrieval" else []
    owner, rest = split_owner(key)
    if not owner:
        return []
    names = _albef_model_names(rest, fusion_layer, bert=task == "pretrain")
    return [_momentum_name(n) for n in names] if owner == "teacher.model." else names


def export_albef(
    state: Mapping[str, torch.Tensor], task: str, include_momentum: bool = True, strict: bool = True
) -> dict[str, torch.Tensor]:
    """This project's weights (a task module's state dict) in ALBEF's official layout for ``task``.

    Pretraining gives the ``model`` entry of ALBEF's pretraining checkpoint
    (``text_encoder.bert.*``, the MLM head under ``text_encoder.cls.*`` with its
    aliased ``bias``/``decoder.bias`` and the decoder weight tied to the word
    embeddings, ``*_m`` copies, ``image_queue``/``text_queue``/``queue_ptr``);
    fine-tuned tasks give ALBEF's bare task state dicts (``text_encoder.*``,
    VQA's ``text_decoder.bert.*``). ``embeddings.position_ids`` is re-created as
    ``arange``. ``include_momentum=False`` strips momentum copies and queues, as
    ALBEF's released fine-tuned files. Keys ALBEF has no place for raise
    :class:`CheckpointError` unless ``strict=False`` (then they are left out).
    """
    task_spec(task)  # an unknown task is refused before any key is looked at
    fusion_layer = count_layers(state, "model.text_encoder.layer.")
    out: dict[str, torch.Tensor] = {}
    unplaced = []
    for key, value in state.items():
        if not include_momentum and (key.startswith(("teacher.", "queue."))):
            continue
        names = albef_names(key, task, fusion_layer)
        if not names and key != "queue.idx":
            unplaced.append(key)
        for name in names:
            out[name] = value
    if unplaced and strict:
        raise CheckpointError(
            f"ALBEF's {task} model has no place for {len(unplaced)} of these weights, e.g. {unplaced[:4]}; "
            "export with strict=False to leave them out"
        )
    _add_position_ids(out)
    return out


def _add_position_ids(out: dict[str, torch.Tensor]) -> None:
    """ALBEF's (transformers 4.8) persistent ``embeddings.position_ids`` buffers: ``arange`` per BERT."""
    roots = [r for root in _BERT_ROOTS for r in (root, _momentum_name(root.rstrip(".")) + ".")]
    for root in roots:
        table = out.get(f"{root}embeddings.position_embeddings.weight")
        if table is not None and f"{root}embeddings.position_ids" not in out:
            out[f"{root}embeddings.position_ids"] = torch.arange(table.shape[0], device=table.device)[None]
