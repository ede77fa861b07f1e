"""Checkpoint files written atomically, refused when their weights hold NaN/Inf, and loaded weights-only."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.errors import ProjectError
from albef_struct.lit.reliability.nonfinite import nonfinite_tensors
from albef_struct.lit.run_folder import DISK_FULL, disk_full_error

__all__ = [
    "AtomicCheckpointIO",
    "NonFiniteCheckpointError",
    "atomic_torch_save",
    "check_finite_checkpoint",
    "earlier_checkpoints",
    "install_atomic_checkpoint_io",
]


class NonFiniteCheckpointError(ProjectError, ValueError):
    """Refusal to write a checkpoint whose weights hold NaN or Inf."""


def _nonfinite_weights_message(bad: Mapping[str, str], step: Any, path: str | None) -> str:
    first = ", ".join(f"{name} ({kind})" for name, kind in itertools.islice(bad.items(), 3))
    more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
    target = f" {path}" if path else ""
    return (
        f"refusing to write the checkpoint{target} at step {step}: {first}{more} hold non-finite values, so "
        "training has diverged. The checkpoints already on disk are kept. Resume from the last good one with a "
        "lower learning rate or gradient clipping (trainer.gradient_clip_val), or add the NonFiniteGuard callback "
        "with on_nonfinite: skip to skip steps whose loss is NaN/Inf."
    )


def check_finite_checkpoint(checkpoint: Mapping[str, Any], path: str | None = None) -> None:
    """Raise :class:`NonFiniteCheckpointError` when the checkpoint's ``state_dict`` holds NaN or Inf."""
    bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
    if bad:
        raise NonFiniteCheckpointError(_nonfinite_weights_message(bad, checkpoint.get("global_step", "?"), path))


def _fsync_dir(directory: str) -> None:
    """Make a rename durable (a no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike, fsync: bool = True) -> None:
    """``torch.save`` to ``path + ".tmp"`` in the same folder, then ``os.replace`` onto ``path``.

    A process killed while saving leaves at most a partial ``.tmp`` file; ``path``
    is either the old file or the complete new one; a full disk removes the partial
    file and raises a :class:`~albef_struct.checkpoint.errors.CheckpointError` saying so (``os.replace`` within one
    folder is atomic on POSIX and Windows). With ``fsync`` the data and the rename
    also survive a power loss.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise disk_full_error(path, err) from err
        raise
    if fsync:
        _fsync_dir(directory)


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def earlier_checkpoints(path: Path) -> str:
    """The other ``.ckpt`` files beside ``path``, newest first, as a hint."""
    with contextlib.suppress(OSError):
        others = sorted(
            (p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if others:
            return " Other checkpoints in that folder, newest first: " + ", ".join(p.name for p in others[:5]) + "."
    return ""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``CheckpointIO`` with atomic writes, a non-finite-weights guard and weights-only loading.

    Lightning's own ``TorchCheckpointIO`` (2.6) serialises into memory and commits
    through an fsspec temp file in the *system* temp folder: when that folder is
    on another file system the final move is a copy, and a kill during the copy
    leaves a truncated ``last.ckpt``. This plugin writes beside the target and
    renames (see :func:`atomic_torch_save`); remote paths (``s3://`` ...) use
    Lightning's writer.

    Loading always uses ``torch.load(weights_only=True)`` (also when
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set), so a checkpoint carrying
    pickled objects that could run code is refused with an explanation, as are
    empty, truncated or corrupt files. Tensors are loaded on the CPU.

    Args:
        refuse_nonfinite: raise :class:`NonFiniteCheckpointError` instead of writing
            a checkpoint whose ``state_dict`` holds NaN or Inf.
        fsync: flush the file and the folder entry to disk before returning.
    """

    def __init__(self, refuse_nonfinite: bool = True, fsync: bool = True) -> None:
        super().__init__()
        self.refuse_nonfinite = refuse_nonfinite
        self.fsync = fsync

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got {storage_options!r}")
        if self.refuse_nonfinite:
            check_finite_checkpoint(checkpoint, str(path))
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path, self.fsync)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                f"{path}: loading with weights_only=False is switched off in this project (unpickling can run "
                "arbitrary code). Convert a trusted file once with `albef-struct convert IN OUT`, or extract its "
                "weights with torch.load(..., weights_only=False) yourself, and pass the new file."
            )
        if _is_remote(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        try:
            return load_checkpoint_file(path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}{earlier_checkpoints(Path(path))}") from err.__cause__


def install_atomic_checkpoint_io(trainer: pl.Trainer) -> bool:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless the user configured another plugin.

    Returns whether it was installed (for ALBEFCLI: call it on the new trainer).
    """
    current = trainer.strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False
