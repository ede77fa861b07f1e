"""Loading weights into a LightningModule from this project's or ALBEF's checkpoint files."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.checkpoint.fit import AdaptReport
from albef_struct.checkpoint.importer import ALWAYS_FRESH_OK, AlbefImport, import_albef
from albef_struct.checkpoint.safetensors_io import save_safetensors
from albef_struct.checkpoint.source import read_source
from albef_struct.checkpoint.weights import TaskWeights, task_spec

if TYPE_CHECKING:
    from albef_struct.models import ALBEF

log = logging.getLogger(__name__)

__all__ = [
    "ALWAYS_FRESH_OK",
    "load_albef",
    "load_model",
    "load_weights",
    "read_state_dict",
    "save_lightning_checkpoint",
    "save_safetensors",
]


def read_state_dict(path: str | Path, fusion_layer: int) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint of this project (``.ckpt``, ``.safetensors``) or of an official ALBEF file.

    Official files in any layout come back in this project's keys; their fusion
    layer (the first layer with cross-attention) must equal ``fusion_layer``.
    """
    source = read_source(path)
    if source.official and source.layout.text_layers != fusion_layer:
        raise CheckpointError(
            f"{path}: the checkpoint's first cross-attention layer is {source.layout.text_layers}, the model's "
            f"text.fusion_layer is {fusion_layer}; set model.init_args.arch.text.fusion_layer to the checkpoint's"
        )
    for key, reason in (source.conversion.dropped.items() if source.conversion else ()):
        log.info("dropped %s: %s", key, reason)
    return source.state


def load_albef(
    module: nn.Module,
    source: str | Path | Mapping[str, Any],
    fresh_ok: Mapping[str, str] | None = None,
    keep: Mapping[str, str] | None = None,
) -> AlbefImport:
    """Import ``source`` (any ALBEF layout or this project's) into ``module`` strictly; returns the report."""
    state, report = import_albef(source, module, fresh_ok=fresh_ok, keep=keep)
    module.load_state_dict(state, strict=True)
    log.info("%s", report.format())
    return report


def load_weights(
    module: nn.Module,
    path: str | Path,
    fresh_ok: Mapping[str, str] | None = None,
    keep: Mapping[str, str] | None = None,
) -> AdaptReport:
    """Load ``path`` into ``module`` (which has ``.model``, an ALBEF); every key must be explained.

    ``fresh_ok`` names target prefixes the file may lack; ``keep`` names target
    prefixes that keep their current values whatever the file holds. Returns the
    fitting report in this project's key names (see :func:`load_albef` for the
    full import report).
    """
    return load_albef(module, path, fresh_ok, keep).adapt


def load_model(path: str | Path) -> "ALBEF":
    """The online :class:`ALBEF` of a checkpoint of this project, architecture from its hyper-parameters."""
    from albef_struct.models import ALBEF, ALBEFConfig

    payload = load_checkpoint_file(path)
    arch = payload.get("hyper_parameters", {}).get("arch") if isinstance(payload, Mapping) else None
    if arch is None or "state_dict" not in payload:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this project (no hyper_parameters.arch / state_dict); "
            "to analyse an official ALBEF file, convert it first with `albef-struct convert`"
        )
    model = ALBEF(ALBEFConfig.from_dict(arch))
    state = {k[len("model.") :]: v for k, v in payload["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


def save_lightning_checkpoint(
    weights: TaskWeights, task: str, path: str | Path, extra: Mapping[str, Any] | None = None
) -> None:
    """Write ``weights`` as a Lightning checkpoint of ``task``'s module (plain values: loads with weights_only).

    ``hyper_parameters`` holds what the task module's constructor needs to rebuild
    the same weights (``arch`` as a dict, ``queue_size`` where there is a queue),
    so the file works with :func:`load_model`, ``init_from``, ``--ckpt_path`` and
    ``Module.load_from_checkpoint``.
    """
    import pytorch_lightning as pl

    hparams: dict[str, Any] = {"arch": weights.model.config.to_dict()}
    if weights.queue is not None:
        hparams["queue_size"] = weights.queue.size
    payload = {
        "state_dict": weights.state_dict(),
        "hyper_parameters": hparams,
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
        "albef_struct": {"task": task, "module": task_spec(task).class_path, **dict(extra or {})},
    }
    torch.save(payload, path)

