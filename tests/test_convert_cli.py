"""``albef-struct convert`` end to end on fixture A: files, report, loading paths and ALBEF's outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
import yaml

from albef_struct.checkpoint.source import read_source
from albef_struct.cli import EXTRA_COMMANDS, main
from albef_struct.lit.checkpoints import load_model
from albef_struct.lit.pretrain import PretrainModule
from tests.conftest import PARITY_DIR, load_fixture, parity_config

PRETRAIN = PARITY_DIR / "pretrain_checkpoint.pth"
CONFIG = json.loads((PARITY_DIR / "config.json").read_text())
HEADS = ["--heads-vision", "4", "--heads-text", "4"]  # fixture A's heads (shapes cannot tell)
ATOL = 1e-5


def task_config():
    config = parity_config()
    return replace(config, vision=replace(config.vision, img_size=CONFIG["architecture"]["task_res"]))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "albef_pretrain"
    return out, main(["convert", str(PRETRAIN), str(out), *HEADS])


def test_convert_is_an_extra_subcommand():
    assert EXTRA_COMMANDS["convert"][0] == "albef_struct.convert"


def test_convert_writes_a_weights_only_lightning_checkpoint_and_safetensors(converted):
    out, code = converted
    assert code == 0
    payload = torch.load(out.with_name(out.name + ".ckpt"), map_location="cpu", weights_only=True)
    assert set(payload) >= {"state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step"}
    assert (payload["epoch"], payload["global_step"]) == (0, 0)
    assert payload["pytorch-lightning_version"] == pl.__version__
    arch = payload["hyper_parameters"]["arch"]
    assert isinstance(arch, dict) and arch["text"]["fusion_layer"] == 6 and arch["vision"]["heads"] == 4
    assert payload["hyper_parameters"]["queue_size"] == CONFIG["architecture"]["queue"]
    assert payload["albef_struct"]["layout"] == "pretrain" and payload["albef_struct"]["task"] == "pretrain"
    safetensors = read_source(out.with_name(out.name + ".safetensors"))
    for key, value in payload["state_dict"].items():
        assert torch.equal(safetensors.state[key], value), key


def test_convert_prints_the_import_report(tmp_path, capsys):
    args = ["convert", str(PRETRAIN), str(tmp_path / "coco"), "--task", "retrieval", "--image-res", "96", *HEADS]
    assert main(args) == 0
    text = capsys.readouterr().out
    parts = ("layout: pretrain", "task: retrieval", "resized", "visual_encoder_m.pos_embed: [1, 17, 64] -> [1, 37, 64]",
             "initialised fresh (1)", "idx_queue", "the MLM head is only used in pretraining (12)", "position ids",
             "wrote")
    for part in parts:
        assert part in text, part


@torch.no_grad()
def test_converted_model_reproduces_the_original_import_and_albefs_outputs(converted):
    out, _ = converted
    model = load_model(out.with_name(out.name + ".ckpt"))
    queue = CONFIG["architecture"]["queue"]
    reference = PretrainModule(arch=parity_config(), queue_size=queue, init_from=str(PRETRAIN)).eval().model
    inputs, expected = load_fixture("inputs.pt"), load_fixture("pretrain_outputs.pt")
    results = []
    for m in (model, reference):
        image = m.encode_image(inputs["images"])
        text = m.encode_text(inputs["input_ids"], inputs["attention_mask"])
        fused = m.fuse(text.embeds, inputs["attention_mask"], image.embeds)
        mlm = m.mlm_logits(inputs["input_ids"], inputs["attention_mask"], image.embeds)
        results.append((image.feat, text.feat, m.itm_logits(fused), mlm))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    image_feat, text_feat, itm, mlm = results[0]
    for name, value in zip(("image_feat", "text_feat", "itm_logits", "mlm_logits"), (image_feat, text_feat, itm, mlm)):
        torch.testing.assert_close(value, expected[name], atol=ATOL, rtol=0)


def test_converted_checkpoint_is_init_from_and_ckpt_path_of_the_task_module(tmp_path):
    from albef_struct.tasks.retrieval import RetrievalModule

    out = tmp_path / "coco"
    assert main(["convert", str(PRETRAIN), str(out), "--task", "retrieval", "--image-res", "96", *HEADS]) == 0
    ckpt = out.with_name("coco.ckpt")
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    module = RetrievalModule(arch=task_config(), queue_size=CONFIG["architecture"]["queue"], init_from=str(ckpt))
    assert not module.init_report.fresh and not module.init_report.dropped
    assert set(module.state_dict()) == set(saved)
    for key, value in saved.items():
        assert torch.equal(module.state_dict()[key], value), key
    restored = RetrievalModule.load_from_checkpoint(ckpt)  # what --ckpt_path needs: strict keys
    for key, value in saved.items():
        assert torch.equal(restored.state_dict()[key], value), key


@torch.no_grad()
def test_convert_from_a_task_config_reproduces_albefs_ve_logits(tmp_path):
    from albef_struct.tasks.ve import VEModule

    config = tmp_path / "ve.yaml"
    arch = task_config().to_dict()
    config.write_text(yaml.safe_dump({"model": {"class_path": "albef_struct.tasks.ve.VEModule", "init_args": {"arch": arch}}}))
    out = tmp_path / "ve"
    assert main(["convert", str(PARITY_DIR / "ve_checkpoint.pth"), str(out), "--arch-from-config", str(config)]) == 0
    expected = load_fixture("ve_outputs.pt")
    for path in (out.with_name("ve.ckpt"), out.with_name("ve.safetensors")):
        module = VEModule(arch=task_config(), init_from=str(path)).eval()
        assert not module.init_report.fresh
        logits = module(expected["images"], expected["input_ids"], expected["attention_mask"])
        torch.testing.assert_close(logits, expected["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name, task", [("vqa_checkpoint.pth", "vqa"), ("nlvr_checkpoint.pth", "nlvr"),
                                        ("nlvr_ta_checkpoint.pth", "nlvr"), ("ve_checkpoint.pth", "ve")])
def test_task_is_taken_from_the_file(tmp_path, name, task):
    out = tmp_path / "out"
    assert main(["convert", str(PARITY_DIR / name), str(out), *HEADS]) == 0
    payload = torch.load(out.with_name("out.ckpt"), weights_only=True)
    assert payload["albef_struct"]["task"] == task
    model = load_model(out.with_name("out.ckpt"))
    if task == "vqa":
        assert model.config.answer_decoder_layers == 6
    if task == "nlvr":
        assert model.config.fusion_streams == 2 and model.config.classifier_classes == 2


def test_bad_input_is_an_error_not_a_traceback(tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(PRETRAIN.read_bytes()[:4096])
    assert main(["convert", str(truncated), str(tmp_path / "out")]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["convert", str(PRETRAIN), str(tmp_path / "out"), "--image-res", "100"]) == 1
    assert "not a multiple of the patch size" in capsys.readouterr().err
    assert main(["convert", str(PRETRAIN), str(tmp_path / "out"), "--heads-text", "5"]) == 1
    assert "not divisible by 5 attention heads" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()
