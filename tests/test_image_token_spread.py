"""experiments/image_token_spread.py: the spread of image-encoder outputs across images, and its command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from albef_struct import inference
from experiments.image_token_spread import main, token_spread


def test_identical_images_have_no_spread_and_opposite_ones_their_full_norm():
    same = torch.randn(1, 5, 8).expand(4, 5, 8)
    assert token_spread(same)["spread"] == pytest.approx(0.0, abs=1e-6)
    assert token_spread(same)["ratio"] == pytest.approx(0.0, abs=1e-6)
    token = torch.zeros(8)
    token[0] = 3.0
    opposite = torch.stack([token, -token]).view(2, 1, 8)  # mean 0: each token is its norm away from it
    assert token_spread(opposite) == pytest.approx({"token_norm": 3.0, "spread": 3.0, "ratio": 1.0})


def test_one_image_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        token_spread(torch.randn(1, 5, 8))


def test_the_command_reports_each_checkpoint_on_the_same_images(pretrain_ckpt, demo_dir, tmp_path):
    out = tmp_path / "spread.json"
    assert main(["--ckpt", str(pretrain_ckpt), "--images", str(demo_dir / "images" / "test"), "--limit", "5",
                 "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert len(written["images"]) == 5
    loaded = inference.load(pretrain_ckpt)
    with torch.no_grad():
        images = torch.stack([loaded.transform(Image.open(path).convert("RGB")) for path in written["images"]])
        tokens = loaded.model.encode_image(images).embeds
    assert written["results"][str(pretrain_ckpt)] == pytest.approx(token_spread(tokens))
    assert 0.0 < written["results"][str(pretrain_ckpt)]["ratio"] < 1.5  # random weights: distinct images differ


def test_a_folder_without_two_images_is_named(tmp_path):
    with pytest.raises(SystemExit, match="found 0 image"):
        main(["--ckpt", "x.ckpt", "--images", str(tmp_path)])
