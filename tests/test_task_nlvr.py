"""NLVR2 and its text-assignment stage: pairing, tying, one ViT call, sampling, loading, overfit, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from albef_struct.cli import main
from albef_struct.data import NLVRDataModule
from albef_struct.lit import OptimConfig
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.models import TextConfig
from albef_struct.tasks.nlvr import (
    NLVRModule,
    TextAssignmentModule,
    nlvr_logits,
    sample_text_assignment,
)
from tests.conftest import REPO, tiny_config

# Two pretrained fusion layers (four paired layers), no dropout: deterministic forward passes.
TEXT = TextConfig(hidden=32, layers=3, fusion_layer=1, heads=2, intermediate=64, max_position=40,
                  hidden_dropout=0.0, attention_dropout=0.0)


def tiny(**overrides):
    return tiny_config(text=TEXT, **overrides)


def nlvr_batch(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image0": torch.randn(batch, 3, 32, 32, generator=gen),
        "image1": torch.randn(batch, 3, 32, 32, generator=gen),
        "input_ids": torch.randint(1000, 2000, (batch, 7), generator=gen),
        "attention_mask": torch.ones(batch, 7, dtype=torch.long),
        "label": torch.arange(batch) % 2,
    }


def pair_members(module: NLVRModule):
    layers = module.model.fusion_encoder.layer
    return [(layers[i].crossattention.self, layers[i + 1].crossattention.self) for i in range(0, len(layers), 2)]


# --- architecture --------------------------------------------------------------------------------------
def test_each_stage_builds_its_own_heads_whatever_the_arch_flags_say():
    nlvr = NLVRModule(arch=tiny())  # tiny() asks for projections, ITM and MLM: the task overrides them
    assert nlvr.model.config.fusion_streams == 2 and len(nlvr.model.fusion_encoder.layer) == 4
    assert nlvr.model.cls_head[-1].out_features == 2
    assert not any(hasattr(nlvr.model, h) for h in ("itm_head", "mlm_head", "vision_proj", "ta_head"))
    assert nlvr.hparams["arch"]["fusion_streams"] == 2 and nlvr.hparams["arch"]["itm_head"] is False
    assert hasattr(nlvr.teacher.model, "cls_head")
    ta = TextAssignmentModule(arch=tiny())
    assert ta.model.ta_head.out_features == 3 and hasattr(ta.model, "vision_proj")
    assert ta.teacher is None and not hasattr(ta.model, "mlm_head") and not hasattr(ta.model, "itm_head")


def test_cross_attention_key_value_stay_tied_after_an_optimizer_step():
    module = NLVRModule(arch=tiny())
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.classification_losses(nlvr_batch(), alpha=0.4)["loss"].backward()
    optimizer.step()
    for first, second in pair_members(module):
        assert first.key is second.key and first.value is second.value
        assert first.key.weight is second.key.weight and first.value.bias is second.value.bias
        assert first.query is not second.query and not torch.equal(first.query.weight, second.query.weight)
    state = module.state_dict()
    assert torch.equal(state["model.fusion_encoder.layer.0.crossattention.self.key.weight"],
                       state["model.fusion_encoder.layer.1.crossattention.self.key.weight"])
    teacher_layers = module.teacher.model.fusion_encoder.layer
    assert teacher_layers[0].crossattention.self.key is teacher_layers[1].crossattention.self.key  # the copy keeps the tie


def test_gradient_of_a_tied_projection_sums_both_pair_members():
    torch.manual_seed(0)
    tied = NLVRModule(arch=tiny(), distill=False)
    untied = copy.deepcopy(tied)
    for layer in untied.model.fusion_encoder.layer[1::2]:  # odd members get their own copies of the shared projections
        layer.crossattention.self.key = copy.deepcopy(layer.crossattention.self.key)
        layer.crossattention.self.value = copy.deepcopy(layer.crossattention.self.value)
    batch = nlvr_batch()
    for module in (tied, untied):
        inputs = (batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"])
        logits = nlvr_logits(module.model, *inputs)
        F.cross_entropy(logits, batch["label"]).backward()
    tied_layers, untied_layers = tied.model.fusion_encoder.layer, untied.model.fusion_encoder.layer
    for i in range(0, len(tied_layers), 2):
        for name in ("key", "value"):
            grad = getattr(tied_layers[i].crossattention.self, name).weight.grad
            even = getattr(untied_layers[i].crossattention.self, name).weight.grad
            odd = getattr(untied_layers[i + 1].crossattention.self, name).weight.grad
            assert odd.abs().sum() > 0 and even.abs().sum() > 0
            torch.testing.assert_close(grad, even + odd, atol=1e-7, rtol=1e-5)


def test_both_images_go_through_the_vit_in_one_call():
    module = NLVRModule(arch=tiny())
    calls: list[tuple[str, int]] = []
    for name, vit in (("online", module.model.visual_encoder), ("teacher", module.teacher.model.visual_encoder)):
        vit.register_forward_hook(lambda _m, args, _out, name=name: calls.append((name, args[0].shape[0])))
    module.classification_losses(nlvr_batch(batch=3), alpha=0.4)
    assert calls == [("online", 6), ("teacher", 6)]


def test_swapping_the_images_changes_the_logits():
    module = NLVRModule(arch=tiny()).eval()
    batch = nlvr_batch()
    with torch.no_grad():
        logits = module(batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"])
        swapped = module(batch["image1"], batch["image0"], batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 2)
    assert (logits - swapped).abs().max() > 1e-5


def test_teacher_moves_only_in_training_mode():
    module = NLVRModule(arch=tiny(), momentum=0.5)
    with torch.no_grad():
        module.model.cls_head[0].weight.add_(1.0)
    before = module.teacher.model.cls_head[0].weight.clone()
    module.eval().classification_losses(nlvr_batch(), alpha=0.4)
    assert torch.equal(module.teacher.model.cls_head[0].weight, before)
    module.train().classification_losses(nlvr_batch(), alpha=0.4)
    torch.testing.assert_close(module.teacher.model.cls_head[0].weight, before + 0.5)


# --- text-assignment sampling -----------------------------------------------------------------------------
def random_feats(n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_text_assignment_labels_are_a_third_each():
    pairs = sample_text_assignment(random_feats(3000), generator=torch.Generator().manual_seed(1))
    shares = torch.bincount(pairs.labels, minlength=3).float() / 3000
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_text_assignment_puts_the_true_image_in_the_labelled_slot_only():
    rows = torch.arange(600)
    pairs = sample_text_assignment(random_feats(600), generator=torch.Generator().manual_seed(2))
    first, second, labels = pairs
    assert torch.equal(first[labels == 0], rows[labels == 0])
    assert torch.equal(second[labels == 1], rows[labels == 1])
    similar = torch.where(labels == 0, second, first)  # the sampled partner of the true image
    assert not (similar[labels < 2] == rows[labels < 2]).any()
    neither = labels == 2
    assert not (first[neither] == rows[neither]).any() and not (second[neither] == rows[neither]).any()
    assert not (first[neither] == second[neither]).any()  # two distinct images, as ALBEF's draw without replacement


def test_text_assignment_draws_similar_images():
    # two tight clusters: softmax(sim / 0.07) puts almost all weight inside a caption's own cluster
    centres = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    cluster = torch.arange(40) % 2
    feats = F.normalize(centres[cluster] + 0.01 * random_feats(40, seed=4), dim=-1)
    first, second, labels = sample_text_assignment(feats, generator=torch.Generator().manual_seed(5))
    assert torch.equal(cluster[first], cluster) and torch.equal(cluster[second], cluster)


def test_text_assignment_skips_other_rows_of_the_same_image_and_is_reproducible():
    feats = random_feats(12)
    feats[1] = feats[0]  # rows 0 and 1 show the same image (e.g. two captions of it)
    image_ids = torch.tensor([0, 0] + list(range(1, 11)))
    for seed in range(20):
        first, second, labels = sample_text_assignment(feats, image_ids, torch.Generator().manual_seed(seed))
        assert not {int(first[0]), int(second[0])} & {1} and not {int(first[1]), int(second[1])} & {0}
    again = sample_text_assignment(feats, image_ids, torch.Generator().manual_seed(19))
    assert all(torch.equal(a, b) for a, b in zip(again, (first, second, labels)))


def test_text_assignment_needs_three_images():
    with pytest.raises(ValueError, match="at least 3"):
        sample_text_assignment(random_feats(2))


def test_text_assignment_loss_trains_the_head_and_encoders_but_not_the_projection():
    module = TextAssignmentModule(arch=tiny())
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(6, 3, 32, 32, generator=gen),
        "input_ids": torch.randint(1000, 2000, (6, 7), generator=gen),
        "attention_mask": torch.ones(6, 7, dtype=torch.long),
        "image_idx": torch.arange(6),
    }
    losses = module.text_assignment_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"]) and 0.0 <= float(losses["acc"]) <= 100.0
    losses["loss"].backward()
    assert module.model.ta_head.weight.grad.abs().sum() > 0
    assert module.model.visual_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert module.model.vision_proj.weight.grad is None  # ALBEF computes the similarities without gradient


# --- loading ------------------------------------------------------------------------------------------------
def lightning_checkpoint(module: torch.nn.Module, path: Path) -> str:
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.6"}, path)
    return str(path)


def test_ta_from_pretraining_then_nlvr_from_ta(tmp_path):
    torch.manual_seed(0)
    pretrain = PretrainModule(arch=tiny(), queue_size=8)
    ta = TextAssignmentModule(arch=tiny(), init_from=lightning_checkpoint(pretrain, tmp_path / "pre.ckpt"))
    pre_layers, ta_layers = pretrain.model.fusion_encoder.layer, ta.model.fusion_encoder.layer
    for j, layer in enumerate(ta_layers):  # pretrained fusion layer k seeds both members of pair k
        assert torch.equal(layer.attention.self.query.weight, pre_layers[j // 2].attention.self.query.weight)
        assert torch.equal(layer.crossattention.self.key.weight, pre_layers[j // 2].crossattention.self.key.weight)
    assert set(ta.init_report.fresh) == {"model.ta_head.weight", "model.ta_head.bias"}

    nlvr = NLVRModule(arch=tiny(), init_from=lightning_checkpoint(ta, tmp_path / "ta.ckpt"))
    online, teacher = nlvr.model.state_dict(), nlvr.teacher.model.state_dict()
    for key, value in ta.model.state_dict().items():
        if not key.startswith(("ta_head.", "vision_proj.", "text_proj.", "temp")):
            assert torch.equal(online[key], value), key
    assert all(torch.equal(teacher[k], online[k]) for k in teacher)  # the fix: teacher made from the loaded weights
    assert set(nlvr.init_report.fresh) == {f"{o}cls_head.{p}" for o in ("model.", "teacher.model.")
                                           for p in ("0.weight", "0.bias", "2.weight", "2.bias")}
    assert "model.ta_head.weight" in nlvr.init_report.dropped


def test_albef_momentum_before_load_keeps_the_initial_teacher(tmp_path):
    torch.manual_seed(0)
    source = lightning_checkpoint(TextAssignmentModule(arch=tiny()), tmp_path / "ta.ckpt")
    torch.manual_seed(1)
    initial = NLVRModule(arch=tiny())
    torch.manual_seed(1)
    albef = NLVRModule(arch=tiny(), init_from=source, albef_momentum_before_load=True)
    online, teacher = albef.model.state_dict(), albef.teacher.model.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in initial.model.state_dict().items())
    patch = "visual_encoder.patch_embed.proj.weight"
    assert not torch.equal(teacher[patch], online[patch])


# --- learning -------------------------------------------------------------------------------------------------
def test_a_tiny_model_overfits_six_nlvr_examples(demo_dir, tmp_path):
    records = json.loads((demo_dir / "nlvr_train.json").read_text())
    six = [r for r in records if r["label"] == "True"][:3] + [r for r in records if r["label"] == "False"][:3]
    subset = tmp_path / "six.json"
    subset.write_text(json.dumps(six))
    data = NLVRDataModule(val_file=str(subset), image_root=str(demo_dir), image_res=32, eval_batch_size=6,
                          num_workers=0)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))  # test transform: the same pixels every time
    assert batch["label"].tolist() == [1, 1, 1, 0, 0, 0]
    torch.manual_seed(0)
    module = NLVRModule(arch=tiny(), distill=False)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast and immune to a busy second core
    try:
        accuracy, step, loss = overfit(module, optimizer, batch)
    finally:
        torch.set_num_threads(threads)
    assert accuracy == 1.0, f"accuracy {accuracy} after {step + 1} steps (loss {loss:.3f})"


def overfit(module: NLVRModule, optimizer: torch.optim.Optimizer, batch: dict) -> tuple[float, int, float]:
    """Train on one batch until it is classified perfectly (at most 150 steps): accuracy, last step, loss."""
    accuracy = 0.0
    for step in range(150):
        module.train()
        loss = module.classification_losses(batch, alpha=0.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            module.eval()
            with torch.no_grad():
                logits = module(batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"])
            accuracy = float((logits.argmax(-1) == batch["label"]).float().mean())
            if accuracy == 1.0:
                break
    return accuracy, step, float(loss)


def test_a_frozen_image_encoder_stays_fixed_while_the_rest_trains(tmp_path):
    torch.manual_seed(0)
    module = NLVRModule(arch=tiny(), optim=OptimConfig(lr=1e-3, warmup_steps=0, freeze=["visual_encoder"]))
    before = copy.deepcopy(module.model.state_dict())
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader([nlvr_batch(seed=s) for s in range(3)], batch_size=None))
    after = module.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith("visual_encoder.") for name in changed)
    assert any(name.startswith("fusion_encoder.") for name in changed)
    assert any(name.startswith("text_encoder.") for name in changed) and any(n.startswith("cls_head.") for n in changed)
    assert not any(p.requires_grad for p in module.model.visual_encoder.parameters())


# --- configs and the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nlvr.yaml", "nlvr_pretrain.yaml", "demo/nlvr.yaml", "demo/nlvr_pretrain.yaml"])
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / name), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = "albef_struct.tasks.nlvr.TextAssignmentModule" if "pretrain" in name else "albef_struct.tasks.nlvr.NLVRModule"
    assert printed["model"]["class_path"] == expected


TINY_ARCH = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 3, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
    "embed_dim": 16,
}
TINY_OPTIM = {"lr": 1e-3, "warmup_steps": 1, "cosine": "step"}


def run_config(tmp_path: Path, name: str, model: dict, data: dict, monitor: str | None = None) -> Path:
    checkpoint = {"save_last": True, **({"monitor": monitor, "mode": "max"} if monitor else {})}
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 2, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
            "default_root_dir": str(tmp_path / name),
            "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": checkpoint}],
        },
        "model": model,
        "data": data,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_checkpoint(root: Path) -> Path:
    found = sorted(root.rglob("last.ckpt"))
    assert found, f"fit wrote no last.ckpt under {root}"
    return found[-1]


@pytest.mark.slow
def test_cli_text_assignment_then_nlvr_fit_and_test(tmp_path, demo_dir, capsys):
    common = {"image_root": str(demo_dir), "image_res": 32, "num_workers": 0, "hflip": False}
    ta_config = run_config(
        tmp_path, "ta",
        {"class_path": "albef_struct.tasks.nlvr.TextAssignmentModule", "init_args": {"arch": TINY_ARCH, "optim": TINY_OPTIM}},
        {"class_path": "albef_struct.data.PretrainDataModule",
         "init_args": {"train_files": [str(demo_dir / "pretrain.json")], "batch_size": 8, **common}},
    )
    assert main(["fit", "--config", str(ta_config)]) == 0
    ta_ckpt = last_checkpoint(tmp_path / "ta")
    assert torch.load(ta_ckpt, map_location="cpu", weights_only=True)["global_step"] == 2

    nlvr_config = run_config(
        tmp_path, "nlvr",
        {"class_path": "albef_struct.tasks.nlvr.NLVRModule",
         "init_args": {"arch": TINY_ARCH, "optim": TINY_OPTIM, "init_from": str(ta_ckpt)}},
        {"class_path": "albef_struct.data.NLVRDataModule",
         "init_args": {"train_file": str(demo_dir / "nlvr_train.json"), "val_file": str(demo_dir / "nlvr_dev.json"),
                       "test_file": str(demo_dir / "nlvr_test.json"), "batch_size": 8, "eval_batch_size": 8, **common}},
        monitor="val/acc",
    )
    assert main(["fit", "--config", str(nlvr_config)]) == 0
    nlvr_ckpt = last_checkpoint(tmp_path / "nlvr")
    payload = torch.load(nlvr_ckpt, map_location="cpu", weights_only=True)
    assert payload["global_step"] == 2
    best = [state for key, state in payload["callbacks"].items() if key.startswith("ModelCheckpoint")][0]
    assert 0.0 <= float(best["best_model_score"]) <= 100.0  # validation ran and logged val/acc
    assert torch.equal(payload["state_dict"]["model.fusion_encoder.layer.0.crossattention.self.key.weight"],
                       payload["state_dict"]["model.fusion_encoder.layer.1.crossattention.self.key.weight"])
    assert main(["test", "--config", str(nlvr_config), "--ckpt_path", str(nlvr_ckpt)]) == 0
    assert "nlvr_test" in capsys.readouterr().out
    result = json.loads(sorted((tmp_path / "nlvr").rglob("nlvr_test.json"))[-1].read_text())
    n_test = len(json.loads((demo_dir / "nlvr_test.json").read_text()))
    assert result["n_examples"] == n_test
    assert 0.0 <= result["metrics"]["acc"] <= 100.0 and 50.0 <= result["chance"]["acc"] <= 100.0
    assert 0.0 <= result["blind"]["acc"] <= 100.0  # the text-only classifier's accuracy on the same test split
