"""experiments/quick_pretrain_variants.py: the two patched quick-pretraining variants compute what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from albef_struct.data import collate
from albef_struct.data.datasets import image_text
from albef_struct.data.tokenizer import ALBEFTokenizer
from albef_struct.lit import alignment, pretrain
from experiments import quick_pretrain_variants as variants
from tests.test_fast_paths import make_batch, make_module


@pytest.fixture
def restored(monkeypatch):
    """Every attribute a variant patches comes back after the test."""
    for owner, name in ((image_text.PretrainDataset, "item"), (collate.ImageTextCollate, "__call__"),
                        (pretrain.PretrainModule, "pretrain_losses"), (alignment.AlignmentMixin, "itm"),
                        (pretrain, "init_text_from_hf")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    return monkeypatch


def test_swap_one_word_flips_exactly_one_word_to_its_opposite():
    rng = np.random.default_rng(0)
    assert variants.swap_one_word("a red circle left of a blue square", rng) == "a red circle right of a blue square"
    assert variants.swap_one_word("a red circle and a blue square", rng) is None
    text = "two shapes: a small red circle in the top left"
    swapped = variants.swap_one_word(text, rng).split()
    changed = [(a, b) for a, b in zip(text.split(), swapped) if a != b]
    assert len(changed) == 1 and variants.OPPOSITES[changed[0][0]] == changed[0][1]


def test_word_swap_negatives_add_one_non_matching_pair_per_image_and_change_nothing_else(restored):
    module = make_module()
    batch = make_batch(n=4)
    enc = module.encode_batch(batch)
    sims = enc.image.feat @ enc.text.feat.T
    mask = batch["attention_mask"]
    torch.manual_seed(3)
    plain = module.itm(enc.image, enc.text, mask, sims.detach(), sims.T.detach())

    variants.patch_word_swap_negatives()
    negative = make_batch(n=4, length=7, seed=5)
    module._negative_batch = {"negative_ids": negative["input_ids"], "negative_mask": negative["attention_mask"]}
    rows = []
    hook = module.model.fusion_encoder.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    torch.manual_seed(3)  # the same in-batch negatives as the plain loss
    patched = module.itm(enc.image, enc.text, mask, sims.detach(), sims.T.detach())
    hook.remove()
    assert rows == [12, 4]  # ALBEF's B matched and 2B in-batch pairs, then the B word-swapped negatives

    text = module.model.encode_text(negative["input_ids"], negative["attention_mask"])
    fused = module.model.fuse(text.embeds, negative["attention_mask"], enc.image.embeds, first_token_only=True)
    extra = F.cross_entropy(module.model.itm_logits(fused).float(), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(patched, (3 * plain + extra) / 4, rtol=1e-5, atol=1e-6)

    del module._negative_batch  # a batch without negative captions: ALBEF's ITM exactly
    torch.manual_seed(3)
    torch.testing.assert_close(module.itm(enc.image, enc.text, mask, sims.detach(), sims.T.detach()), plain,
                               rtol=0, atol=0)


def test_word_swap_items_and_batches_carry_a_swapped_caption_of_their_own_record(restored):
    variants.patch_word_swap_negatives()
    dataset = image_text.PretrainDataset.__new__(image_text.PretrainDataset)
    dataset.records = [{"image": "x.jpg", "caption": ["a red circle and a cross", "a circle above a cross"]}]
    dataset.seed, dataset.max_words, dataset.text_augment = 0, 30, None
    dataset.image_idx = np.zeros(1, dtype=np.int64)
    dataset._epoch = torch.zeros((), dtype=torch.long)
    dataset.load = lambda index: torch.zeros(3, 8, 8)
    item = dataset.item(0)
    assert item["negative_text"] == "a circle below a cross" and item["index"] == 0
    batch = collate.ImageTextCollate(ALBEFTokenizer())([item, item])
    assert batch["negative_ids"].shape[0] == 2
    assert torch.equal(batch["negative_mask"].sum(1), batch["negative_mask"][:1].sum(1).repeat(2))


def test_cross_attention_from_self_copies_each_fusion_layers_self_attention(restored):
    restored.setattr(pretrain, "init_text_from_hf", lambda model, source: f"loaded {source}")
    variants.patch_cross_attention_from_self()
    module = make_module()  # tiny: image width 32 = text width 32
    assert pretrain.init_text_from_hf(module.model, "weights") == "loaded weights"
    for layer in module.model.fusion_encoder.layer:
        for (name, cross), (_, own) in zip(layer.crossattention.state_dict().items(),
                                           layer.attention.state_dict().items()):
            assert torch.equal(cross, own), name


def test_the_command_line_needs_a_known_variant():
    with pytest.raises(SystemExit):
        variants.main(["--variant", "nonsense", "--", "fit"])
