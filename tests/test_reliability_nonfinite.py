"""NaN/Inf in a loss term or gradient: a clear error naming the term and step, or a truly skipped step.

Tiny PretrainModule runs on generated demo data, in process, on one CPU thread. NaN
is injected by a module whose ``pretrain_losses`` poisons one term at a chosen step,
or by a callback that writes NaN into a batch's pixels. ``ALBEFLitBase.log_losses``
shows every loss term to the guard (``observe_losses``); the last tests go through
the ``albef-struct`` CLI, which adds the guard by itself (``nonfinite.on_nonfinite``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from albef_struct.cli import main
from albef_struct.data import PretrainDataModule
from albef_struct.lit import PretrainModule
from albef_struct.lit.reliability import (
    NonFiniteCheckpointError,
    NonFiniteGuard,
    NonFiniteLossError,
)
from albef_struct.lit.reliability.nonfinite import finite_flags, nonfinite_tensors
from albef_struct.data_prep.demo_data import generate
from tests.reliability_helpers import TINY_ARCH, one_thread, tiny_config, write_config  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


class NaNAt(PretrainModule):
    """PretrainModule that turns loss term ``term`` into NaN (or Inf) at optimizer step ``step``."""

    def __init__(self, step: int = -1, term: str = "mlm", value: float = float("nan"), **kwargs: Any) -> None:
        super().__init__(arch=TINY_ARCH, optim={"lr": 1e-3, "warmup_steps": 1, "cosine": "step"}, queue_size=64,
                         k_test=4, **kwargs)
        self.poison_step, self.poison_term, self.poison_value = step, term, value

    def pretrain_losses(self, batch: dict, alpha: float) -> dict[str, torch.Tensor]:
        losses = super().pretrain_losses(batch, alpha)
        if self.global_step == self.poison_step:
            poisoned = losses[self.poison_term] * self.poison_value
            losses["loss"] = losses["loss"] - losses[self.poison_term] + poisoned
            losses[self.poison_term] = poisoned
        return losses


class NaNPixels(Callback):
    """Writes NaN into one pixel of the batch at a given optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["image"][0, 0, 0, 0] = float("nan")


class InfGradient(Callback):
    """Sets the temperature's gradient to Inf at a given step (the loss stays finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            pl_module.model.temp.grad.fill_(float("inf"))


class PoisonWeights(Callback):
    """Writes NaN into one weight after a given step (as a diverging update would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.vision_proj.weight[0, 0] = float("nan")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, image_size=32, n_train=64, n_val=8, n_test=8)
    return out


def datamodule(demo_dir: Path) -> PretrainDataModule:
    return PretrainDataModule(train_files=[str(demo_dir / "pretrain.json")], image_root=str(demo_dir), image_res=32,
                              batch_size=8, num_workers=0, hflip=False, seed=0)


def trainer(tmp_path: Path, max_steps: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   deterministic=True, default_root_dir=str(tmp_path), callbacks=callbacks)
    options.update(kwargs)
    return pl.Trainer(**options)


def fit(tmp_path: Path, demo_dir: Path, module: pl.LightningModule, max_steps: int, callbacks: list, **kwargs) -> pl.Trainer:
    pl.seed_everything(7)
    run = trainer(tmp_path, max_steps, callbacks, **kwargs)
    run.fit(module, datamodule=datamodule(demo_dir))
    return run


def build(**kwargs: Any) -> NaNAt:
    pl.seed_everything(3)
    return NaNAt(**kwargs)


def test_nan_term_stops_training_naming_the_term_and_step(tmp_path, demo_dir):
    module = build(step=3, term="mlm")
    with pytest.raises(NonFiniteLossError, match=r"train/mlm is NaN at step 3 \(epoch 0, batch 3\)") as info:
        fit(tmp_path, demo_dir, module, 6, [NonFiniteGuard()])
    assert "on_nonfinite: skip" in str(info.value) and "learning rate" in str(info.value)
    assert module.trainer.global_step == 3  # the poisoned step was not applied
    assert all(bool(p.isfinite().all()) for p in module.parameters())


def test_inf_term_is_named_as_inf(tmp_path, demo_dir):
    with pytest.raises(NonFiniteLossError, match=r"train/itm is Inf at step 1"):
        fit(tmp_path, demo_dir, build(step=1, term="itm", value=float("inf")), 3, [NonFiniteGuard()])


