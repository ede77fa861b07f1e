"""The task registry: every task declared once, read by task_of, configs and old checkpoints' class paths."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch
import yaml

from albef_struct.cli import main, with_current_class_paths
from albef_struct.tasks.registry import TASKS, current_class_path, task_of, task_of_class_path
from albef_struct.tasks.ve import VEModule
from tests.conftest import REPO, tiny_config

TASK_ORDER = ["pretrain", "retrieval", "ve", "vqa", "nlvr", "nlvr_pretrain", "grounding"]


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_task_is_registered_once_by_its_module_in_order():
    assert list(TASKS) == TASK_ORDER
    for name, spec in TASKS.items():
        assert spec.module.task_spec is spec and spec.name == name
        assert import_class(spec.class_path) is spec.module


@pytest.mark.parametrize("task", TASK_ORDER)
def test_task_of_finds_the_task_from_its_own_heads(task):
    # grounding fine-tunes the retrieval model itself (ALBEF's refcoco.pth is a retrieval file): its heads say retrieval
    expected = "retrieval" if task == "grounding" else task
    assert task_of(TASKS[task].arch(tiny_config())) == expected


HEADS_OFF = dict(projections=False, itm_head=False, mlm_head=False, answer_decoder_layers=0, classifier_classes=0,
                 ta_head=False, fusion_streams=1)


@pytest.mark.parametrize("heads, task", [
    ({}, "retrieval"),  # no head at all
    ({"projections": True}, "retrieval"),  # contrastive features only
    ({"projections": True, "mlm_head": True}, "pretrain"),
    ({"answer_decoder_layers": 2, "classifier_classes": 3}, "vqa"),  # a decoder decides first
    ({"ta_head": True}, "nlvr_pretrain"),
    ({"fusion_streams": 2}, "nlvr"),
    ({"fusion_streams": 2, "classifier_classes": 3}, "nlvr"),
    ({"classifier_classes": 2}, "ve"),
    ({"classifier_classes": 3, "projections": True}, "ve"),  # the VE feature probe's model
])
def test_task_of_configs_between_tasks(heads, task):
    assert task_of(replace(tiny_config(), **{**HEADS_OFF, **heads})) == task


def shipped_configs() -> list:
    return sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "demo").glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_configs_pair_each_task_module_with_its_datamodule(path):
    config = yaml.safe_load(path.read_text())
    if "class_path" not in (config.get("model") or {}):
        return  # an overlay
    module = import_class(config["model"]["class_path"])
    spec = next(spec for spec in TASKS.values() if spec.module is module)
    assert import_class(config["data"]["class_path"]) is spec.datamodule


def test_old_class_paths_name_the_moved_task_modules():
    assert current_class_path("tasks.ve.VEModule") == "albef_struct.tasks.ve.VEModule"
    assert current_class_path("albef_struct.lit.PretrainModule") == "albef_struct.lit.PretrainModule"
    assert task_of_class_path("tasks.nlvr.TextAssignmentModule") == "nlvr_pretrain"
    assert task_of_class_path("albef_struct.tasks.vqa.VQAModule") == "vqa"
    assert task_of_class_path("albef_struct.data.VEDataModule") is None
    config = {"model": {"class_path": "tasks.ve.VEModule", "init_args": {"arch": {"class_path": "x"}}}, "l": [{}]}
    assert with_current_class_paths(config)["model"]["class_path"] == "albef_struct.tasks.ve.VEModule"


def test_config_naming_an_old_class_path_is_refused_with_the_new_one(tmp_path, capsys):
    config = (REPO / "configs" / "demo" / "ve.yaml").read_text()
    old = tmp_path / "old.yaml"
    old.write_text(config.replace("class_path: albef_struct.tasks.ve.VEModule", "class_path: tasks.ve.VEModule"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(old), "--print_config"])
    assert exit_info.value.code == 2
    assert "write albef_struct.tasks.ve.VEModule" in capsys.readouterr().err


TINY_ARCH = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
}


@pytest.mark.slow
def test_checkpoint_written_before_the_move_still_loads(tmp_path, demo_dir):
    """Lightning records the module's class path in the checkpoint (``_class_path``); old runs say ``tasks.ve``."""
    config = {
        "seed_everything": 7,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1, "limit_test_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "albef_struct.tasks.ve.VEModule", "init_args": {"arch": TINY_ARCH}},
        "data": {"class_path": "albef_struct.data.VEDataModule",
                 "init_args": {"train_file": str(demo_dir / "ve_train.json"), "val_file": str(demo_dir / "ve_dev.json"),
                               "test_file": str(demo_dir / "ve_test.json"), "image_root": str(demo_dir),
                               "image_res": 32, "batch_size": 8, "eval_batch_size": 8, "num_workers": 0}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    payload = torch.load(sorted((tmp_path / "run").rglob("*.ckpt"))[-1], map_location="cpu", weights_only=True)
    assert payload["hyper_parameters"]["_class_path"] == "albef_struct.tasks.ve.VEModule"
    payload["hyper_parameters"]["_class_path"] = "tasks.ve.VEModule"
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)

    restored = VEModule.load_from_checkpoint(old)
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in payload["state_dict"].items())
    assert main(["test", "--config", str(path), "--ckpt_path", str(old)]) == 0
