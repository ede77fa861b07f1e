"""Values said once: the data takes the model's image size; task configs name one architecture file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace

from albef_struct.cli import ALBEFCLI, CompactErrorParser, model_image_size
from tests.test_cli import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def build(args: list[str]) -> ALBEFCLI:
    return ALBEFCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, auto_configure_optimizers=False, parser_class=CompactErrorParser, args=args)


def write_tiny_config(tmp_path: Path, demo_dir: Path, **data_args) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_checkpointing": False},
        "model": TINY_MODEL,
        "data": {"class_path": "albef_struct.data.PretrainDataModule",
                 "init_args": {"train_files": [str(demo_dir / "pretrain.json")], "image_root": str(demo_dir),
                               "num_workers": 0, **data_args}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_data_takes_the_models_image_size(tmp_path, demo_dir):
    config = write_tiny_config(tmp_path, demo_dir)
    assert build(["--config", str(config)]).datamodule.image_res == 32  # PretrainDataModule's own default is 256
    resized = build(["--config", str(config), "--model.init_args.arch.vision.img_size", "48"])
    assert resized.datamodule.image_res == 48 and resized.model.model.config.vision.img_size == 48


def test_an_equal_image_res_in_the_data_section_is_accepted(tmp_path, demo_dir):
    assert build(["--config", str(write_tiny_config(tmp_path, demo_dir, image_res=32))]).datamodule.image_res == 32


def test_a_different_image_res_is_refused_naming_the_key_and_the_fix(tmp_path, demo_dir, capsys):
    config = write_tiny_config(tmp_path, demo_dir)
    with pytest.raises(SystemExit) as exit_info:
        build(["--config", str(config), "--data.init_args.image_res", "48"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "data.init_args.image_res=48 differs from the model's image size 32" in message
    assert "model.init_args.arch.vision.img_size" in message and "with args" not in message  # compact


def test_without_arch_the_tasks_default_resolution_is_used():
    assert model_image_size(Namespace(class_path="albef_struct.tasks.ve.VEModule", init_args=Namespace(arch=None))) == 384
    assert model_image_size(Namespace(class_path="albef_struct.lit.PretrainModule", init_args=Namespace())) == 256
    with pytest.raises(ValueError, match="not a registered task"):
        model_image_size(Namespace(class_path="my.own.Module", init_args=Namespace(arch=None)))


@pytest.mark.parametrize("config", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")))
def test_no_shipped_config_states_the_image_size_twice(config):
    data = (yaml.safe_load((REPO / config).read_text()) or {}).get("data") or {}
    assert "image_res" not in (data.get("init_args") or {})


# --- a task config names the shared architecture file; the run's own choices stay in the run ------------
def timm_tiny_arch(pretrained_file: str | None):
    from dataclasses import replace

    from albef_struct.models import VisionConfig
    from tests.conftest import tiny_config

    vision = VisionConfig(img_size=32, patch_size=16, width=192, depth=1, heads=3, timm_model="vit_tiny_patch16_224",
                          timm_args={"depth": 1}, pretrained_file=pretrained_file)
    arch = tiny_config(vision=vision)
    return replace(arch, text=replace(arch.text, hidden_dropout=0.1, attention_dropout=0.1))


def test_text_dropout_replaces_the_architectures_and_is_what_the_checkpoint_records():
    from albef_struct.lit.task import with_text_dropout
    from albef_struct.tasks.ve import VEModule

    arch = timm_tiny_arch(None)
    module = VEModule(arch=arch, text_dropout=0.0)
    assert (module.model.config.text.hidden_dropout, module.model.config.text.attention_dropout) == (0.0, 0.0)
    assert module.hparams["arch"]["text"]["hidden_dropout"] == 0.0 and module.hparams["text_dropout"] == 0.0
    dropouts = {m.p for m in module.model.text_encoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts == {0.0}
    assert VEModule(arch=arch).model.config.text.hidden_dropout == 0.1  # None keeps arch's
    with pytest.raises(ValueError, match=r"text_dropout must be in \[0, 1\)"):
        with_text_dropout(arch, 1.5)


def test_init_from_makes_the_image_encoders_pretrained_file_unnecessary(tmp_path):
    from albef_struct.tasks.ve import VEModule

    source = VEModule(arch=timm_tiny_arch(None))
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    missing = str(tmp_path / "never_written.safetensors")
    with pytest.raises(FileNotFoundError, match="never_written"):
        VEModule(arch=timm_tiny_arch(missing))
    module = VEModule(arch=timm_tiny_arch(missing), init_from=str(ckpt))  # the file is not read
    for key, value in source.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
    assert module.model.config.vision.pretrained_file is None


def test_the_validator_still_refuses_a_mismatch_built_outside_the_cli():
    """From Python the DataModule and model are built separately: the pre-fit check names both keys."""
    from types import SimpleNamespace

    from albef_struct.lit.validation import image_size_problems
    from tests.conftest import tiny_config

    module = SimpleNamespace(model=SimpleNamespace(config=tiny_config()))
    problems = list(image_size_problems(None, module, SimpleNamespace(image_res=48), "fit"))
    assert len(problems) == 1 and "data.init_args.image_res=48 differs from model.init_args.arch.vision.img_size=32" in problems[0]
    assert not list(image_size_problems(None, module, SimpleNamespace(image_res=32), "fit"))
