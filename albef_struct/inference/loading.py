"""Reading any checkpoint (this project's ``.ckpt``/``.safetensors``, every official ALBEF layout) into the
model it holds: the architecture and heads come from the file, nothing starts fresh."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albef_struct.checkpoint.arch import infer_arch
from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.checkpoint.fit import AdaptReport, adapt_state_dict
from albef_struct.checkpoint.layout import Source, check_fits
from albef_struct.checkpoint.safetensors_io import read_safetensors
from albef_struct.checkpoint.source import source_from_payload
from albef_struct.models import ALBEF, ALBEFConfig
from albef_struct.tasks.vqa_answers import ANSWER_LIST_KEY

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """The model a file holds, what kind of model it is, and what the file says about its inputs."""

    model: ALBEF
    kind: str  # pretrain, retrieval, vqa, ve, nlvr or nlvr_pretrain: which heads it has
    source: str
    report: AdaptReport
    tokenizer_path: str | None = None  # the DataModule's, for a checkpoint written by ``albef-struct fit``
    max_tokens: int | None = None
    answer_list: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def heads_in_file(state: Mapping[str, torch.Tensor], source: Source) -> dict[str, Any]:
    """The head flags of :class:`ALBEFConfig` that the file's tensors show (for files that do not record them)."""
    has = lambda prefix: any(k.startswith(prefix) for k in state)  # noqa: E731
    classifier = state.get("model.cls_head.2.weight")
    return {
        "projections": has("model.vision_proj."), "itm_head": has("model.itm_head."),
        "mlm_head": has("model.mlm_head."), "answer_decoder_layers": source.layout.decoder_layers,
        "classifier_classes": int(classifier.shape[0]) if classifier is not None else 0,
        "ta_head": has("model.ta_head."), "private_heads": has("model.vision_private_proj."),
        "fusion_streams": source.layout.fusion_streams,
    }


def model_kind(config: ALBEFConfig) -> str:
    """A name for the heads a model has (used in messages and to choose the text cleaning)."""
    if config.answer_decoder_layers:
        return "vqa"
    if config.classifier_classes:
        return "nlvr" if config.fusion_streams > 1 else "ve"
    if config.ta_head:
        return "nlvr_pretrain"
    return "pretrain" if config.mlm_head else "retrieval"


def read_checkpoint(path: str | Path, arch: ALBEFConfig | Mapping[str, Any] | None = None) -> LoadedCheckpoint:
    """Load ``path`` into the :class:`ALBEF` it holds (weights exactly as stored, momentum copies dropped).

    ``arch`` overrides the architecture: needed for official files whose attention
    head counts differ from ``width / 64`` (head counts cannot be read from shapes). An
    :class:`ALBEFConfig` replaces the file's architecture whole; a mapping changes only the keys
    it names (nested: ``{"vision": {"heads": 12}}``), the rest (the heads above all) still comes
    from the file.
    """
    path = Path(path)
    payload: Mapping[str, Any] = {}
    if path.suffix == ".safetensors":
        source = read_safetensors(path)
    else:
        payload = load_checkpoint_file(path)
        source = source_from_payload(payload, str(path))
    if isinstance(arch, ALBEFConfig):
        config = arch
    else:
        if source.arch is not None:
            config = ALBEFConfig.from_dict(source.arch)
        else:
            config = replace(infer_arch(source), **heads_in_file(source.state, source))
        if arch is not None:
            config = override_arch(config, arch, str(path))
    config = config.without_weight_sources()
    check_fits(source.layout, config, source.name)
    holder = nn.Module()
    holder.model = ALBEF(config)
    template = holder.state_dict()
    state, report = adapt_state_dict(source.state, template, names=source.original_names())
    holder.load_state_dict({k: state.get(k, v) for k, v in template.items()}, strict=True)
    datamodule = payload.get("datamodule_hyper_parameters") or {}
    loaded = LoadedCheckpoint(
        model=holder.model.eval(), kind=model_kind(config), source=str(path), report=report,
        tokenizer_path=datamodule.get("tokenizer_path"), max_tokens=datamodule.get("max_tokens"),
        answer_list=list(payload[ANSWER_LIST_KEY]) if ANSWER_LIST_KEY in payload else None,
    )
    log.info("loaded %s (%s model): %s", path, loaded.kind, report.summary())
    return loaded


def override_arch(config: ALBEFConfig, changes: Mapping[str, Any], name: str) -> ALBEFConfig:
    """``config`` with the keys ``changes`` names replaced (one level deep into ``vision`` and ``text``)."""
    merged = config.to_dict()
    for key, value in changes.items():
        if key in ("vision", "text") and isinstance(value, Mapping):
            unknown = sorted(set(value) - set(merged[key]))
            if unknown:
                raise CheckpointError(f"arch override for {name}: unknown {key} key(s) {unknown}; "
                                      f"valid: {sorted(merged[key])}")
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return ALBEFConfig.from_dict(merged)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"arch override for {name}: {err}") from err
