"""Kill -9 in the middle of an epoch, resume from last.ckpt: the same batches, losses and final state.

Each scenario runs the ``albef-struct fit`` CLI in subprocesses on tiny generated demo
data (64 pairs, batch 8: 8 steps per epoch, 10 steps in all): an uninterrupted run, a
run killed with SIGKILL after step 5 (last checkpoint: step 4, saved every 2 steps),
and a run resumed from that last.ckpt. Steps 5-10 of the resumed run must see the
same batches and give the same losses, and its final checkpoint must hold the same
weights, EMA teacher, queue, decomposable-loss state, optimizer and scheduler state
as the uninterrupted run. On one CPU thread with ``deterministic: true`` the runs are
bit-identical; losses are compared with rtol 1e-6 and the final tensors with
rtol 1e-6 / atol 1e-7 (allowing for different kernel choices only, not for drift).

Exact mid-epoch resumption needs pieces Lightning does not provide, and the config
below names none of them: the CLI adds ``RNGStateCheckpoint`` (dropout, MLM masking,
hard negatives, augmentations) and ``AtomicCheckpointIO`` by default, and every
DataModule's training loader is a ``ResumableDataLoader`` (the place in the epoch's
order).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from albef_struct.data import PretrainDataModule
from albef_struct.data_prep.demo_data import generate
from tests.reliability_helpers import TINY_ARCH


REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY, KILL_AFTER = 10, 2, 5
RUN_TIMEOUT = 240  # seconds per subprocess; a hang fails the test instead of blocking CI


def _die_while_saving(target_suffix: str):
    """A ``torch.save`` that writes half of the file whose name ends with ``target_suffix``, then SIGKILLs."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        name = str(getattr(f, "name", f))
        if not name.endswith(target_suffix) or not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    return save


class StepRecorder(Callback):
    """Writes each step's loss and sample indices as JSON lines; can SIGKILL the process at a step."""

    def __init__(self, out: str, kill_after: int = -1, die_saving_after: int = -1) -> None:
        self.out, self.kill_after, self.die_saving_after = out, kill_after, die_saving_after

    def on_train_start(self, trainer, pl_module) -> None:
        wiring = {"callbacks": sorted(type(cb).__name__ for cb in trainer.callbacks),
                  "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__,
                  "train_loader": type(trainer.train_dataloader).__name__}
        Path(self.out + ".wiring.json").write_text(json.dumps(wiring))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps completed, this one included
        record = {"step": step, "loss": float(outputs["loss"]), "index": batch["index"].tolist()}
        with open(self.out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # like `kill -9`: no cleanup, no checkpoint
        if step == self.die_saving_after:  # ModelCheckpoint runs after this callback, in this same hook
            torch.save = _die_while_saving("last.ckpt.tmp")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, image_size=32, n_train=64, n_val=8, n_test=8)
    return out


def write_config(run_dir: Path, demo_dir: Path, contrastive: str, recorder: dict[str, Any]) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": STEPS,
            "max_epochs": 2,  # as every shipped config sets it: the schedule must not build the loader early
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "deterministic": True,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run_dir / "ckpt"), "every_n_train_steps": SAVE_EVERY,
                               "save_last": True, "save_top_k": 0}},
                {"class_path": "tests.test_reliability_resume.StepRecorder", "init_args": recorder},
            ],
        },
        "model": {
            "class_path": "albef_struct.lit.PretrainModule",
            "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-3, "warmup_steps": 2, "cosine": "step"},
                          "queue_size": 64, "k_test": 4, "contrastive": contrastive},
        },
        "data": {
            "class_path": "albef_struct.data.PretrainDataModule",
            "init_args": {"train_files": [str(demo_dir / "pretrain.json")], "image_root": str(demo_dir),
                          "image_res": 32, "batch_size": 8, "num_workers": 0, "hflip": False},
        },
    }
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "albef_struct.cli", "fit", "--config", str(config), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


