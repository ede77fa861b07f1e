"""Every configs/structure/*.yaml overlay trains 2 steps through the CLI; their terms are logged."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from albef_struct.cli import main
from albef_struct.lit.pretrain import PretrainModule
from tests.conftest import REPO, tiny_config
from tests.test_cli import last_checkpoint, write_config

pytestmark = pytest.mark.slow
OVERLAYS = sorted((REPO / "configs" / "structure").glob("*.yaml"))


def logged_columns(tmp_path: Path) -> set[str]:
    metrics = sorted((tmp_path / "run").rglob("metrics.csv"))[-1]
    with metrics.open() as handle:
        return set(next(csv.reader(handle)))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_overlay_fits_two_steps(overlay, tmp_path, demo_dir):  # noqa: F811
    config = write_config(tmp_path, demo_dir)
    args = ["fit", "--config", str(config), "--config", str(overlay), "--trainer.log_every_n_steps", "1"]
    assert main(args) == 0
    state = torch.load(last_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    columns = logged_columns(tmp_path)
    text = overlay.read_text()
    for name in ("feature_separation", "brownian_bridge", "geometric_consistency"):
        if f"name: {name}" in text:
            assert f"train/structure/{name}" in columns
    if "private_heads: true" in text:
        assert "model.vision_private_proj.weight" in state["state_dict"]
        assert "teacher.model.text_private_proj.weight" in state["state_dict"]
    if "contrastive: decomposable" in text:
        visits = state["state_dict"]["contrastive.visits"]
        assert visits.shape == (48,) and int((visits > 0).sum()) == 32  # two batches of 16 distinct pairs
        bank = state["state_dict"]["contrastive.bank_text"]
        assert bank.shape[0] == 48 and torch.allclose(bank[visits > 0].norm(dim=1), torch.ones(32))


def test_all_three_regularizers_with_a_second_augmented_view(tmp_path, demo_dir):  # noqa: F811
    config = write_config(tmp_path, demo_dir)
    overlays = [REPO / "configs" / "structure" / name for name in ("all_three.yaml", "second_view.yaml")]
    args = ["fit", "--config", str(config)]
    for overlay in overlays:
        args += ["--config", str(overlay)]
    assert main(args + ["--trainer.log_every_n_steps", "1"]) == 0
    assert {"train/structure/feature_separation/ortho", "train/structure/brownian_bridge/bridge_image"} <= logged_columns(tmp_path)


def test_private_heads_are_required_by_feature_separation():
    with pytest.raises(ValueError, match="private_heads: true"):
        PretrainModule(arch=tiny_config(), queue_size=32, structure=[{"name": "feature_separation"}])


def test_second_view_without_data_support_is_a_clear_error():
    module = PretrainModule(arch=tiny_config(), queue_size=32, augmented_view="second_view",
                            structure=[{"name": "brownian_bridge"}])
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "input_ids": torch.randint(1000, 2000, (4, 6)),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="second_view: true"):
        module.pretrain_losses(batch, alpha=0.4)
