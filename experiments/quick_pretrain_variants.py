"""Two changes to the quick pretraining that were measured and not kept (README, "What was tried").

    python -m experiments.quick_pretrain_variants --variant word-swap-negatives -- \
        fit --config configs/demo/pretrain_small.yaml --config configs/demo/quick/common.yaml \
        --config configs/demo/quick/pretrain.yaml --seed_everything 42

Everything after ``--`` goes to the ``albef-struct`` command line unchanged; the variant is
patched into the library classes first, in this process only:

- ``word-swap-negatives``: ITM gets one more negative pair per image, the image with a caption of
  its own record in which one word is swapped for its opposite (left/right, above/below,
  top/bottom, small/large, a count one off), so the pair is false only in a position, a relation,
  a size or a count: the hypothesis kinds SNLI-VE's fine-tuning reads at chance. The ITM prior
  becomes 1 match : 3 non-matches (loss 0.562).
- ``cross-attention-from-self``: each fusion layer's freshly initialised cross-attention starts as
  a copy of the same layer's pretrained self-attention (the shapes agree when the image width
  equals the text width, as in the small preset), instead of BERT's random initialisation.

Not product features: neither made the fusion layers read the image within the quick budget.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from albef_struct.data import collate
from albef_struct.data.datasets import image_text
from albef_struct.data.text import pre_caption
from albef_struct.lit import alignment, pretrain
from albef_struct.losses import itm_loss, sample_hard_negatives

OPPOSITES = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom",
             "bottom": "top", "small": "large", "large": "small", "one": "two", "two": "three",
             "three": "two", "four": "three"}


def swap_one_word(text: str, rng: np.random.Generator) -> str | None:
    """``text`` with one of its swappable words replaced by its opposite; None when it has none."""
    words = text.split()
    candidates = [i for i, word in enumerate(words) if word in OPPOSITES]
    if not candidates:
        return None
    i = candidates[int(rng.integers(len(candidates)))]
    words[i] = OPPOSITES[words[i]]
    return " ".join(words)


def patch_word_swap_negatives() -> None:
    """Items carry ``negative_text``, batches its tokens, and ITM scores those pairs as non-matches."""
    item = image_text.PretrainDataset.item
    call = collate.ImageTextCollate.__call__
    losses = pretrain.PretrainModule.pretrain_losses

    def item_with_negative(self, index: int) -> dict[str, Any]:
        out = item(self, index)
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        captions = self.records[index]["caption"]
        captions = [captions] if isinstance(captions, str) else list(captions)
        for text in [out["text"], *(pre_caption(c, self.max_words) for c in rng.permutation(captions))]:
            negative = swap_one_word(text, rng)
            if negative is not None:
                break
        out["negative_text"] = negative or "nothing"
        return out

    def call_with_negative(self, items: list[dict | None]) -> dict[str, Any]:
        batch = call(self, items)
        kept = [it for it in items if it is not None]
        if kept and "negative_text" in kept[0]:
            tokens = self._tokenize([it["negative_text"] for it in kept])
            batch["negative_ids"], batch["negative_mask"] = tokens["input_ids"], tokens["attention_mask"]
        return batch

    def losses_seeing_batch(self, batch: dict[str, Any], alpha: float) -> dict[str, torch.Tensor]:
        self._negative_batch = batch
        return losses(self, batch, alpha)

    def itm(self, image, text, mask, sim_i2t, sim_t2i, image_ids=None) -> torch.Tensor:
        uniform = self.global_step < self.itm_uniform_negative_steps
        neg_text, neg_image = sample_hard_negatives(sim_i2t, sim_t2i, image_ids, uniform=uniform)
        batch = mask.shape[0]
        own = torch.arange(batch, device=mask.device)
        texts, masks = [text.embeds, text.embeds, text.embeds[neg_text]], [mask, mask, mask[neg_text]]
        image_index = [own, neg_image, own]
        extra = getattr(self, "_negative_batch", None)
        if self.training and extra is not None and "negative_ids" in extra:
            negative = self.model.encode_text(extra["negative_ids"], extra["negative_mask"])
            texts.append(negative.embeds)
            masks.append(extra["negative_mask"])
            image_index.append(own)
        width = max(m.shape[1] for m in masks)
        texts = torch.cat([F.pad(t, (0, 0, 0, width - t.shape[1])) for t in texts])
        masks = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks])
        fused = self.model.fuse(texts, masks, image.embeds, first_token_only=self.itm_first_token_only,
                                image_index=torch.cat(image_index))
        logits = self.model.itm_logits(fused)
        return itm_loss(logits[:batch], logits[batch:])

    image_text.PretrainDataset.item = item_with_negative
    collate.ImageTextCollate.__call__ = call_with_negative
    pretrain.PretrainModule.pretrain_losses = losses_seeing_batch
    alignment.AlignmentMixin.itm = itm


def patch_cross_attention_from_self() -> None:
    """After the text weights are loaded, copy each fusion layer's self-attention into its cross-attention."""
    init_text = pretrain.init_text_from_hf

    def init_then_copy(model, source):
        report = init_text(model, source)
        with torch.no_grad():
            for layer in model.fusion_encoder.layer:
                layer.crossattention.load_state_dict(layer.attention.state_dict())
        return report

    pretrain.init_text_from_hf = init_then_copy


VARIANTS = {"word-swap-negatives": patch_word_swap_negatives,
            "cross-attention-from-self": patch_cross_attention_from_self}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cli_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    VARIANTS[parser.parse_args(own).variant]()
    from albef_struct.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