def read_steps(path: Path) -> dict[int, dict]:
    return {rec["step"]: rec for rec in map(json.loads, path.read_text().splitlines())}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Recursively equal structures; tensors within rtol 1e-6 / atol 1e-7."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def run_scenario(tmp_path: Path, demo_dir: Path, contrastive: str, kill: dict[str, int],
                 kill_after: int = KILL_AFTER) -> tuple[dict, dict, Path]:
    """Uninterrupted run, killed run, resumed run; returns (uninterrupted steps, resumed steps, killed run dir)."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir()
    killed_dir.mkdir()
    full = run_fit(write_config(full_dir, demo_dir, contrastive, {"out": str(full_dir / "steps.jsonl")}))
    assert full.returncode == 0, full.stderr[-3000:]
    wiring = json.loads((full_dir / "steps.jsonl.wiring.json").read_text())  # what the CLI added by itself
    assert wiring["checkpoint_io"] == "AtomicCheckpointIO" and wiring["train_loader"] == "ResumableDataLoader"
    assert {"RNGStateCheckpoint", "NonFiniteGuard", "SkippedRecordsReport", "ConfigValidator"} <= set(wiring["callbacks"])

    killed = run_fit(write_config(killed_dir, demo_dir, contrastive, {"out": str(killed_dir / "killed.jsonl"), **kill}))
    assert killed.returncode == -signal.SIGKILL, f"expected a SIGKILL, got rc {killed.returncode}: {killed.stderr[-2000:]}"
    assert load(killed_dir / "ckpt" / "last.ckpt")["global_step"] == kill_after - 1  # the last good one, loadable
    partial = killed_dir / "ckpt" / "last.ckpt.tmp"
    if "die_saving_after" in kill:  # the interrupted write: half a file beside the intact last.ckpt
        assert partial.is_file() and partial.stat().st_size > 0
        with pytest.raises(Exception):
            torch.load(partial, map_location="cpu", weights_only=True)
    first = read_steps(killed_dir / "killed.jsonl")
    for step in range(1, kill_after):
        assert first[step] == full_steps_of(full_dir)[step]  # same run up to the kill

    config = write_config(killed_dir, demo_dir, contrastive, {"out": str(killed_dir / "resumed.jsonl")})
    resumed = run_fit(config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's mid-epoch warning stays silent
    assert not partial.exists()  # the next save overwrote and renamed it
    return full_steps_of(full_dir), read_steps(killed_dir / "resumed.jsonl"), killed_dir


def full_steps_of(run_dir: Path) -> dict[int, dict]:
    return read_steps(run_dir / "steps.jsonl")


def check_same_as_uninterrupted(full_steps: dict, resumed_steps: dict, full_dir: Path, killed_dir: Path,
                                kill_after: int = KILL_AFTER) -> None:
    assert sorted(resumed_steps) == list(range(kill_after, STEPS + 1))
    for step, record in resumed_steps.items():
        assert record["index"] == full_steps[step]["index"], f"step {step} saw other samples"
        assert record["loss"] == pytest.approx(full_steps[step]["loss"], rel=1e-6), f"step {step}"
    full, resumed = load(full_dir / "ckpt" / "last.ckpt"), load(killed_dir / "ckpt" / "last.ckpt")
    assert full["global_step"] == resumed["global_step"] == STEPS
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same_tensors(full[key], resumed[key], key)


@pytest.mark.slow
def test_kill_while_writing_last_ckpt_keeps_the_previous_one_and_resume_matches(tmp_path, demo_dir):
    """ALBEF's ITC with the feature queue; the process dies half-way through writing last.ckpt at step 6."""
    full_steps, resumed_steps, killed_dir = run_scenario(
        tmp_path, demo_dir, "infonce_queue", {"die_saving_after": KILL_AFTER + 1}
    )
    check_same_as_uninterrupted(full_steps, resumed_steps, tmp_path / "full", killed_dir)
    state = load(killed_dir / "ckpt" / "last.ckpt")["state_dict"]
    assert int(state["queue.ptr"]) == (STEPS * 8) % 64