class NaNLossModule(pl.LightningModule):
    """A minimal LightningModule that never calls observe_losses: its loss is NaN at step ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.step = step

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch["image"].mean(dim=(2, 3))).pow(2).mean()
        return loss * float("nan") if self.global_step == self.step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_without_the_hook_gets_the_total_loss_named(tmp_path, demo_dir):
    with pytest.raises(NonFiniteLossError, match=r"train/loss is NaN at step 2"):
        fit(tmp_path, demo_dir, NaNLossModule(step=2), 4, [NonFiniteGuard()])


def test_nan_pixels_name_every_poisoned_term(tmp_path, demo_dir):
    """NaN in the input reaches ITC, ITM (its hard-negative sampling falls back to uniform) and MLM."""
    with pytest.raises(NonFiniteLossError, match=r"train/itc is NaN.*train/itm is NaN.*train/mlm is NaN.* at step 1"):
        fit(tmp_path, demo_dir, build(), 3, [NaNPixels(step=1), NonFiniteGuard()])


def test_inf_gradient_with_a_finite_loss_is_caught(tmp_path, demo_dir):
    with pytest.raises(NonFiniteLossError, match=r"the gradient of model\.temp is Inf at step 1"):
        fit(tmp_path, demo_dir, build(), 3, [InfGradient(step=1), NonFiniteGuard()])


def state_of(run: pl.Trainer) -> dict[str, Any]:
    """Every tensor a skipped step must leave alone: weights, teacher, queue, loss state, optimizer state."""
    module = run.lightning_module
    return {"module": {k: v.clone() for k, v in module.state_dict().items()},
            "optimizer": run.optimizers[0].state_dict()["state"]}


@pytest.mark.parametrize("contrastive", ["infonce_queue", "decomposable"])
def test_skip_leaves_weights_teacher_queue_and_optimizer_untouched(tmp_path, demo_dir, caplog, contrastive):
    clean = fit(tmp_path / "clean", demo_dir, build(contrastive=contrastive), 2, [])
    guard = NonFiniteGuard(on_nonfinite="skip")
    with caplog.at_level(logging.WARNING, logger="albef_struct.lit.reliability"):
        skipped = fit(tmp_path / "skip", demo_dir, build(step=2, term="mlm", contrastive=contrastive), 3, [guard])
    assert skipped.global_step == 3  # the step counter and the schedule advance; nothing else does
    torch.testing.assert_close(state_of(skipped), state_of(clean), rtol=0, atol=0)
    assert guard.skipped == [(2, "train/mlm is NaN")]
    assert float(skipped.callback_metrics["train/skipped_steps"]) == 1.0
    assert "skipped 1 optimizer step(s)" in caplog.text and "step 2: train/mlm is NaN" in caplog.text


def test_skipping_continues_training_after_the_bad_step(tmp_path, demo_dir):
    guard = NonFiniteGuard(on_nonfinite="skip")
    run = fit(tmp_path, demo_dir, build(step=1, term="itc"), 4, [guard])
    assert run.global_step == 4 and len(guard.skipped) == 1
    assert all(bool(p.isfinite().all()) for p in run.lightning_module.parameters())


def test_guard_refuses_to_checkpoint_nan_weights_and_keeps_the_last_good_file(tmp_path, demo_dir):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    refused = r"refusing to write the checkpoint.* step 2: model\.vision_proj\.weight \(NaN\)"
    with pytest.raises(NonFiniteCheckpointError, match=refused):
        fit(tmp_path, demo_dir, build(), 4, [PoisonWeights(step=2), NonFiniteGuard(), ckpt], enable_checkpointing=True)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 1
    assert all(bool(t.isfinite().all()) for t in last["state_dict"].values() if t.is_floating_point())


def test_guard_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="on_nonfinite must be 'error' or 'skip'"):
        NonFiniteGuard(on_nonfinite="ignore")


# --- through the CLI: the guard is there without being listed; YAML picks error or skip ------------------
def cli_config(tmp_path: Path, demo_dir: Path, on_nonfinite: str | None) -> Path:
    config = tiny_config(tmp_path, demo_dir, trainer={"callbacks": [
        {"class_path": "tests.test_reliability_nonfinite.NaNPixels", "init_args": {"step": 1}},
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0}},
    ]})
    if on_nonfinite is not None:
        config["nonfinite"] = {"on_nonfinite": on_nonfinite}
    return write_config(tmp_path / "config.yaml", config)


def test_cli_stops_on_nan_by_default_and_writes_no_checkpoint(tmp_path, demo_dir):
    with pytest.raises(NonFiniteLossError, match=r"train/itc is NaN.* at step 1 \(epoch 0, batch 1\)"):
        main(["fit", "--config", str(cli_config(tmp_path, demo_dir, None))])
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()


def test_cli_yaml_switches_to_skip_and_the_checkpoint_counts_the_skipped_step(tmp_path, demo_dir):
    assert main(["fit", "--config", str(cli_config(tmp_path, demo_dir, "skip"))]) == 0
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert all(bool(t.isfinite().all()) for t in last["state_dict"].values() if t.is_floating_point())
    (guard_state,) = [v for k, v in last["callbacks"].items() if k.startswith("NonFiniteGuard")]
    assert [step for step, _ in guard_state["skipped"]] == [1] and "train/itc is NaN" in guard_state["skipped"][0][1]


def test_cli_rejects_an_unknown_nonfinite_mode(tmp_path, demo_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(cli_config(tmp_path, demo_dir, "ignore"))])
    assert info.value.code != 0
    assert "on_nonfinite" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_finite_flags_are_exact_when_a_sum_overflows(dtype):
    """The quick check sums each tensor; a sum that overflows on finite values must still read finite."""
    big = torch.finfo(dtype).max
    tensors = [
        torch.full((8,), big, dtype=dtype),  # finite, but its sum is Inf
        torch.tensor([1.0, float("nan"), 2.0], dtype=dtype),
        torch.tensor([float("inf"), -float("inf")], dtype=dtype),  # the sum is NaN
        torch.tensor([-float("inf"), 0.0], dtype=dtype),
        torch.randn(5, 3).to(dtype),
    ]
    assert finite_flags(tensors) == [True, False, False, False, True]
    assert nonfinite_tensors({f"t{i}": t for i, t in enumerate(tensors)}) == {"t1": "NaN", "t2": "Inf", "t3": "Inf"}
