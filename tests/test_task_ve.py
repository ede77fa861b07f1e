"""SNLI-VE: distilled cross-entropy, heads and checkpoint import, training step, evaluation, CLI."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from albef_struct.cli import main
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.models import TextConfig
from albef_struct.losses import distilled_cross_entropy
from albef_struct.tasks.ve import VE_LABELS, VEModule, ve_logits
from tests.conftest import REPO, tiny_config

CONFIGS = [REPO / "configs" / "ve.yaml", REPO / "configs" / "demo" / "ve.yaml"]
NO_DROPOUT = TextConfig(hidden=32, layers=2, fusion_layer=1, heads=2, intermediate=64, max_position=40,
                        hidden_dropout=0.0, attention_dropout=0.0)


def make_batch(labels: list[int], seed: int = 0, length: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (len(labels), length), generator=gen)
    ids[:, 0] = 101
    return {"image": torch.randn(len(labels), 3, 32, 32, generator=gen), "input_ids": ids,
            "attention_mask": torch.ones_like(ids), "label": torch.tensor(labels), "index": torch.arange(len(labels))}


# --- the loss --------------------------------------------------------------------------------------------
def test_distilled_cross_entropy_is_albefs_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=gen, requires_grad=True)
    teacher = torch.randn(5, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 2, 1])
    ce = F.cross_entropy(logits, labels)
    soft = -(F.log_softmax(logits, dim=1) * F.softmax(teacher, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(distilled_cross_entropy(logits, labels, teacher, 0.4), 0.6 * ce + 0.4 * soft)
    torch.testing.assert_close(distilled_cross_entropy(logits, labels), ce)
    torch.testing.assert_close(distilled_cross_entropy(logits, labels, teacher, 0.0), ce)
    torch.testing.assert_close(distilled_cross_entropy(logits, labels, teacher, 1.0), soft)
    teacher.requires_grad_(True)
    distilled_cross_entropy(logits, labels, teacher, 0.4).backward()
    assert logits.grad is not None and teacher.grad is None  # no gradient into the teacher


# --- construction and checkpoint import -------------------------------------------------------------
def test_head_flags_are_set_by_the_task():
    module = VEModule(arch=tiny_config(mlm_head=True))
    config = module.model.config
    assert config.classifier_classes == 3 and not (config.projections or config.itm_head or config.mlm_head)
    assert module.model.cls_head[-1].out_features == 3
    assert torch.equal(module.teacher.model.cls_head[0].weight, module.model.cls_head[0].weight)
    assert VEModule(arch=tiny_config(), distill=False).teacher is None
    assert module.alpha_warmup is False and module.distill is True  # ALBEF's VE.yaml defaults


def test_pretraining_checkpoint_loads_with_a_fresh_classifier(tmp_path):
    torch.manual_seed(0)
    source = PretrainModule(arch=tiny_config(), queue_size=16).state_dict()
    torch.save({"state_dict": source, "pytorch-lightning_version": pl.__version__}, tmp_path / "pretrain.ckpt")
    module = VEModule(arch=tiny_config(), init_from=str(tmp_path / "pretrain.ckpt"))
    report = module.init_report
    assert set(report.fresh) == {f"{owner}cls_head.{i}.{p}" for owner in ("model.", "teacher.model.")
                                 for i in (0, 2) for p in ("weight", "bias")}
    dropped = set(report.dropped.values())
    assert {"the MLM head is only used in pretraining", "this task has no image-text matching head",
            "this task uses no contrastive projections", "this task keeps no feature queue"} <= dropped
    ours = module.state_dict()
    for key in ("model.fusion_encoder.layer.0.crossattention.self.query.weight",
                "teacher.model.visual_encoder.pos_embed"):
        assert torch.equal(ours[key], source[key]), key
    assert torch.equal(module.teacher.model.cls_head[2].weight, module.model.cls_head[2].weight)


# --- training ---------------------------------------------------------------------------------------------
def test_training_loss_distils_from_the_teacher_updated_first():
    torch.manual_seed(0)
    module = VEModule(arch=tiny_config(text=NO_DROPOUT), momentum=0.5)  # no dropout: the loss can be recomputed
    with torch.no_grad():
        module.model.cls_head[2].bias.add_(1.0)  # online and teacher now differ
    expected_head = 0.5 * module.teacher.model.cls_head[2].bias + 0.5 * module.model.cls_head[2].bias
    batch = make_batch([0, 1, 2, 1])
    module.train()
    losses = module.classification_losses(batch, alpha=0.4)
    torch.testing.assert_close(module.teacher.model.cls_head[2].bias, expected_head)
    with torch.no_grad():
        logits = ve_logits(module.model, batch["image"], batch["input_ids"], batch["attention_mask"])
        teacher = ve_logits(module.teacher.model, batch["image"], batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(losses["loss"], distilled_cross_entropy(logits, batch["label"], teacher, 0.4))
    losses["loss"].backward()
    assert module.model.cls_head[0].weight.grad is not None
    assert module.current_alpha() == 0.4  # no warm-up by default: full alpha from step 0


def test_tiny_model_overfits_six_examples():
    torch.manual_seed(0)
    module = VEModule(arch=tiny_config(text=NO_DROPOUT), momentum=0.9)
    batch = make_batch([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.0)
    first_loss, accuracy = None, 0.0
    for step in range(100):
        module.train()
        loss = module.classification_losses(batch, alpha=0.4)["loss"]
        first_loss = first_loss if first_loss is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.eval()
        with torch.no_grad():
            predicted = module(batch["image"], batch["input_ids"], batch["attention_mask"]).argmax(dim=-1)
        accuracy = float((predicted == batch["label"]).float().mean())
        if accuracy == 1.0:
            break
    assert accuracy == 1.0, f"accuracy {accuracy} after {step + 1} steps"
    assert float(loss) < first_loss


# --- evaluation ----------------------------------------------------------------------------------------
def test_validation_and_test_accuracy_with_majority_chance(tmp_path):
    torch.manual_seed(0)
    module = VEModule(arch=tiny_config())
    batches = [make_batch([2, 2, 0], seed=1), make_batch([1, 2], seed=2)]
    module.eval()
    with torch.no_grad():
        predicted = torch.cat([module(b["image"], b["input_ids"], b["attention_mask"]).argmax(-1) for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    expected = 100.0 * float((predicted == labels).float().mean())

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(expected)
    trainer.test(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert float(trainer.callback_metrics["test/acc"]) == pytest.approx(expected)
    result = json.loads(next(tmp_path.rglob("ve_test.json")).read_text())
    assert result["metrics"]["acc"] == pytest.approx(expected)
    assert result["chance"]["acc"] == pytest.approx(60.0)  # 3 of 5 labels are entailment
    assert result["label_counts"] == {"contradiction": 1, "neutral": 1, "entailment": 3}
    confusion = torch.zeros(3, 3, dtype=torch.long)
    for true, guess in zip(labels.tolist(), predicted.tolist()):
        confusion[true, guess] += 1
    assert result["confusion"]["counts"] == confusion.tolist()
    for i, name in enumerate(VE_LABELS):
        assert result["per_class_acc"][f"acc_{name}"] == pytest.approx(100.0 * float(confusion[i, i]) / float(confusion[i].sum()))
    image_decided = labels != VE_LABELS.index("neutral")  # entailment and contradiction examples
    assert result["metrics"]["acc_entail_vs_contra"] == pytest.approx(
        100.0 * float((predicted == labels)[image_decided].float().mean()))
    assert result["chance"]["acc_entail_vs_contra"] == pytest.approx(75.0)  # 3 entailment of 4


def test_entailment_vs_contradiction_accuracy_ignores_neutral_examples():
    """A hypothesis-only model (every neutral right, entailment/contradiction guessed) sits at its 50% chance."""
    module = VEModule(arch=tiny_config())
    c, n, e = (VE_LABELS.index(name) for name in ("contradiction", "neutral", "entailment"))
    confusion = torch.zeros(3, 3, dtype=torch.long)
    confusion[n, n] = 10
    confusion[e, e], confusion[e, c] = 5, 5
    confusion[c, c], confusion[c, e] = 5, 5
    metrics, chance = module.subset_metrics(confusion)
    assert metrics == {"acc_entail_vs_contra": 50.0} and chance == {"acc_entail_vs_contra": 50.0}
    confusion[e, c], confusion[e, n] = 0, 5  # errors into neutral count as errors too
    confusion[c, e], confusion[c, c] = 0, 10
    assert module.subset_metrics(confusion)[0]["acc_entail_vs_contra"] == pytest.approx(75.0)


# --- configs and the command line ----------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "albef_struct.tasks.ve.VEModule"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in printed["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/acc" and callbacks["ModelCheckpoint"]["mode"] == "max"


def test_albef_recipe_values_in_real_data_config():
    config = yaml.safe_load((REPO / "configs" / "ve.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 5
    assert model["optim"]["lr"] == 2e-5 and model["optim"]["min_lr"] == 1e-6 and model["optim"]["warmup_lr"] == 1e-5
    assert model["alpha"] == 0.4 and model["alpha_warmup"] is False and model["distill"] is True
    assert model["arch"]["vision"]["img_size"] == 384 and data["batch_size"] == 32 and data["eval_batch_size"] == 64


TINY_ARCH = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
}


@pytest.mark.slow
def test_cli_fit_two_steps_then_test(tmp_path, demo_dir, capsys):
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "monitor": "val/acc", "mode": "max"}}],
        },
        "model": {"class_path": "albef_struct.tasks.ve.VEModule",
                  "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-4, "warmup_steps": 1}}},
        "data": {"class_path": "albef_struct.data.VEDataModule",
                 "init_args": {"train_file": str(demo_dir / "ve_train.json"), "val_file": str(demo_dir / "ve_dev.json"),
                               "test_file": str(demo_dir / "ve_test.json"), "image_root": str(demo_dir),
                               "image_res": 32, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0,
                               "hflip": False}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[-1]
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert payload["global_step"] == 2 and "teacher.model.cls_head.2.weight" in payload["state_dict"]

    assert main(["test", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    assert "ve_test" in capsys.readouterr().out
    result = json.loads(sorted((tmp_path / "run").rglob("ve_test.json"))[-1].read_text())
    # the blind baseline: a text-only classifier on the training hypotheses (deterministic, seed 0)
    from albef_struct.data.text import pre_caption
    from albef_struct.metrics.blind import text_only_predictions

    train, test = (json.loads((demo_dir / f"ve_{s}.json").read_text()) for s in ("train", "test"))
    predicted = text_only_predictions([pre_caption(r["sentence"]) for r in train],
                                      [VE_LABELS.index(r["label"]) for r in train],
                                      [pre_caption(r["sentence"]) for r in test], 3)
    truth = torch.tensor([VE_LABELS.index(r["label"]) for r in test])
    assert result["blind"]["acc"] == pytest.approx(100.0 * float((predicted == truth).float().mean()))
    assert 0.0 <= result["blind"]["acc_entail_vs_contra"] <= 100.0
    labels = [r["label"] for r in json.loads((demo_dir / "ve_test.json").read_text())]
    assert result["n_examples"] == len(labels)
    assert result["chance"]["acc"] == pytest.approx(100.0 * max(labels.count(c) for c in VE_LABELS) / len(labels))
    assert 0.0 <= result["metrics"]["acc"] <= 100.0
