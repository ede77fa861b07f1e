"""Shared pieces of the reliability tests: a tiny architecture, one-thread runs, a tiny CLI config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY_ARCH: dict[str, Any] = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
    "embed_dim": 16,
    "mlm_head": True,
}


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: on a shared 2-core machine two OpenMP threads make these tiny steps ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_config(run_dir: Path, demo_dir: Path, **override: Any) -> dict[str, Any]:
    """An ``albef-struct fit`` config: tiny PretrainModule, demo data (32 px), 3 steps, no validation."""
    base = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 3, "limit_val_batches": 0, "num_sanity_val_steps": 0,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(run_dir),
        },
        "model": {"class_path": "albef_struct.lit.PretrainModule",
                  "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-3, "warmup_steps": 1}, "queue_size": 64,
                                "k_test": 4}},
        "data": {"class_path": "albef_struct.data.PretrainDataModule",
                 "init_args": {"train_files": [str(demo_dir / "pretrain.json")], "image_root": str(demo_dir),
                               "image_res": 32, "batch_size": 8, "num_workers": 0, "hflip": False}},
    }
    return merge(base, override)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path