@pytest.mark.slow
def test_resume_from_the_checkpoint_of_an_epochs_last_step(tmp_path, demo_dir):
    """Killed after step 9: the last checkpoint is step 8, the last of epoch 0 (8 steps per epoch), taken
    before the next epoch's loader pass began. Starting that pass drew from the global RNG, so a resumed
    run was one draw off in every random choice from step 9 on; the loader now has its own generator."""
    full_steps, resumed_steps, killed_dir = run_scenario(tmp_path, demo_dir, "infonce_queue", {"kill_after": 9},
                                                         kill_after=9)
    check_same_as_uninterrupted(full_steps, resumed_steps, tmp_path / "full", killed_dir, kill_after=9)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run_decomposable(tmp_path, demo_dir):
    """The decomposable loss keeps a per-sample feature bank and visit counts: they must come back exactly."""
    full_steps, resumed_steps, killed_dir = run_scenario(tmp_path, demo_dir, "decomposable", {"kill_after": KILL_AFTER})
    check_same_as_uninterrupted(full_steps, resumed_steps, tmp_path / "full", killed_dir)
    state = load(killed_dir / "ckpt" / "last.ckpt")["state_dict"]
    assert bool((state["contrastive.visits"] > 0).all())  # every sample seen in epoch 0
    full_state = load(tmp_path / "full" / "ckpt" / "last.ckpt")["state_dict"]
    for name in ("contrastive.visits", "contrastive.bank_image", "contrastive.bank_text"):
        torch.testing.assert_close(state[name], full_state[name], rtol=1e-6, atol=1e-7, msg=name)


# --- the resumable training loader, in process ----------------------------------------------------------------
def train_loader(demo_dir: Path):
    data = PretrainDataModule(train_files=[str(demo_dir / "pretrain.json")], image_root=str(demo_dir), image_res=32,
                              batch_size=8, num_workers=0, hflip=False, seed=3)
    data.setup("fit")
    return data.train_dataloader()


def test_loader_state_resumes_mid_epoch_and_at_epoch_end(demo_dir):
    first = train_loader(demo_dir)
    epoch0 = [b["index"].tolist() for b in first]
    epoch1 = [b["index"].tolist() for b in first]
    assert epoch0 != epoch1 and len(epoch0) == 8

    interrupted = train_loader(demo_dir)
    iterator = iter(interrupted)
    seen = [next(iterator)["index"].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert seen == epoch0[:3] and state == {"epoch": 0, "batches": 3, "length": 8}
    resumed = train_loader(demo_dir)
    resumed.load_state_dict(state)
    assert [b["index"].tolist() for b in resumed] == epoch0[3:]  # the rest of epoch 0, nothing loaded twice
    assert [b["index"].tolist() for b in resumed] == epoch1

    at_end = train_loader(demo_dir)
    at_end.load_state_dict({"epoch": 0, "batches": 8, "length": 8})
    assert [b["index"].tolist() for b in at_end] == epoch1


def test_under_ddp_lightning_rebuilds_the_loader_and_a_mid_epoch_resume_warns(demo_dir, caplog):
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader

    from albef_struct.data import ResumableDataLoader

    loader = train_loader(demo_dir)
    sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=1, shuffle=False)
    rebuilt = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)  # what Lightning does for DDP
    assert isinstance(rebuilt, ResumableDataLoader) and not rebuilt.resumable
    assert len([b["index"] for b in rebuilt]) == 4  # rank 1's half
    with caplog.at_level("WARNING", logger="albef_struct.data.loaders"):
        rebuilt.load_state_dict({"epoch": 0, "batches": 2, "length": 4})
    assert "this epoch's data order starts again from its beginning" in caplog.text
    assert len(list(rebuilt)) == 4
