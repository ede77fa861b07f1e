"""Official ALBEF checkpoints: reading files, key mapping for every layout, import onto any task, export.

ALBEF released its weights in three layouts (the README's "Checkpoints" section lists the files):

* ``pretrain``: ``{'model': state, 'optimizer', ...}`` with ``text_encoder.bert.*``, the MLM
  head ``text_encoder.cls.*``, momentum copies ``*_m`` and the feature queues
  (``ALBEF.pth``, ``ALBEF_4M.pth``);
* ``finetuned``: a bare task state dict, ``text_encoder.*`` without ``bert.``, VQA's
  ``text_decoder.*``, usually without momentum copies or queues (``mscoco.pth``,
  ``flickr30k.pth``, ``vqa.pth``, ``refcoco.pth``);
* ``nlvr``: NLVR2's 18-layer BERT whose fusion layers come in pairs with tied
  cross-attention key/value (``pretrain_model_nlvr.pth`` and NLVR2 models).

:func:`import_albef` reads any of them (or this project's own checkpoints), detects
the layout, maps the keys (:func:`convert_albef_state_dict`), fits them onto the
target task's modules (:func:`adapt_state_dict`) and reports every tensor dropped or
initialised fresh, with the reason. :func:`export_albef` writes this project's
weights back in ALBEF's layout for a task.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from albef_struct.errors import ProjectError

if TYPE_CHECKING:  # checkpoint I/O stays importable without the models (timm, transformers)
    from albef_struct.models import ALBEFConfig

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
_CROSS_ATTENTION = re.compile(r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.crossattention\.")

# ALBEF's momentum models copy encoders, projections and heads, but not the ITM head or the temperature
# (equal to ``albef_struct.lit.task.TEACHER_EXCLUDES``; a test keeps them in step).
TEACHER_EXCLUDES = ("itm_head", "temp")
# Module state that may start fresh whatever the source (the image-id queue is not in ALBEF's files).
ALWAYS_FRESH_OK = {"queue.idx": "ALBEF's pretraining checkpoints carry no image-id queue; it starts empty (-100)"}
# What an official file can never hold: this project's additions to ALBEF.
OFFICIAL_FRESH_OK = {
    "vision_private_proj.": "ALBEF has no modality-private (feature-separation) heads; they start fresh",
    "text_private_proj.": "ALBEF has no modality-private (feature-separation) heads; they start fresh",
}


class CheckpointError(ProjectError, ValueError):
    """A checkpoint file or state dict that cannot be imported, with the reason and the fix."""


@dataclass
class ImportReport:
    """What happened to every source key: mapped, or dropped with a reason."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason


# --- reading files ---------------------------------------------------------------------------------
def load_checkpoint_file(path: str | Path) -> dict:
    """Load a ``.pth``/``.ckpt`` with ``torch.load(weights_only=True)``; refusals and damage say what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy failed; fetch it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise CheckpointError(_unsafe_message(path, err)) from err
        raise CheckpointError(_damaged_message(path, err)) from err
    except Exception as err:  # torch raises RuntimeError (zip), EOFError, KeyError (legacy format) ...
        raise CheckpointError(_damaged_message(path, err)) from err


def _unsafe_message(path: Path, err: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" (e.g. an instance of {found.group(1)})" if found else ""
    return (
        f"{path} holds pickled Python objects{what}, not just tensors and plain values, and this project loads "
        "checkpoints only with torch.load(weights_only=True), which refuses to unpickle them (unpickling can run "
        "arbitrary code). If you trust the file, extract the weights once with\n"
        f"  python -c \"import torch; p = torch.load('{path}', map_location='cpu', weights_only=False); "
        f"torch.save(p.get('model', p), '{path.with_suffix('')}_weights.pth')\"\n"
        "and use the new file (or convert it: albef-struct convert IN OUT)."
    )


def _damaged_message(path: Path, err: Exception) -> str:
    size = path.stat().st_size
    return (
        f"could not read {path} ({size:,} bytes) as a PyTorch checkpoint: {type(err).__name__}: {str(err)[:200]}. "
        "The file is truncated or corrupt (an interrupted download or copy), or not a PyTorch file at all: "
        "download it again and compare its size with the source's."
    )


# --- official key mapping ----------------------------------------------------------------------------
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
        return "position ids are a non-persistent buffer in transformers >= 4.31 (re-created as arange on export)"
    return "not part of this architecture"


# --- export: this project's keys -> ALBEF's ------------------------------------------------------------
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
    owner, rest = _split_owner(key)
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
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    fusion_layer = _count_layers(state, "model.text_encoder.layer.")
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


def _count_layers(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


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
    ratio_src = _count_layers(source, "model.fusion_encoder.layer.")
    ratio_tgt = _count_layers(target, "model.fusion_encoder.layer.")
    fusion_ratio = ratio_tgt // ratio_src if ratio_src and ratio_tgt % ratio_src == 0 else 1

    for key, expected in target.items():
        owner, rest = _split_owner(key)
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
        owner, rest = _split_owner(key)
        reason = next((why for prefix, why in _UNUSED_REASONS if rest.startswith(prefix)), None)
        if reason is None and key.startswith("queue."):
            reason = "this task keeps no feature queue"
        if reason is None and owner == "teacher.model.":
            reason = "this model runs without a momentum teacher (distillation off or kept as initialised)"
        if reason is None:
            raise CheckpointError(f"the checkpoint's {names.get(key, key)} ({key}) has no counterpart in this model")
        report.dropped[key] = reason
    return out, report


# --- tasks: the weights each task module holds --------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """The weight-holding part of one task's LightningModule (its state-dict keys, not its behaviour)."""

    heads: Mapping[str, Any]  # ALBEFConfig head flags the task module forces
    teacher: bool  # an EMA teacher ``teacher.model.*``
    queue: bool  # feature queues ``queue.*``
    fresh_ok: Mapping[str, str]  # target prefixes that may start fresh, with the reason
    module: str  # class path of the LightningModule
    description: str


_NO_HEADS = dict(projections=False, itm_head=False, mlm_head=False, answer_decoder_layers=0, classifier_classes=0,
                 ta_head=False, fusion_streams=1)
TASKS: dict[str, TaskSpec] = {
    "pretrain": TaskSpec(
        {**_NO_HEADS, "projections": True, "itm_head": True, "mlm_head": True}, True, True, {},
        "albef_struct.lit.pretrain.PretrainModule", "pretraining / zero-shot retrieval (ITC + ITM + MLM)",
    ),
    "retrieval": TaskSpec(
        {**_NO_HEADS, "projections": True, "itm_head": True}, True, True,
        {"queue.": "the checkpoint has no feature queue (e.g. ALBEF's released fine-tuned files); it starts random"},
        "tasks.retrieval.RetrievalModule", "image-text retrieval (ITC + ITM)",
    ),
    "vqa": TaskSpec(
        {**_NO_HEADS, "answer_decoder_layers": -1}, True, False, {},
        "tasks.vqa.VQAModule", "VQA (answer decoder = copies of the fusion layers)",
    ),
    "nlvr": TaskSpec(
        {**_NO_HEADS, "fusion_streams": 2, "classifier_classes": 2}, True, False,
        {"cls_head.": "new NLVR2 classifier (ALBEF initialises it fresh)"},
        "tasks.nlvr.NLVRModule", "NLVR2 (paired fusion layers, 2-way classifier)",
    ),
    "nlvr_pretrain": TaskSpec(
        {**_NO_HEADS, "fusion_streams": 2, "projections": True, "ta_head": True}, False, False,
        {"ta_head.": "new text-assignment head (ALBEF initialises it fresh)"},
        "tasks.nlvr.TextAssignmentModule", "NLVR2 text-assignment pretraining",
    ),
    "ve": TaskSpec(
        {**_NO_HEADS, "classifier_classes": 3}, True, False,
        {"cls_head.": "new 3-way entailment classifier (ALBEF initialises it fresh)"},
        "tasks.ve.VEModule", "SNLI-VE (3-way classifier)",
    ),
}
DEFAULT_QUEUE_SIZE = 65536


