"""Loading weights into a LightningModule from this project's or ALBEF's checkpoint files."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from albef_struct.checkpoint import (
    AdaptReport,
    CheckpointError,
    adapt_state_dict,
    convert_albef_state_dict,
    load_checkpoint_file,
)

log = logging.getLogger(__name__)

# Module state that may start fresh whatever the source (the image-id queue is not in ALBEF's files).
ALWAYS_FRESH_OK = {"queue.idx": "ALBEF's pretraining checkpoints carry no image-id queue; it starts empty (-100)"}


def read_state_dict(path: str | Path, fusion_layer: int) -> dict[str, torch.Tensor]:
    """Weights of a Lightning checkpoint of this project, or of an official ALBEF file in any layout."""
    payload = load_checkpoint_file(path)
    if isinstance(payload, Mapping) and "state_dict" in payload and "pytorch-lightning_version" in payload:
        return dict(payload["state_dict"])
    state = payload.get("model", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not any(str(k).startswith("text_encoder.") for k in state):
        raise CheckpointError(
            f"{path} is neither a checkpoint of this project (no 'state_dict') nor an ALBEF checkpoint "
            "(no 'text_encoder.*' keys); check that the file belongs to this model"
        )
    converted, report = convert_albef_state_dict(state, fusion_layer)
    for key, reason in report.dropped.items():
        log.info("dropped %s: %s", key, reason)
    return converted


def load_weights(
    module: nn.Module,
    path: str | Path,
    fresh_ok: Mapping[str, str] | None = None,
    keep: Mapping[str, str] | None = None,
) -> AdaptReport:
    """Load ``path`` into ``module`` (which has ``.model``, an ALBEF); every key must be explained.

    ``fresh_ok`` names target prefixes the file may lack; ``keep`` names target
    prefixes that keep their current values whatever the file holds.
    """
    fusion_layer = module.model.config.text.fusion_layer  # type: ignore[attr-defined]
    state = read_state_dict(path, fusion_layer)
    allowed = {**ALWAYS_FRESH_OK, **(fresh_ok or {})}
    keep = dict(keep or {})
    kept = {k: why for k in module.state_dict() for prefix, why in keep.items() if k.startswith(prefix)}
    target = {k: v for k, v in module.state_dict().items() if k not in kept}
    adapted, report = adapt_state_dict(state, target, allowed)
    report.fresh.update(kept)
    result = module.load_state_dict(adapted, strict=False)
    unexplained = set(result.missing_keys) - set(report.fresh)
    if unexplained or result.unexpected_keys:  # adapt_state_dict guarantees neither; keep the promise loud
        raise CheckpointError(f"{path}: unexplained keys {sorted(unexplained)[:5]} {result.unexpected_keys[:5]}")
    log.info("loaded %s: %s", path, report.summary())
    for key, reason in report.fresh.items():
        log.info("fresh %s: %s", key, reason)
    return report


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
