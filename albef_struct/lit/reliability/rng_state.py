"""Random states saved in every checkpoint and restored on resume (the RNGStateCheckpoint callback)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["RNGStateCheckpoint", "capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, CUDA) random states as plain values that load with ``weights_only``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where the same devices exist)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(Callback):
    """Saves the random states in every checkpoint and restores them when training resumes from it.

    Lightning does not: a resumed run otherwise draws other dropout masks, MLM
    masks, hard negatives and (with ``num_workers: 0``) augmentations than the
    uninterrupted run. The states are restored in ``on_train_start``, after the
    data loader's iterator exists and before the first batch is loaded. The saved
    state is rank 0's; with ``num_workers > 0`` each worker is re-seeded, so
    augmentations after a resume differ (the data order does not, see
    :class:`~albef_struct.data.loaders.ResumableDataLoader`).
    """

    def __init__(self) -> None:
        self._pending: Mapping[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            restore_rng_state(self._pending)
        self._pending = None