def task_arch(task: str, arch: ALBEFConfig | Mapping[str, Any]) -> ALBEFConfig:
    """``arch`` (sizes) with the head flags ``task`` builds (VQA: one decoder layer per fusion layer)."""
    from albef_struct.models import ALBEFConfig

    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    config = ALBEFConfig.from_dict(dict(arch) if isinstance(arch, Mapping) else arch)
    heads = dict(TASKS[task].heads)
    if heads["answer_decoder_layers"] == -1:
        heads["answer_decoder_layers"] = config.answer_decoder_layers or config.text.fusion_layers
    return replace(config, **heads)


def task_of(config: ALBEFConfig) -> str:
    """The task whose heads ``config`` has."""
    if config.answer_decoder_layers:
        return "vqa"
    if config.ta_head:
        return "nlvr_pretrain"
    if config.fusion_streams > 1:
        return "nlvr"
    if config.classifier_classes:
        return "ve"
    return "pretrain" if config.mlm_head else "retrieval"


class TaskWeights(nn.Module):
    """The weights of a task module without its behaviour: ``model``, optional ``teacher`` and ``queue``.

    Its state-dict keys equal those of the task's LightningModule, so a converted
    state loads into either (``load_state_dict``, ``init_from``, ``--ckpt_path``).
    """

    def __init__(self, arch: ALBEFConfig, teacher: bool, queue_size: int | None, momentum: float = 0.995) -> None:
        super().__init__()
        from albef_struct.models import ALBEF, FeatureQueue, MomentumTeacher

        self.model = ALBEF(arch)
        self.teacher = MomentumTeacher(self.model, momentum, exclude=TEACHER_EXCLUDES) if teacher else None
        self.queue = FeatureQueue(arch.embed_dim, queue_size) if queue_size else None

    @classmethod
    def for_task(cls, task: str, arch: ALBEFConfig | Mapping[str, Any], queue_size: int | None = None) -> "TaskWeights":
        spec = TASKS[task] if task in TASKS else None
        if spec is None:
            raise CheckpointError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
        size = (queue_size or DEFAULT_QUEUE_SIZE) if spec.queue else None
        return cls(task_arch(task, arch), spec.teacher, size)


# --- sources: a file or state dict, its layout and this project's keys --------------------------------
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


def read_source(source: str | Path | Mapping[str, Any] | Source) -> Source:
    """Read a checkpoint path, payload or state dict and bring it to this project's key layout."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, Path)):
        if str(source).endswith(".safetensors"):
            return _read_safetensors(Path(source))
        return source_from_payload(load_checkpoint_file(source), str(source))
    return source_from_payload(source, "<state dict>")


def source_from_payload(payload: Any, name: str) -> Source:
    """A loaded payload (Lightning checkpoint, ``{'model': ...}`` or bare state dict) as a :class:`Source`."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{name} holds a {type(payload).__name__}, not a state dict; it is not a model checkpoint"
        )
    if "state_dict" in payload and "pytorch-lightning_version" in payload:
        return _project_source(payload, name)
    wrapped = isinstance(payload.get("model"), Mapping)
    state = payload["model"] if wrapped else payload
    _check_albef_state(state, name)
    fusion_layer = _first_fusion_layer(state, name)
    converted, conversion = convert_albef_state_dict(state, fusion_layer)
    layout = _layout(converted, _official_layout_name(state, converted), wrapped)
    return Source(name, converted, layout, conversion)


def _project_source(payload: Mapping[str, Any], name: str) -> Source:
    state = dict(payload["state_dict"])
    if not any(k.startswith("model.") for k in state):
        raise CheckpointError(
            f"{name} is a Lightning checkpoint of another model (no 'model.*' weights); pass an ALBEF file or "
            "a checkpoint of this project"
        )
    arch = (payload.get("hyper_parameters") or {}).get("arch")
    return Source(name, state, _layout(state, "albef_struct", False), None, arch)


