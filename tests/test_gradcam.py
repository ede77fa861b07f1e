"""Grad-CAM of the ITM score: the gradient-weighted cross-attention, box scores, and `albef-struct explain`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from albef_struct import inference
from albef_struct.cli import main
from albef_struct.inference.gradcam import box_scores, default_layer, itm_gradcam
from albef_struct.models import ALBEF
from albef_struct.models.text import additive_mask, bert_attention
from tests.conftest import tiny_config


def tiny_model(seed: int = 0) -> ALBEF:
    torch.manual_seed(seed)
    config = tiny_config(vision=replace(tiny_config().vision, img_size=64))  # a 4 x 4 patch grid
    config = replace(config, text=replace(config.text, layers=5, fusion_layer=2))  # three fusion layers
    model = ALBEF(config).eval()
    with torch.no_grad():  # a random ITM head that is not flat, so the gradients are not all tiny
        model.itm_head.weight.mul_(50)
    return model


def direct_gradcam(model: ALBEF, images, ids, mask, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantity written out by hand: the fusion layers run step by step, the chosen layer's
    cross-attention probabilities computed from its weights as an explicit leaf, and autograd for dS/dA."""
    image = model.encode_image(images).embeds
    hidden = model.encode_text(ids, mask).embeds
    text_mask = additive_mask(mask, hidden.dtype)
    for i, block in enumerate(model.fusion_encoder.layer):
        if i != layer:
            hidden = block(hidden, text_mask, image, None)
            continue
        hidden = block.attention(hidden, text_mask)[0]
        cross = block.crossattention.self
        b, length, heads, width = *hidden.shape[:2], cross.num_attention_heads, cross.attention_head_size
        query = cross.query(hidden).view(b, length, heads, width).transpose(1, 2)
        key = cross.key(image).view(b, -1, heads, width).transpose(1, 2)
        value = cross.value(image).view(b, -1, heads, width).transpose(1, 2)
        probs = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(width), dim=-1).detach().requires_grad_()
        context = (probs @ value).transpose(1, 2).reshape(b, length, heads * width)
        hidden = block.crossattention.output(context, hidden)
        hidden = block.output(block.intermediate(hidden), hidden)
    logit = model.itm_logits(hidden)[:, 1]
    (grad,) = torch.autograd.grad(logit.sum(), probs)
    cam = (probs[..., 1:] * grad[..., 1:].clamp_min(0)).mean(dim=1)
    return cam.reshape(b, length, 4, 4) * mask[:, :, None, None], logit


@pytest.mark.parametrize("layer", [0, 2])
def test_gradcam_is_the_gradient_weighted_cross_attention(layer):
    model = tiny_model()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(1000, 5000, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[:, 0] = 101
    cam = itm_gradcam(model, images, ids, mask, layer)
    expected, logit = direct_gradcam(model, images, ids, mask, layer)
    assert cam.token_maps.shape == (3, 7, 4, 4) and cam.layer == layer
    assert expected.abs().sum() > 0 and (cam.token_maps[1, 4:] == 0).all()
    torch.testing.assert_close(cam.token_maps, expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(cam.score, logit.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cam.text_map[1], expected[1, :4].mean(0), rtol=1e-4, atol=1e-9)
    assert bert_attention(model.fusion_encoder.layer[0]) == model.config.attention
    assert default_layer(model) == 2 and not model.training


def test_gradcam_refuses_what_it_cannot_explain():
    model = tiny_model()
    ids = torch.full((1, 3), 1000)
    with pytest.raises(ValueError, match=r"layer 3 is not a fusion layer: this model has 3 \(0 to 2\)"):
        itm_gradcam(model, torch.zeros(1, 3, 64, 64), ids, torch.ones_like(ids), layer=3)
    no_itm = ALBEF(replace(tiny_config(), itm_head=False))
    with pytest.raises(ValueError, match="no ITM head"):
        itm_gradcam(no_itm, torch.zeros(1, 3, 32, 32), ids, torch.ones_like(ids))


def test_box_scores_on_known_maps():
    uniform = torch.ones(4, 4)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 4.0], [4.0, 4.0, 4.0, 4.0]])
    torch.testing.assert_close(box_scores(uniform, boxes, (16, 16)), torch.tensor([8.0, 8.0, 4.0]))  # mass / sqrt(area)
    peak = torch.zeros(4, 4)
    peak[3, 0] = 1.0  # bottom-left patch
    scores = box_scores(peak, torch.tensor([[0.0, 12.0, 4.0, 4.0], [12.0, 0.0, 4.0, 4.0], [0.0, 0.0, 16.0, 16.0]]),
                        (16, 16))
    assert scores.argmax() == 0 and scores[1] < scores[0] / 10


