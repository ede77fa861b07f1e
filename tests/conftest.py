"""Shared test fixtures: tiny model configurations, the ALBEF parity fixture, offline mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process `albef_struct.cli.main` calls raise the project's errors (as with --debug) so tests can
# inspect them; tests/test_cli_errors.py checks the one-line message without it.
os.environ.setdefault("ALBEF_STRUCT_DEBUG", "1")
# Tiny test models run fastest on one thread, and a second thread per xdist worker would
# oversubscribe a 2-core machine (a tiny training step measured ~50x slower that way).
torch.set_num_threads(1)

from albef_struct.models import ALBEFConfig, TextConfig, VisionConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # outputs of the original ALBEF code; see tests/fixtures/README.md
PARITY_DIR = FIXTURES / "albef_parity" / "A"
KEYS_FILE = FIXTURES / "albef_keys" / "pretrain_keys.json"


def tiny_config(**overrides) -> ALBEFConfig:
    """A few-thousand-parameter ALBEF (plus the real 30522-token vocabulary) for unit tests."""
    values = dict(
        vision=VisionConfig(img_size=32, patch_size=16, width=32, depth=1, heads=2),
        text=TextConfig(hidden=32, layers=2, fusion_layer=1, heads=2, intermediate=64, max_position=40),
        embed_dim=16,
        mlm_head=True,
    )
    values.update(overrides)
    return ALBEFConfig(**values)


@pytest.fixture
def tiny_arch() -> ALBEFConfig:
    return tiny_config()


def parity_config() -> ALBEFConfig:
    """The architecture of the ALBEF parity fixture A, read from its config.json."""
    if not PARITY_DIR.is_dir():
        raise FileNotFoundError(f"parity fixture missing: expected {PARITY_DIR} (part of the repository)")
    config = json.loads((PARITY_DIR / "config.json").read_text())
    arch, ids = config["architecture"], config["special_ids"]
    return ALBEFConfig(
        vision=VisionConfig(
            img_size=arch["image_res"], patch_size=16, width=arch["vit_dim"], depth=arch["vit_depth"], heads=arch["vit_heads"]
        ),
        text=TextConfig(
            vocab_size=arch["vocab"],
            hidden=arch["hidden"],
            layers=arch["layers"],
            fusion_layer=arch["fusion"],
            heads=arch["heads"],
            intermediate=arch["inter"],
            max_position=config["bert_config"]["max_position_embeddings"],
            pad_token_id=ids["PAD"],
            cls_token_id=ids["CLS"],
            sep_token_id=ids["SEP"],
            mask_token_id=ids["MASK"],
        ),
        embed_dim=arch["embed"],
        temp=config["temp_init"],
        mlm_head=True,
    )


def load_fixture(name: str):
    return torch.load(PARITY_DIR / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small generated demo dataset (every task's files, 64 px images), shared by the CLI tests."""
    from albef_struct.data_prep.demo_data import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, image_size=64, n_train=48, n_val=8, n_test=8)
    return out


@pytest.fixture(scope="session")
def pretrain_ckpt(tmp_path_factory) -> Path:
    """A tiny pretraining checkpoint of this project at 64 px (random weights, seed 0)."""
    from dataclasses import replace

    from albef_struct.checkpoint.weights import TaskWeights
    from albef_struct.lit.checkpoints import save_lightning_checkpoint

    torch.manual_seed(0)
    arch = tiny_config(vision=replace(tiny_config().vision, img_size=64))
    path = tmp_path_factory.mktemp("ckpt") / "pretrain.ckpt"
    save_lightning_checkpoint(TaskWeights.for_task("pretrain", arch, queue_size=16), "pretrain", path)
    return path