def _check_albef_state(state: Mapping[str, Any], name: str) -> None:
    """Refuse files of other models (plain BERT, ViT, anything else) and non-tensor entries."""
    keys = [str(k) for k in state]
    has_vision = any(k.startswith("visual_encoder.") for k in keys)
    has_text = any(k.startswith("text_encoder.") for k in keys)
    if not (has_vision and has_text):
        raise CheckpointError(
            f"{name} is not an ALBEF checkpoint: ALBEF files hold 'visual_encoder.*' and 'text_encoder.*' weights "
            f"(optionally inside {{'model': ...}}); this one has {len(keys)} entries such as {keys[:4]}{_guess(keys)}. "
            "Pass an official ALBEF .pth or a checkpoint of this project (to start the text side from a Hugging "
            "Face BERT, use model.init_args.text_init of the pretraining module)."
        )
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"{name}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor; the file is damaged or not a "
            "state dict"
        )


def _guess(keys: list[str]) -> str:
    if any(k.startswith(("bert.", "embeddings.word_embeddings", "encoder.layer.")) for k in keys):
        return ", which looks like a (Hugging Face) BERT state dict"
    if any(k.startswith(("blocks.", "patch_embed.", "pos_embed", "cls_token")) for k in keys):
        return ", which looks like a ViT (timm) image-encoder state dict"
    if any(k in ("optimizer", "epoch", "lr_scheduler", "state_dict") for k in keys):
        return ", a training checkpoint without ALBEF model weights"
    return ""


def _first_fusion_layer(state: Mapping[str, torch.Tensor], name: str) -> int:
    """ALBEF's ``fusion_layer``: the first text-encoder layer with cross-attention keys."""
    layers = {int(m.group(1)) for k in state if (m := _CROSS_ATTENTION.match(k))}
    if not layers:
        raise CheckpointError(
            f"{name}: its text encoder has no cross-attention layers, so it is not ALBEF's text + fusion BERT"
        )
    return min(layers)


def _official_layout_name(state: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith("text_encoder.bert.") for k in state):
        return "pretrain"
    return "nlvr" if _paired_fusion(converted) else "finetuned"


def _paired_fusion(state: Mapping[str, torch.Tensor]) -> bool:
    """NLVR2's pairs: fusion layers 0 and 1 share their cross-attention key projection."""
    first = state.get("model.fusion_encoder.layer.0.crossattention.self.key.weight")
    second = state.get("model.fusion_encoder.layer.1.crossattention.self.key.weight")
    if first is None or second is None:
        return False
    if first.is_meta or second.is_meta:  # shapes only: NLVR2 doubles the fusion layers
        fusion = _count_layers(state, "model.fusion_encoder.layer.")
        return fusion == 2 * _count_layers(state, "model.text_encoder.layer.")
    return _same(first, second)


