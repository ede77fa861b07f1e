"""This project's weights as safetensors: tied tensors stored once, the architecture in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.files import damaged_message
from albef_struct.checkpoint.layout import Source, detect_layout
from albef_struct.checkpoint.weights import TaskWeights

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


def read_safetensors(path: Path) -> Source:
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
        raise CheckpointError(damaged_message(path, err)) from err
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} was not written by this project (no '{SAFETENSORS_FORMAT}' metadata)")
    arch = json.loads(metadata["arch"])
    weights = TaskWeights(ALBEFConfig.from_dict(arch), metadata["teacher"] == "1", int(metadata["queue_size"]) or None)
    try:
        load_model(weights, str(path), strict=True)
    except Exception as err:
        raise CheckpointError(damaged_message(path, err)) from err
    state = weights.state_dict()
    return Source(str(path), state, detect_layout(state, "albef_struct", False), None, arch)