def test_explain_writes_the_picture_from_a_checkpoint_and_an_official_file(pretrain_ckpt, tmp_path, capsys):
    from PIL import Image

    from albef_struct.checkpoint.export import export_albef
    from albef_struct.checkpoint.files import load_checkpoint_file

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "explain.png"
    assert main(["explain", "--ckpt", str(pretrain_ckpt), "--image", str(tmp_path / "red.png"), "--text",
                 "a red square", "--out", str(out), "--maps", str(tmp_path / "maps.pt")]) == 0
    assert out.stat().st_size > 10_000 and "4 token map(s) (itm, layer 0)" in capsys.readouterr().out
    maps = torch.load(tmp_path / "maps.pt", weights_only=False)
    assert maps["tokens"] == ["[CLS]", "a", "red", "square"] and maps["token_maps"].shape[0] == 4
    ours = inference.load(pretrain_ckpt).explain(tmp_path / "red.png", "a red square")
    torch.testing.assert_close(maps["text_map"], ours.text_map)

    official = tmp_path / "ALBEF_tiny.pth"
    torch.save({"model": export_albef(load_checkpoint_file(pretrain_ckpt)["state_dict"], "pretrain")}, official)
    config = inference.load(pretrain_ckpt).config
    (tmp_path / "heads.yaml").write_text(f"vision: {{heads: {config.vision.heads}}}\ntext: {{heads: {config.text.heads}}}\n")
    assert main(["explain", "--ckpt", str(official), "--arch", str(tmp_path / "heads.yaml"), "--image",
                 str(tmp_path / "red.png"), "--text", "a red square", "--out", str(tmp_path / "official.png"),
                 "--maps", str(tmp_path / "official.pt")]) == 0
    torch.testing.assert_close(torch.load(tmp_path / "official.pt", weights_only=False)["text_map"], ours.text_map)


def direct_itc_gradcam(model: ALBEF, images, ids, mask, block: int) -> torch.Tensor:
    """ITC mode written out: the ViT run block by block, block ``block``'s attention probabilities an explicit leaf."""
    encoder = model.visual_encoder
    x = encoder.norm_pre(encoder.patch_drop(encoder._pos_embed(encoder.patch_embed(images))))
    for i, layer in enumerate(encoder.blocks):
        if i != block:
            x = layer(x)
            continue
        attn, h = layer.attn, layer.norm1(x)
        b, n, _ = h.shape
        q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        probs = torch.softmax(q * attn.scale @ k.transpose(-2, -1), dim=-1).detach().requires_grad_()
        mixed = attn.proj((probs @ v).transpose(1, 2).reshape(b, n, -1))
        x = x + layer.ls1(mixed)
        x = x + layer.ls2(layer.mlp(layer.norm2(x)))
    tokens = encoder.norm(x)
    torch.testing.assert_close(tokens, encoder(images))  # the hand-written pass is the encoder's
    image_feat = torch.nn.functional.normalize(model.vision_proj(tokens[:, 0]), dim=-1)
    similarity = (image_feat * model.encode_text(ids, mask).feat).sum(-1) / model.temp
    (grad,) = torch.autograd.grad(similarity.sum(), probs)
    return (probs[:, :, 0, 1:] * grad[:, :, 0, 1:].clamp_min(0)).mean(dim=1).reshape(b, 4, 4)


def test_itc_gradcam_is_the_gradient_weighted_cls_attention():
    from albef_struct.inference.gradcam import gradcam

    model = tiny_model()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(1000, 5000, (2, 5), generator=torch.Generator().manual_seed(4))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    cam = gradcam(model, images, ids, mask, mode="itc", layer=0)
    expected = direct_itc_gradcam(model, images, ids, mask, block=0)
    assert cam.mode == "itc" and cam.match_probability is None and expected.abs().sum() > 0
    torch.testing.assert_close(cam.text_map, expected, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="mode must be one of"):
        gradcam(model, images, ids, mask, mode="vit")
