"""Reading checkpoint files safely: ``torch.load(weights_only=True)``, with messages for refused or damaged files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from albef_struct.checkpoint.errors import CheckpointError


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
        raise CheckpointError(damaged_message(path, err)) from err
    except Exception as err:  # torch raises RuntimeError (zip), EOFError, KeyError (legacy format) ...
        raise CheckpointError(damaged_message(path, err)) from err


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


def damaged_message(path: Path, err: Exception) -> str:
    size = path.stat().st_size
    return (
        f"could not read {path} ({size:,} bytes) as a PyTorch checkpoint: {type(err).__name__}: {str(err)[:200]}. "
        "The file is truncated or corrupt (an interrupted download or copy), or not a PyTorch file at all: "
        "download it again and compare its size with the source's."
    )


def stored_class_path(path: str | Path) -> str | None:
    """The LightningModule class path a Lightning checkpoint records (``hyper_parameters._class_path``).

    Only the small pickle of the payload is read (tensors are memory-mapped); None
    when the file records none or cannot be read this way.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a file this can peek into: Lightning reports it when loading
        return None
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    found = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return found if isinstance(found, str) else None
