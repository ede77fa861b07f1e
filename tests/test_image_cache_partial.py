"""Partial image caches: the output of the first k ViT blocks, the remaining blocks still run and train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from albef_struct.cli import main
from albef_struct.data.image_cache import ImageCacheError, ImageTokenCache, build_image_cache
from albef_struct.models.vision import (VisionConfig, build_image_encoder, vit_input_tokens, vit_prefix_state,
                                        vit_tokens_from_block)
from albef_struct.tasks.ve import VEModule
from tests.conftest import tiny_config
from tests.test_image_cache import cached_ve_run, first_test_batches

FP16 = dict(atol=2e-2, rtol=2e-2)  # the cache stores float16 tokens
DEEP = VisionConfig(img_size=32, patch_size=16, width=32, depth=3, heads=2)


def ve_module(seed: int = 0) -> VEModule:
    torch.manual_seed(seed)
    return VEModule(arch=tiny_config(vision=DEEP), optim={"lr": 1e-3, "warmup_steps": 1})


@pytest.mark.parametrize("vision", [DEEP, VisionConfig(timm_model="vit_small_patch14_dinov2", img_size=28,
                                                       patch_size=14, width=384, depth=12, heads=6)],
                         ids=["albef_vit", "timm_dinov2"])
def test_running_the_blocks_from_any_split_point_equals_the_whole_encoder(vision):
    torch.manual_seed(0)
    encoder = build_image_encoder(vision).eval()
    images = torch.randn(2, 3, vision.img_size, vision.img_size)
    with torch.no_grad():
        whole = encoder(images)
        tokens = vit_input_tokens(encoder, images)
        for start in range(len(encoder.blocks) + 1):
            torch.testing.assert_close(vit_tokens_from_block(encoder, tokens, start), whole, atol=1e-5, rtol=1e-5)
            if start < len(encoder.blocks):
                tokens = encoder.blocks[start](tokens)
    encoder.train().set_grad_checkpointing(True)  # recomputed blocks: the same values and gradients
    tokens = vit_input_tokens(encoder, images).detach().requires_grad_()
    recomputed = vit_tokens_from_block(encoder, tokens, 0)
    recomputed.sum().backward()
    encoder.set_grad_checkpointing(False)
    plain_input = tokens.detach().clone().requires_grad_()
    torch.testing.assert_close(recomputed, plain := vit_tokens_from_block(encoder, plain_input, 0))
    plain.sum().backward()
    torch.testing.assert_close(tokens.grad, plain_input.grad)
    with pytest.raises(ValueError, match="outside the encoder's"):
        vit_tokens_from_block(encoder, tokens, len(encoder.blocks) + 1)


def test_the_prefix_state_holds_the_embeddings_and_first_blocks_only():
    encoder = build_image_encoder(DEEP)
    names = set(vit_prefix_state(encoder, 1))
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= names
    assert not any(n.startswith(("blocks.1.", "blocks.2.", "norm.")) for n in names)
    assert set(vit_prefix_state(encoder, 3)) == set(encoder.state_dict()) - {"norm.weight", "norm.bias"}


@pytest.fixture(scope="module")
def partial_cache(demo_dir, tmp_path_factory) -> tuple[Path, VEModule]:
    module = ve_module().eval()
    path = tmp_path_factory.mktemp("partial") / "tokens.pt"
    build_image_cache(module.model.visual_encoder, demo_dir, 32, batch_size=16, progress=False,
                      frozen_blocks=1).save(path)
    return path, module


def test_attached_partial_cache_gives_the_models_logits_and_freezes_only_what_it_stands_for(partial_cache, demo_dir):
    path, module = partial_cache
    cache = ImageTokenCache.load(path)
    assert cache.frozen_blocks == 1 and cache.tokens.shape[1:] == (1 + 2 * 2, 32)
    tokens_batch, image_batch = first_test_batches(demo_dir, path)
    with torch.no_grad():
        from_images = module.logits(module.model, image_batch)
        cache.attach(module)
        from_tokens = module.logits(module.model, tokens_batch)
    torch.testing.assert_close(from_tokens, from_images, **FP16)
    trainable = {n for n, p in module.model.visual_encoder.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in module.model.visual_encoder.named_parameters()
                         if n.startswith(("blocks.1.", "blocks.2.", "norm."))}
    assert all(m.cached_image_blocks == 1 for m in module.modules() if hasattr(m, "cached_image_blocks"))


def test_partial_cache_checks_only_the_weights_its_tokens_come_from(partial_cache):
    path, module = partial_cache
    cache = ImageTokenCache.load(path)
    other_top = ve_module(seed=1)
    prefix = vit_prefix_state(module.model.visual_encoder, 1)
    other_top.model.visual_encoder.load_state_dict(prefix, strict=False)  # same embeddings and block 0
    cache.check_encoder(other_top.model.visual_encoder, 32)  # trainable top blocks are fine
    with pytest.raises(ImageCacheError, match="holds the output of its first 1 blocks, built with other"):
        cache.check_encoder(ve_module(seed=2).model.visual_encoder, 32)
    deep_cache = ImageTokenCache(list(cache.rows), cache.tokens, cache.fingerprint, 32, "deep.pt", frozen_blocks=2)
    with pytest.raises(ImageCacheError, match="holds the output of 2 ViT blocks but the model's image encoder has 1"):
        deep_cache.attach(VEModule(arch=tiny_config()))


def test_more_frozen_blocks_than_the_encoder_has_is_refused_when_building(demo_dir, tmp_path):
    encoder = ve_module().model.visual_encoder
    for blocks in (4, -1):
        with pytest.raises(ImageCacheError, match=f"--frozen-blocks {blocks}: the image encoder has 3 blocks"):
            build_image_cache(encoder, demo_dir, 32, progress=False, frozen_blocks=blocks)


@pytest.mark.slow
def test_cli_partial_cache_trains_the_top_blocks_and_keeps_the_prefix(demo_dir, tmp_path, capsys):
    import pytorch_lightning as pl

    source = ve_module()
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    cache = tmp_path / "tokens.pt"
    assert main(["cache-images", "--ckpt", str(ckpt), "--images", str(demo_dir), "--out", str(cache),
                 "--frozen-blocks", "1"]) == 0
    assert "the output of its first 1 blocks" in capsys.readouterr().out
    config = cached_ve_run(tmp_path, demo_dir, ckpt, cache, tiny_config(vision=DEEP), {"lr": 1e-2}, max_steps=3)
    config["trainer"]["limit_val_batches"] = 0
    path = tmp_path / "ve.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    trained = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    before = source.state_dict()
    vit = "model.visual_encoder."
    for name in vit_prefix_state(source.model.visual_encoder, 1):  # never run, frozen: bit for bit the same
        assert torch.equal(trained[vit + name], before[vit + name]), name
    for name in ("blocks.1.attn.qkv.weight", "blocks.2.mlp.fc1.weight", "norm.weight"):  # trained
        assert not torch.allclose(trained[vit + name], before[vit + name]), name
    assert main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0
    other = ve_module(seed=3)  # a run from other image-encoder weights is refused before its first step
    other_ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams),
                "pytorch-lightning_version": pl.__version__}, other_ckpt)
    config["model"]["init_args"]["init_from"] = str(other_ckpt)
    config["trainer"]["default_root_dir"] = str(tmp_path / "run2")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "ckpt2")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ImageCacheError, match="first 1 blocks, built with other image-encoder weights"):
        main(["fit", "--config", str(path)])
    assert not list((tmp_path / "ckpt2").glob("*.ckpt"))  # refused before a step: nothing saved


def test_a_cache_saved_before_partial_caches_existed_loads_as_a_whole_encoder_cache(partial_cache, tmp_path):
    path, _ = partial_cache
    payload = torch.load(path, weights_only=True)
    del payload["frozen_blocks"]
    torch.save(payload, tmp_path / "old.pt")
    assert ImageTokenCache.load(tmp_path / "old.pt").frozen_blocks is None


def test_a_trainer_built_by_hand_without_the_cli_callbacks_still_reads_a_partial_cache_right(partial_cache, demo_dir,
                                                                                              tmp_path):
    """The DataModule, not a CLI callback, attaches the cache: in ``setup`` it freezes the prefix and
    says where the tokens enter, and before the first batch it refuses other image-encoder weights."""
    import pytorch_lightning as pl

    from albef_struct.data import VEDataModule

    path, source = partial_cache

    def fit(module: VEModule) -> None:
        data = VEDataModule(train_file=str(demo_dir / "ve_train.json"), image_root=str(demo_dir), image_res=32,
                            image_cache=str(path), batch_size=8, num_workers=0)
        pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, callbacks=[],
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(module, data)

    module = ve_module()
    module.load_state_dict(source.state_dict())
    before = {k: v.clone() for k, v in module.model.visual_encoder.state_dict().items()}
    seen = []
    block_1 = module.model.visual_encoder.blocks[1]
    block_1.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    fit(module)
    assert seen and all(shape[1:] == (1 + 2 * 2, 32) for shape in seen)  # tokens entered after block 0
    assert all(m.cached_image_blocks == 1 for m in module.modules() if hasattr(m, "cached_image_blocks"))
    after = module.model.visual_encoder.state_dict()
    for name in vit_prefix_state(module.model.visual_encoder, 1):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["blocks.1.attn.qkv.weight"], before["blocks.1.attn.qkv.weight"])
    with pytest.raises(ImageCacheError, match="first 1 blocks, built with other image-encoder weights"):
        fit(ve_module(seed=2))


def test_subfolders_the_runs_do_not_read_can_be_left_out_of_a_cache(demo_dir, tmp_path):
    """make demo keeps the classification and grounding sets under data/demo; its cache leaves them out."""
    import shutil

    from albef_struct.data.image_cache import image_files

    sources = sorted(p for p in demo_dir.rglob("*.jpg"))[:3]
    for folder, source in zip(("images", "other/set", "images/deeper"), sources):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / folder / "x.jpg")
    assert image_files(tmp_path) == ["images/deeper/x.jpg", "images/x.jpg", "other/set/x.jpg"]
    assert image_files(tmp_path, exclude=["other"]) == ["images/deeper/x.jpg", "images/x.jpg"]
    assert image_files(tmp_path, exclude=["images/deeper/", "other/set"]) == ["images/x.jpg"]
    with pytest.raises(ImageCacheError, match="--exclude imgs: .* is not a folder under"):
        image_files(tmp_path, exclude=["imgs"])  # a typo is named, not silently ignored
    cache = build_image_cache(ve_module().model.visual_encoder, tmp_path, 32, progress=False, frozen_blocks=1,
                              exclude=["other"])
    assert list(cache.rows) == ["images/deeper/x.jpg", "images/x.jpg"] and cache.tokens.shape[0] == 2