def _layout(state: Mapping[str, torch.Tensor], name: str, wrapped: bool) -> Layout:
    fusion = _count_layers(state, "model.fusion_encoder.layer.")
    return Layout(
        name=name,
        wrapped=wrapped,
        text_layers=_count_layers(state, "model.text_encoder.layer."),
        fusion_layers=fusion,
        fusion_streams=2 if fusion >= 2 and fusion % 2 == 0 and _paired_fusion(state) else 1,
        momentum=any(k.startswith("teacher.model.") for k in state),
        queues=any(k.startswith("queue.") for k in state),
        decoder_layers=_count_layers(state, "model.answer_decoder.layer."),
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


# --- architecture inference ----------------------------------------------------------------------------
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
        depth=_count_layers(state, "model.visual_encoder.blocks."), heads=heads_vision or max(1, width // 64),
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


# --- import ----------------------------------------------------------------------------------------------
@dataclass
class AlbefImport:
    """Everything :func:`import_albef` did: the layout found and the fate of every tensor, with reasons."""

    source: str
    layout: Layout
    task: str
    adapt: AdaptReport
    conversion: ImportReport | None
    names: dict[str, str]  # our key -> the file's key (loaded/dropped) or ALBEF's name (fresh/from_online)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # resized key -> (file shape, model shape)

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    @property
    def dropped(self) -> dict[str, str]:
        """The file's keys that were not loaded, under the file's own names, with the reason."""
        out = dict(self.conversion.dropped) if self.conversion else {}
        out.update({self.name(k): why for k, why in self.adapt.dropped.items()})
        return out

    @property
    def fresh(self) -> dict[str, str]:
        """Target keys left at initialisation, with the reason."""
        return dict(self.adapt.fresh)

    @property
    def initialised(self) -> dict[str, str]:
        """Everything not taken from the file as is, under ALBEF's names: fresh keys and momentum copies."""
        out = {self.name(k): why for k, why in self.adapt.fresh.items()}
        for key in self.adapt.from_online:
            out[self.name(key)] = "momentum copy made from the online weights (the file has none)"
        return out

    def summary(self) -> str:
        adapt = self.adapt
        return (
            f"layout {self.layout.name}, task {self.task}: {len(adapt.loaded)} tensors loaded ({len(adapt.resized)} "
            f"resized, {len(adapt.from_online)} momentum copies made from online weights), {len(adapt.fresh)} "
            f"initialised fresh, {len(self.dropped)} of the file's tensors dropped"
        )

    def format(self) -> str:
        """The report as text: layout, counts, resized, fresh and dropped keys grouped by reason."""
        lines = [f"ALBEF checkpoint import: {self.source}", f"  layout: {self.layout.name} ({self.layout.describe()})",
                 f"  task: {self.task} ({TASKS[self.task].description})", f"  {self.summary().split(': ', 1)[1]}"]
        if self.shapes:
            lines.append("  resized (position embeddings resampled bicubically to the model's grid):")
            lines += [f"    {self.name(k)}: {list(a)} -> {list(b)}" for k, (a, b) in self.shapes.items()]
        if self.adapt.from_online:
            lines.append(f"  momentum copies made from the online weights ({len(self.adapt.from_online)}): "
                         + ", ".join(_compact(self.name(k) for k in self.adapt.from_online)))
        lines += _grouped("initialised fresh", {self.name(k): why for k, why in self.adapt.fresh.items()})
        lines += _grouped("dropped (in the file, not used)", self.dropped)
        return "\n".join(lines)


def _compact(keys: Any, limit: int = 6) -> list[str]:
    """Key names with layer numbers collapsed (``blocks.*``); by top-level module when still too many."""
    keys = list(keys)
    patterns = Counter(re.sub(r"\.\d+(?=\.)", ".*", k) for k in keys)
    if len(patterns) > limit:
        patterns = Counter(k.split(".", 1)[0] + ".*" for k in keys)
    return [p if n == 1 else f"{p} ({n})" for p, n in sorted(patterns.items())]


def _grouped(title: str, entries: Mapping[str, str]) -> list[str]:
    if not entries:
        return [f"  {title}: none"]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for key, why in entries.items():
        by_reason[why].append(key)
    lines = [f"  {title} ({len(entries)}):"]
    for why, keys in by_reason.items():
        lines.append(f"    {why} ({len(keys)}): " + ", ".join(_compact(keys)))
    return lines


def import_albef(
    source: str | Path | Mapping[str, Any] | Source,
    target: nn.Module | str,
    arch: ALBEFConfig | Mapping[str, Any] | None = None,
    fresh_ok: Mapping[str, str] | None = None,
    keep: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], AlbefImport]:
    """Import a checkpoint in any official ALBEF layout (or this project's) onto a task's weights.

    ``source``: a path (``.pth``, ``.ckpt``, ``.safetensors``), a loaded payload or
    a state dict. ``target``: a module with ``.model`` (an ALBEF; e.g. a task
    LightningModule) or a task name (``pretrain``, ``retrieval``, ``vqa``, ``nlvr``,
    ``nlvr_pretrain``, ``ve``), built at ``arch`` (default: inferred from the file).
    ``fresh_ok``: target prefixes the file may lack, with the reason (a task name
    brings its own); ``keep``: target prefixes that keep their current values.

    Returns the target's complete state dict (file weights where they exist,
    position embeddings resampled, momentum copies made from online weights where
    the file has none, the target's own values for fresh/kept keys) and the report.
    Anything the report cannot explain raises :class:`CheckpointError`.
    """
    src = read_source(source)
    if isinstance(target, str):
        spec = TASKS.get(target)
        if spec is None:
            raise CheckpointError(f"unknown task {target!r}; choose one of {sorted(TASKS)}")
        fresh_ok = {**spec.fresh_ok, **(fresh_ok or {})}
        target = TaskWeights.for_task(target, arch if arch is not None else infer_arch(src), src.queue_size)
    config = target.model.config
    check_fits(src.layout, config, src.name)
    allowed = {**ALWAYS_FRESH_OK, **(OFFICIAL_FRESH_OK if src.official else {}), **(fresh_ok or {})}
    current = target.state_dict()
    kept = {k: why for k in current for prefix, why in (keep or {}).items() if k.startswith(prefix)}
    template = {k: v for k, v in current.items() if k not in kept}
    file_names = src.original_names()
    adapted, adapt = adapt_state_dict(src.state, template, allowed, names=file_names)
    adapt.fresh.update(kept)
    task = task_of(config)
    report = AlbefImport(src.name, src.layout, task, adapt, src.conversion,
                         _report_names(adapt, file_names, task, config.text.fusion_layer),
                         {k: (tuple(src.state[adapt.loaded[k]].shape), tuple(current[k].shape)) for k in adapt.resized})
    return {k: adapted.get(k, v) for k, v in current.items()}, report


def _report_names(adapt: AdaptReport, file_names: Mapping[str, str], task: str, fusion_layer: int) -> dict[str, str]:
    """Names to show: the file's key for loaded/dropped tensors, ALBEF's for fresh ones and copies."""
    if not file_names:
        return {}
    names = dict(file_names)
    for key, found in adapt.loaded.items():
        names[key] = file_names.get(found, found)
    for key in [*adapt.fresh, *adapt.from_online]:
        official = albef_names(key, task, fusion_layer)
        names[key] = official[0] if official else key
    return names


# --- this project's weights as safetensors ---------------------------------------------------------------
SAFETENSORS_FORMAT = "albef_struct"


def save_safetensors(weights: TaskWeights, path: str | Path, task: str) -> None:
    """Write ``weights`` as safetensors (tied tensors stored once) with the architecture in the metadata."""
    from safetensors.torch import save_model

    metadata = {
        "format": SAFETENSORS_FORMAT,
        "task": task,
        "arch": json.dumps(weights.model.config.without_weight_sources().to_dict()),
        "teacher": "1" if weights.teacher is not None else "0",
        "queue_size": str(weights.queue.size if weights.queue is not None else 0),
    }
    save_model(weights, str(path), metadata=metadata)


def _read_safetensors(path: Path) -> Source:
    """A ``.safetensors`` written by :func:`save_safetensors`, with its tied tensors restored."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    from albef_struct.models import ALBEFConfig

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises SafetensorError for damaged headers
        raise CheckpointError(_damaged_message(path, err)) from err
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} was not written by this project (no '{SAFETENSORS_FORMAT}' metadata)")
    arch = json.loads(metadata["arch"])
    weights = TaskWeights(ALBEFConfig.from_dict(arch), metadata["teacher"] == "1", int(metadata["queue_size"]) or None)
    try:
        load_model(weights, str(path), strict=True)
    except Exception as err:
        raise CheckpointError(_damaged_message(path, err)) from err
    state = weights.state_dict()
    return Source(str(path), state, _layout(state, "albef_struct", False), None, arch)
