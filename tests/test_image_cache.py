"""Cached image tokens of a frozen image encoder stand in for the images, exactly, or are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from albef_struct.cli import main
from albef_struct.data import VEDataModule
from albef_struct.data.image_cache import ImageCacheError, ImageTokenCache, build_image_cache, image_files
from albef_struct.tasks.ve import VEModule
from tests.conftest import tiny_config

FP16 = dict(atol=2e-2, rtol=2e-2)  # the cache stores float16 tokens


def frozen_ve(seed: int = 0) -> VEModule:
    torch.manual_seed(seed)
    module = VEModule(arch=tiny_config(), optim={"lr": 1e-4, "warmup_steps": 1, "freeze": ["visual_encoder"]})
    module.configure_model()  # applies optim.freeze, as the Trainer does
    return module.eval()


@pytest.fixture(scope="module")
def cache_file(demo_dir, tmp_path_factory) -> tuple[Path, VEModule]:
    module = frozen_ve()
    path = tmp_path_factory.mktemp("cache") / "tokens.pt"
    build_image_cache(module.model.visual_encoder, demo_dir, 32, batch_size=16, progress=False).save(path)
    return path, module


def test_the_cache_holds_the_encoders_tokens_of_every_image(cache_file, demo_dir):
    from albef_struct.data.images import load_image
    from albef_struct.data.transforms import test_transform

    path, module = cache_file
    cache = ImageTokenCache.load(path)
    names = image_files(demo_dir)
    assert len(cache) == len(names) == 64 and cache.image_res == 32  # the 48 + 8 + 8 demo images
    for name in names[:: len(names) // 5]:
        image = test_transform(32)(load_image(demo_dir / name, source="test", record_index=0))
        with torch.no_grad():
            expected = module.model.visual_encoder(image[None])[0]
        torch.testing.assert_close(cache.lookup(demo_dir / name, demo_dir), expected, **FP16)


def first_test_batches(demo_dir: Path, cache: Path) -> tuple[dict, dict]:
    """The first SNLI-VE test batch read through ``cache`` and the same batch read from the images."""
    common = dict(train_file=str(demo_dir / "ve_train.json"), test_file=str(demo_dir / "ve_test.json"),
                  image_root=str(demo_dir), image_res=32, eval_batch_size=8, num_workers=0)
    cached, plain = VEDataModule(image_cache=str(cache), **common), VEDataModule(**common)
    for dm in (cached, plain):
        dm.setup("test")
    return next(iter(cached.test_dataloader())), next(iter(plain.test_dataloader()))


def test_batches_of_cached_tokens_give_the_models_logits_on_the_images(cache_file, demo_dir):
    path, module = cache_file
    tokens_batch, image_batch = first_test_batches(demo_dir, path)
    assert tokens_batch["image"].shape == (8, 1 + 2 * 2, 32) and image_batch["image"].shape == (8, 3, 32, 32)
    with torch.no_grad():
        from_tokens = module.logits(module.model, tokens_batch)
        from_images = module.logits(module.model, image_batch)
    torch.testing.assert_close(from_tokens, from_images, **FP16)


def test_a_trained_or_different_encoder_or_size_is_refused(cache_file):
    path, module = cache_file
    cache = ImageTokenCache.load(path)
    cache.check_encoder(module.model.visual_encoder, 32)  # the encoder it came from
    with pytest.raises(ImageCacheError, match="holds 32 px tokens but the model takes 48 px"):
        cache.check_encoder(module.model.visual_encoder, 48)
    with pytest.raises(ImageCacheError, match="other image-encoder weights"):
        cache.check_encoder(frozen_ve(seed=1).model.visual_encoder, 32)
    trained = VEModule(arch=tiny_config())
    trained.load_state_dict(module.state_dict())
    with pytest.raises(ImageCacheError, match="add visual_encoder to model.init_args.optim.freeze"):
        cache.check_encoder(trained.model.visual_encoder, 32)


def test_missing_cache_image_or_root_is_named(cache_file, demo_dir, tmp_path):
    path, _ = cache_file
    with pytest.raises(ImageCacheError, match="does not exist: build it with `albef-struct cache-images`"):
        ImageTokenCache.load(tmp_path / "none.pt")
    cache = ImageTokenCache.load(path)
    with pytest.raises(ImageCacheError, match="images/elsewhere.jpg is not in the image cache"):
        cache.lookup(demo_dir / "images" / "elsewhere.jpg", demo_dir)
    with pytest.raises(ImageCacheError, match="is not under image_root"):
        cache.lookup(tmp_path / "x.jpg", demo_dir)
    with pytest.raises(ValueError, match="image_cache needs image_root"):
        VEDataModule(test_file=str(demo_dir / "ve_test.json"), image_cache=str(path))
    from albef_struct.data import PretrainDataModule

    with pytest.raises(ValueError, match="second_view needs augmented images"):
        PretrainDataModule(train_files=[str(demo_dir / "pretrain.json")], image_root=str(demo_dir),
                           image_cache=str(path), second_view=True)


def cached_ve_run(tmp_path: Path, demo_dir: Path, init_from: Path, cache: Path, arch, optim: dict,
                  max_steps: int = 2) -> dict:
    """The config of a short SNLI-VE fit on cached image tokens, writing under ``tmp_path``."""
    return {
        "seed_everything": 7,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "albef_struct.tasks.ve.VEModule",
                  "init_args": {"arch": arch.to_dict(), "init_from": str(init_from),
                                "optim": {"warmup_steps": 1, **optim}}},
        "data": {"class_path": "albef_struct.data.VEDataModule",
                 "init_args": {"train_file": str(demo_dir / "ve_train.json"), "test_file": str(demo_dir / "ve_test.json"),
                               "image_root": str(demo_dir), "image_cache": str(cache), "batch_size": 8,
                               "eval_batch_size": 16, "num_workers": 0}},
    }


@pytest.mark.slow
def test_cli_builds_the_cache_then_fits_and_tests_on_it_and_refuses_an_unfrozen_encoder(demo_dir, tmp_path, capsys):
    torch.manual_seed(0)  # the pretraining checkpoint whose (frozen) encoder the cache is built from
    source = VEModule(arch=tiny_config())
    ckpt = tmp_path / "source.ckpt"
    import pytorch_lightning as pl

    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    cache = tmp_path / "tokens.pt"
    with pytest.raises(SystemExit):  # one source of weights: --arch or --ckpt
        main(["cache-images", "--images", str(demo_dir), "--out", str(cache)])
    assert main(["cache-images", "--ckpt", str(ckpt), "--images", str(demo_dir), "--out", str(cache)]) == 0
    assert "64 images" in capsys.readouterr().out

    config = cached_ve_run(tmp_path, demo_dir, ckpt, cache, tiny_config(), {"lr": 1e-4, "freeze": ["visual_encoder"]})
    path = tmp_path / "ve.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    assert main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0
    results = json.loads(sorted((tmp_path / "run").rglob("ve_test.json"))[-1].read_text())
    assert 0.0 <= results["metrics"]["acc"] <= 100.0
    capsys.readouterr()
    config["model"]["init_args"]["optim"]["freeze"] = []  # the encoder would train: the cache no longer fits
    config["trainer"]["default_root_dir"] = str(tmp_path / "run2")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "ckpt2")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ImageCacheError, match="add visual_encoder to model.init_args.optim.freeze"):
        main(["fit", "--config", str(path)])
    assert not list((tmp_path / "ckpt2").glob("*.ckpt"))  # refused before the first step: nothing saved
