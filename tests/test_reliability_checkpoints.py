"""Checkpoint files under faults and from strangers: atomic writes, weights-only loading, wrong shapes.

The kill -9 during a real save (the process dies half-way through ``last.ckpt.tmp``)
is in ``test_reliability_resume.py``; here the same plugin is checked in process:
a write that fails half-way, non-finite weights, a pickle that would run code (via
``--ckpt_path`` and ``init_from``), truncated files, and checkpoints of another
model shape (the first mismatching key is named).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.cli import main
from albef_struct.data import PretrainDataModule
from albef_struct.lit import PretrainModule
from albef_struct.lit.reliability import AtomicCheckpointIO, NonFiniteCheckpointError
from albef_struct.data_prep.demo_data import generate
from tests.reliability_helpers import TINY_ARCH, one_thread, tiny_config, write_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def payload(step: int, value: float = 1.0) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((4, 4), value), "n": torch.tensor(step)}}


# --- atomic writes ---------------------------------------------------------------------------------------
def test_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint(payload(1), path)
    io.save_checkpoint(payload(2), path)
    assert io.load_checkpoint(path)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_save_failing_half_way_keeps_the_previous_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(payload(1), path)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):  # a dropped mount ... (a full disk: test_reliability_run_folder)
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="Input/output error"):
        io.save_checkpoint(payload(2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert not (tmp_path / "last.ckpt.tmp").exists()


def test_non_finite_weights_are_not_written(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(payload(1), path)
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to write the checkpoint .*last\.ckpt at step 2: w \(Inf\)"):
        io.save_checkpoint(payload(2, float("inf")), path)
    assert io.load_checkpoint(path)["global_step"] == 1


def test_truncated_checkpoint_is_refused_and_the_others_are_listed(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(payload(1), tmp_path / "step=1.ckpt")
    data = (tmp_path / "step=1.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*Other checkpoints in that folder.*step=1\.ckpt"):
        io.load_checkpoint(tmp_path / "last.ckpt")


# --- untrusted files ---------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this runs ``exec``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, image_size=32, n_train=64, n_val=8, n_test=8)
    return out


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    """A checkpoint with real (tiny-model) weights plus an object whose unpickling writes ``marker``."""
    marker = tmp_path / "pwned.txt"
    module = PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 0, "hyper_parameters": dict(module.hparams),
                "extra": RunsCode(marker)}, path)
    return path, marker


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ckpt_path", "init_from"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, demo_dir, malicious, how):
    path, marker = malicious
    config = write_config(tmp_path / "run" / "config.yaml", tiny_config(tmp_path / "run", demo_dir))
    args = ["--ckpt_path", str(path)] if how == "ckpt_path" else ["--model.init_args.init_from", str(path)]
    with pytest.raises(CheckpointError) as info:
        main(["fit", "--config", str(config), *args])
    message = str(info.value)
    assert message.startswith(str(path)) and "weights_only=True" in message and "arbitrary code" in message
    assert "exec" in message  # names what it refused
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is malicious: trusting it runs its code
    assert marker.read_text() == "code ran"


def test_loading_with_weights_only_false_is_switched_off(tmp_path):
    AtomicCheckpointIO().save_checkpoint(payload(1), tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="weights_only=False is switched off"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt", weights_only=False)


# --- wrong shapes --------------------------------------------------------------------------------------------
def first_mismatch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    return next(k for k in b if k in a and a[k].shape != b[k].shape)


@pytest.mark.slow
def test_a_checkpoint_of_another_shape_names_the_first_mismatching_key(tmp_path, demo_dir):
    source_dir = tmp_path / "wide"
    config = tiny_config(source_dir, demo_dir, trainer={"max_steps": 1}, model={"init_args": {"arch": {"embed_dim": 24}}})
    config["trainer"]["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(source_dir / "ckpt"), "save_last": True}}]
    assert main(["fit", "--config", str(write_config(source_dir / "config.yaml", config))]) == 0
    ckpt = source_dir / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    expected = first_mismatch(saved["state_dict"], PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4).state_dict())
    shape = r"\(\d+(, \d+)*\)"
    first = rf"^{re.escape(expected)} has shape {shape} in the checkpoint but {shape} in the model \(first mismatching key\)"

    # Module.load_from_checkpoint with other settings than the checkpoint's
    with pytest.raises(CheckpointError, match=first):
        PretrainModule.load_from_checkpoint(ckpt, arch=TINY_ARCH)

    # Trainer.fit(ckpt_path=...) with a model built otherwise: the differing settings are listed too
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    data = PretrainDataModule(train_files=[str(demo_dir / "pretrain.json")], image_root=str(demo_dir), image_res=32,
                              batch_size=8, num_workers=0)
    with pytest.raises(CheckpointError, match=first) as info:
        trainer.fit(PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4), datamodule=data, ckpt_path=ckpt)
    assert "Settings that differ: arch.embed_dim: 24 in the checkpoint, 16 here" in str(info.value)

    # --ckpt_path with a checkpoint that carries no hyper-parameters (the CLI would otherwise rebuild the model
    # from them), e.g. one written by other code
    bare = tmp_path / "bare.ckpt"
    torch.save({k: v for k, v in saved.items() if k != "hyper_parameters"}, bare)
    target = write_config(tmp_path / "narrow" / "config.yaml", tiny_config(tmp_path / "narrow", demo_dir))
    with pytest.raises(CheckpointError, match=first):
        main(["fit", "--config", str(target), "--ckpt_path", str(bare)])

    # init_from adapts what it can (e.g. position embeddings) and names the first key it cannot
    with pytest.raises(CheckpointError, match=r"\(first mismatching key\)") as init:
        main(["fit", "--config", str(target), "--model.init_args.init_from", str(ckpt)])
    assert expected.removeprefix("model.") in str(init.value)


@pytest.mark.slow
def test_a_truncated_ckpt_path_lists_the_other_checkpoints(tmp_path, demo_dir):
    """``--ckpt_path`` is read by the CLI before the trainer's checkpoint plugin: the hint must be there too."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    AtomicCheckpointIO().save_checkpoint(payload(1), folder / "step=1.ckpt")
    data = (folder / "step=1.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    config = write_config(tmp_path / "run" / "config.yaml", tiny_config(tmp_path / "run", demo_dir))
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*Other checkpoints in that folder.*step=1\.ckpt"):
        main(["fit", "--config", str(config), "--ckpt_path", str(folder / "last.ckpt")])


def test_queue_exists_only_for_the_queued_loss_and_old_queued_state_still_loads() -> None:
    """infonce/decomposable runs hold no queue; a checkpoint saved when they did resumes without it."""
    queued = PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4)
    in_batch = PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4, contrastive="infonce")
    assert queued.queue is not None and in_batch.queue is None
    assert not [k for k in in_batch.state_dict() if k.startswith("queue.")]
    old = {"state_dict": {**in_batch.state_dict(), **{k: v for k, v in queued.state_dict().items()
                                                      if k.startswith("queue.")}}}
    in_batch.on_load_checkpoint(old)
    in_batch.load_state_dict(old["state_dict"])  # strict: the stale queue keys are gone
    assert not [k for k in old["state_dict"] if k.startswith("queue.")]
