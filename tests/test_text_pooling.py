"""``arch.text_pooling``: what the text projection (ITC, retrieval, private heads) sees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albef_struct.models import ALBEF, ALBEFConfig
from tests.conftest import tiny_config


def _model(pooling: str) -> ALBEF:
    torch.manual_seed(0)
    return ALBEF(tiny_config(text_pooling=pooling, private_heads=True)).eval()


def _text() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0], [101, 1037, 2417, 4418, 2157, 102]])
    mask = (ids != 0).long()
    return ids, mask


def test_cls_pooling_is_albef_default_and_uses_the_first_token() -> None:
    assert ALBEFConfig().text_pooling == "cls"
    model = _model("cls")
    ids, mask = _text()
    with torch.no_grad():
        text = model.encode_text(ids, mask)
    torch.testing.assert_close(text.pooled, text.embeds[:, 0])
    torch.testing.assert_close(text.feat, F.normalize(model.text_proj(text.embeds[:, 0]), dim=-1))


def test_mean_pooling_averages_unpadded_tokens_only() -> None:
    model = _model("mean")
    ids, mask = _text()
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        # padding must not matter: changing the padded positions' states leaves the feature unchanged
        expected = torch.stack([text.embeds[0, :4].mean(0), text.embeds[1].mean(0)])
    torch.testing.assert_close(text.pooled, expected)
    torch.testing.assert_close(text.feat, F.normalize(model.text_proj(expected), dim=-1))


def test_mean_pooling_separates_captions_whose_cls_state_is_identical() -> None:
    """The reason for the option: a text encoder whose [CLS] ignores the rest of the sentence."""
    model = _model("mean")
    for layer in model.text_encoder.layer:  # no value path: each token's state depends on that token alone
        layer.attention.self.value.weight.data.zero_()
    ids = torch.tensor([[101, 2417, 4418, 102], [101, 2630, 2675, 102]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        cls_model = _model("cls")
        cls_model.load_state_dict(model.state_dict())
        cls_text = cls_model.encode_text(ids, mask)
    assert (cls_text.feat[0] @ cls_text.feat[1]).item() == pytest.approx(1.0, abs=1e-6)
    assert (text.feat[0] @ text.feat[1]).item() < 0.99


def test_private_features_use_the_same_pooling() -> None:
    model = _model("mean")
    ids, mask = _text()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(ids, mask)
        image_private, text_private = model.private_features(image, text)
    torch.testing.assert_close(image_private, F.normalize(model.vision_private_proj(image.embeds[:, 0]), dim=-1))
    torch.testing.assert_close(text_private, F.normalize(model.text_private_proj(text.pooled), dim=-1))


def test_unknown_pooling_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="text_pooling must be one of"):
        tiny_config(text_pooling="max")
