"""Loading weights into a LightningModule from this project's or ALBEF's checkpoint files."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from albef_struct.checkpoint import CheckpointError, convert_pretrain_state_dict, load_checkpoint_file

log = logging.getLogger(__name__)

# Module state that legitimately starts fresh when the source file does not carry it.
FRESH_OK = {"queue.idx": "ALBEF's pretraining checkpoints have no image-id queue; it starts empty (-100)"}


def read_state_dict(path: str | Path, fusion_layer: int) -> dict[str, torch.Tensor]:
    """Weights of a Lightning checkpoint of this project, or an official ALBEF pretraining file."""
    payload = load_checkpoint_file(path)
    if isinstance(payload, Mapping) and "state_dict" in payload and "pytorch-lightning_version" in payload:
        return dict(payload["state_dict"])
    state = payload.get("model", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not any(k.startswith("text_encoder.") for k in state):
        raise CheckpointError(
            f"{path} is neither a checkpoint of this project (no 'state_dict') nor an ALBEF checkpoint "
            "(no 'text_encoder.*' keys); check that the file belongs to this model"
        )
    converted, report = convert_pretrain_state_dict(state, fusion_layer)
    for key, reason in report.dropped.items():
        log.info("dropped %s: %s", key, reason)
    return converted


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``module``; every missing or unexpected key must be explained."""
    fusion_layer = module.model.config.text.fusion_layer  # type: ignore[attr-defined]
    state = read_state_dict(path, fusion_layer)
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        first = mismatched[0]
        raise CheckpointError(
            f"{path}: {first} has shape {tuple(state[first].shape)} but the model expects "
            f"{tuple(own[first].shape)} ({len(mismatched)} mismatching key(s)); the checkpoint was made for "
            "another architecture: set the arch sizes to the checkpoint's"
        )
    result = module.load_state_dict(state, strict=False)
    unexplained_missing = [k for k in result.missing_keys if k not in FRESH_OK]
    if unexplained_missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not fit this model: missing {unexplained_missing[:5]}"
            f"{' ...' if len(unexplained_missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{' ...' if len(result.unexpected_keys) > 5 else ''}"
        )
    for key in result.missing_keys:
        log.info("%s: %s", key, FRESH_OK[key])
