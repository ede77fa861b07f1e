"""Reading checkpoint files safely: ``torch.load(weights_only=True)``, with messages for refused or damaged files."""

from __future__ import annotations

import pickle
import re
import tempfile
from pathlib import Path

import torch

from albef_struct.checkpoint.errors import CheckpointError


def load_checkpoint_file(path: str | Path) -> dict:
    """Load a ``.pth``/``.ckpt`` with ``torch.load(weights_only=True)``; refusals and damage say what to do."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return load_sharded_checkpoint(path)
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


def is_sharded_checkpoint(path: Path) -> bool:
    """A folder written by ``FullyShardedStrategy`` (torch.distributed.checkpoint): shard files and ``.metadata``."""
    return path.is_dir() and (path / ".metadata").is_file()


def load_sharded_checkpoint(path: Path) -> dict:
    """A sharded checkpoint folder gathered into one Lightning checkpoint in memory, in one process.

    The shards go through ``dcp_to_torch_save`` into a temporary file (the whole model must fit in
    memory once); Lightning's ``meta.pt`` beside them adds the step, hyperparameters and callback states.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # not an Exception subclass
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        with tempfile.TemporaryDirectory() as scratch:
            whole = Path(scratch) / "whole.pt"
            dcp_to_torch_save(path, whole)
            payload = torch.load(whole, map_location="cpu", weights_only=True)
        meta = path / "meta.pt"
        if meta.is_file():
            payload.update(torch.load(meta, map_location="cpu", weights_only=True))
    except (Exception, CheckpointException) as err:  # noqa: BLE001 -- a missing or damaged shard file
        raise CheckpointError(
            f"could not gather the sharded checkpoint folder {path}: {type(err).__name__}: {_last_line(err)}. "
            "Every rank's shard file (__R_0.distcp) must be there next to .metadata: copy the whole folder"
        ) from err
    optimizers = sorted((k for k in payload if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if optimizers:
        payload["optimizer_states"] = [payload.pop(k) for k in optimizers]
    return payload


def _last_line(err: BaseException) -> str:
    """The end of a (possibly multi-line, remote-traceback) error message: what actually went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


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
    if is_sharded_checkpoint(Path(path)):
        path = Path(path) / "meta.pt"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a file this can peek into: Lightning reports it when loading
        return None
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    found = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return found if isinstance(found, str) else None
