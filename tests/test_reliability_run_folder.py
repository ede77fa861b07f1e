"""The run folder: unusable folders refused before the first step, one run per folder, a full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.cli import main
from albef_struct.lit.reliability import atomic_torch_save
from albef_struct.lit.run_folder import LOCK_NAME, FolderLock, check_writable
from albef_struct.lit.validation import ConfigError
from tests.test_cli import write_config

REPO = Path(__file__).resolve().parents[1]


def config_writing_to(tmp_path: Path, demo_dir: Path, folder: Path, **trainer) -> Path:
    config = write_config(tmp_path, demo_dir)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                     "init_args": {"dirpath": str(folder), "save_last": True}}]
    data["trainer"].update(trainer)
    config.write_text(yaml.safe_dump(data))
    return config


class NoStep(Exception):
    pass


@pytest.mark.slow
def test_a_folder_that_cannot_be_created_is_refused_before_the_first_step(tmp_path, demo_dir, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = config_writing_to(tmp_path, demo_dir, blocker / "ckpt")

    def no_training_step(*args, **kwargs):
        raise NoStep("a training step ran")

    monkeypatch.setattr("albef_struct.lit.PretrainModule.training_step", no_training_step)
    with pytest.raises(ConfigError, match=r"a_file/ckpt cannot be used.*Nothing was trained"):
        main(["fit", "--config", str(config)])


def test_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    """(Simulated: the tests run as root, which ignores permission bits.)"""
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.NamedTemporaryFile", read_only)
    with pytest.raises(ConfigError, match=r"cannot be used: Permission denied \(PermissionError\)"):
        check_writable(tmp_path / "ckpt")


def test_the_lock_refuses_a_second_holder_and_names_it(tmp_path):
    first = FolderLock(tmp_path)
    first.acquire()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    script = ("from pathlib import Path; from albef_struct.lit.run_folder import FolderLock; "
              f"FolderLock(Path({str(tmp_path)!r})).acquire()")
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and f"another run (pid {os.getpid()})" in other.stderr
    first.release()
    again = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    script = ("import time; from pathlib import Path; from albef_struct.lit.run_folder import FolderLock; "
              f"lock = FolderLock(Path({str(tmp_path)!r})); lock.acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead process's lock
    lock.release()


@pytest.mark.slow
def test_a_second_fit_into_a_live_run_folder_is_refused(tmp_path, demo_dir):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    live = FolderLock(folder)  # as a running fit holds it
    live.acquire()
    try:
        config = config_writing_to(tmp_path, demo_dir, folder)
        with pytest.raises(ConfigError, match="being written by another run"):
            main(["fit", "--config", str(config)])
        assert not (folder / "last.ckpt").exists()
    finally:
        live.release()


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, target)

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"last.ckpt: the disk is full .*previous last.ckpt is intact.*--ckpt_path last"):
        atomic_torch_save({"step": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"].item() == 1
    assert not (tmp_path / "last.ckpt.tmp").exists()
