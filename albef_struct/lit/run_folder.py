"""The run's checkpoint folder: usable before the first step, and written by one run at a time.

:class:`RunFolderGuard` (added to every ``albef-struct fit`` by the CLI) checks each
checkpoint folder when fitting starts: it must exist or be creatable, and a file must be
writable in it, so a read-only or misspelled output folder fails at once rather than at
the first save, hours in. It then takes an exclusive lock on ``.albef-struct.lock`` in
that folder for the life of the run: a second ``fit`` into a folder that a live run is
writing is refused, naming the other process. The lock is an ``flock``, released by the
operating system when its process ends, so a run killed with ``kill -9`` does not leave
a stale lock behind and ``--ckpt_path last`` resumes at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.lit.validation import ConfigError

try:  # POSIX; elsewhere the folder is checked but not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".albef-struct.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    """The local folders the run's ``ModelCheckpoint`` callbacks write to (resolved by their ``setup``)."""
    folders = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and "://" not in str(callback.dirpath):
            folder = Path(callback.dirpath)
            if folder not in folders:
                folders.append(folder)
    return folders


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a file in it; :class:`ConfigError` naming the folder if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"checkpoint folder {folder} cannot be used: {err.strerror or err} ({type(err).__name__}). Nothing was "
            "trained. Choose a writable folder (ModelCheckpoint's dirpath, or trainer.default_root_dir)."
        ) from err


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``folder/.albef-struct.lock`` holding the owner's pid."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.handle: Any = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise ConfigError(
                    f"{self.path.parent} is being written by another run (pid {owner}); two runs in one folder "
                    "would overwrite each other's last.ckpt. Wait for it to end, or give this run another "
                    "folder (trainer.default_root_dir or ModelCheckpoint's dirpath)."
                ) from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                if fcntl is not None:
                    fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
                self.handle.close()
            self.handle = None


class RunFolderGuard(Callback):
    """Checks and locks the checkpoint folders when fitting starts (global rank 0; see the module docstring)."""

    def __init__(self) -> None:
        self.locks: list[FolderLock] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for folder in checkpoint_folders(trainer):
            check_writable(folder)
            lock = FolderLock(folder)
            lock.acquire()
            self.locks.append(lock)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []


def disk_full_error(path: str, err: OSError) -> CheckpointError:
    """The error for a checkpoint write that ran out of space (the previous file is untouched)."""
    previous = f"the previous {os.path.basename(path)} is intact" if os.path.exists(path) else "nothing was overwritten"
    return CheckpointError(
        f"{path}: the disk is full ({err.strerror or err}) while writing this checkpoint; {previous} and the partial "
        "file was removed. Free space (or point the checkpoints elsewhere), then resume with --ckpt_path last."
    )
