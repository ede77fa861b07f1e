"""Reading a checkpoint (a path, a payload or a state dict) once, into this project's key layout."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.checkpoint.layout import Source, detect_layout, paired_fusion
from albef_struct.checkpoint.safetensors_io import read_safetensors

_CROSS_ATTENTION = re.compile(r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.crossattention\.")



def read_source(source: str | Path | Mapping[str, Any] | Source) -> Source:
    """Read a checkpoint path, payload or state dict and bring it to this project's key layout."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, Path)):
        if str(source).endswith(".safetensors"):
            return read_safetensors(Path(source))
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
    layout = detect_layout(converted, _official_layout_name(state, converted), wrapped)
    return Source(name, converted, layout, conversion)


def _project_source(payload: Mapping[str, Any], name: str) -> Source:
    state = dict(payload["state_dict"])
    if not any(k.startswith("model.") for k in state):
        raise CheckpointError(
            f"{name} is a Lightning checkpoint of another model (no 'model.*' weights); pass an ALBEF file or "
            "a checkpoint of this project"
        )
    arch = (payload.get("hyper_parameters") or {}).get("arch")
    return Source(name, state, detect_layout(state, "albef_struct", False), None, arch)


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
    return "nlvr" if paired_fusion(converted) else "finetuned"
