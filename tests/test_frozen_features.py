"""The frozen-feature protocol on tiny synthetic features (no demo data, no encoders)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.losses.contrastive import build_contrastive_loss
from experiments.frozen_features import (
    FrozenFeatures,
    ProjectionHeads,
    full_infonce,
    pair_batches,
    retrieval_recall,
    train_heads,
    warmup_cosine,
)

IMAGE_DIM, TEXT_DIM, CAPTIONS = 16, 12, 2


def synthetic_features(n_train: int = 32, n_test: int = 16, noise: float = 0.3, seed: int = 0) -> FrozenFeatures:
    """Images are random vectors; each caption is a fixed linear map of its image plus noise."""
    gen = torch.Generator().manual_seed(seed)
    mapping = torch.randn(IMAGE_DIM, TEXT_DIM, generator=gen) / math.sqrt(IMAGE_DIM)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.randn(n, IMAGE_DIM, generator=gen)
        owner = torch.arange(n).repeat_interleave(CAPTIONS)
        texts = images[owner] @ mapping + noise * torch.randn(n * CAPTIONS, TEXT_DIM, generator=gen)
        return images, owner, texts

    train_image, pair_image, train_text = split(n_train)
    test_image, test_txt2img, test_text = split(n_test)
    label = lambda x: x[:, :3].argmax(dim=1)  # noqa: E731 - a linearly decodable attribute
    return FrozenFeatures(
        train_image=train_image, pair_image=pair_image, train_text=train_text,
        test_image=test_image, test_text=test_text, test_txt2img=test_txt2img,
        train_labels={"shape": label(train_image)}, test_labels={"shape": label(test_image)},
        label_names={"shape": ["a", "b", "c"]},
    )


def run(loss: str, seed: int = 0, epochs: float = 25, **kwargs) -> dict:
    return train_heads(synthetic_features(), build_contrastive_loss(loss), batch_size=8, epochs=epochs, seed=seed,
                       lr=1e-2, embed_dim=16, probe=False, **kwargs)


def test_infonce_learns_retrieval_well_above_chance() -> None:
    untrained, trained = run("infonce", epochs=0), run("infonce")
    # chance: t2i R@1 = 1/16 (6 %), i2t R@1 = 2/32 texts (about 12 %)
    assert trained["r1"] > 60 and trained["r1"] > untrained["r1"] + 30
    assert trained["train_infonce"] < untrained["train_infonce"]
    assert trained["steps"] == 25 * (64 // 8) and untrained["steps"] == 0
    assert 0.001 <= trained["temp"] <= 0.5 and trained["step_saved_bytes"] > 0


def test_runs_are_deterministic_for_a_seed() -> None:
    first, second, other = run("infonce", seed=3, epochs=5), run("infonce", seed=3, epochs=5), run("infonce", seed=4, epochs=5)
    for key in ("r1", "i2t_r5", "train_infonce", "temp", "last_loss"):
        assert first[key] == second[key]
    assert first["last_loss"] != other["last_loss"]


def test_fractional_epochs_and_fixed_temperature() -> None:
    result = run("infonce", epochs=1.5, learn_temp=False, hidden=8)
    assert result["steps"] == 12 and result["temp"] == pytest.approx(0.07)


def test_retrieval_recall_on_a_hand_made_case() -> None:
    # 3 images x 2 captions; texts 0,1 -> image 0, 2,3 -> image 1, 4,5 -> image 2
    txt2img = torch.tensor([0, 0, 1, 1, 2, 2])
    sim = torch.tensor([
        [0.1, 0.9, 0.0, 0.2, 0.0, 0.0],  # image 0: its 2nd caption ranks first -> i2t hit
        [0.0, 0.0, 0.1, 0.3, 0.5, 0.0],  # image 1: caption 4 (image 2) first -> miss
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.8],  # image 2: its caption 5 first -> hit
    ])
    # text -> image: best image per column = [0, 0, 1, 1, 1, 2]; correct for texts 0, 1, 2, 3, 5
    out = retrieval_recall(sim, txt2img)
    assert out["i2t_r1"] == pytest.approx(200 / 3)
    assert out["t2i_r1"] == pytest.approx(500 / 6)
    assert out["r1"] == pytest.approx((200 / 3 + 500 / 6) / 2)
    assert out["i2t_r5"] == out["t2i_r5"] == 100.0


def test_full_infonce_matches_cross_entropy_over_all_pairs() -> None:
    feats = synthetic_features()
    image = F.normalize(feats.train_image[:, :TEXT_DIM], dim=1)
    text = F.normalize(feats.train_text, dim=1)
    logits = image[feats.pair_image] @ text.T / 0.1
    target = torch.arange(logits.shape[0])
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert full_infonce(image, text, feats.pair_image, 0.1, chunk=10) == pytest.approx(expected.item(), rel=1e-5)


def test_queue_path_with_ema_teacher_runs_and_learns() -> None:
    result = run("infonce_queue", epochs=25, queue_size=24, alpha=0.4)
    assert math.isfinite(result["last_loss"]) and result["r1"] > 40
    assert run("infonce_queue", epochs=2, queue_size=16, alpha=0.0, alpha_warmup=False)["steps"] == 16


@pytest.mark.parametrize("loss", ["siglip", "decomposable"])
def test_other_losses_run(loss: str) -> None:
    result = run(loss, epochs=3)
    assert math.isfinite(result["last_loss"]) and result["steps"] == 24


def test_probe_and_heads_shapes() -> None:
    heads = ProjectionHeads(IMAGE_DIM, TEXT_DIM, embed_dim=8, hidden=32)
    image, text = heads(torch.randn(5, IMAGE_DIM), torch.randn(5, TEXT_DIM))
    assert image.shape == text.shape == (5, 8)
    assert torch.allclose(image.norm(dim=1), torch.ones(5))
    result = train_heads(synthetic_features(), build_contrastive_loss("infonce"), 8, 10, seed=0, lr=1e-2,
                         embed_dim=16)
    assert 0.0 <= result["probe_shape"] <= 1.0


def test_schedule_and_batches() -> None:
    assert warmup_cosine(0, 100) == pytest.approx(0.2) and warmup_cosine(4, 100) == 1.0
    assert warmup_cosine(99, 100) < 0.01
    batches = list(pair_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert len(set(torch.cat(batches[:2]).tolist())) == 8  # no pair twice within an epoch


def test_save_and_load_round_trip(tmp_path) -> None:
    feats = synthetic_features()
    feats.meta = {"image_res": 98}
    feats.save(tmp_path / "f.pt")
    loaded = FrozenFeatures.load(tmp_path / "f.pt")
    assert torch.equal(loaded.train_text, feats.train_text) and loaded.meta == feats.meta
    assert torch.equal(loaded.test_labels["shape"], feats.test_labels["shape"])
