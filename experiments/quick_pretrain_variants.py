"""Two changes to the quick pretraining that were measured and not kept (README, "What was tried").

    python -m experiments.quick_pretrain_variants --variant word-swap-negatives -- \
        fit --config configs/demo/pretrain_small.yaml --config configs/demo/quick/common.yaml \
        --config configs/demo/quick/pretrain.yaml --seed_everything 42

Everything after ``--`` goes to the ``albef-struct`` command line unchanged; the variant is
patched into the library classes first, in this process only:

- ``word-swap-negatives``: ITM gets one more negative pair per image, the image with a caption of
  its own record in which one word is swapped for its opposite (left/right, above/below,
  top/bottom, small/large, a count one off), so the pair is false only in a position, a relation,
  a size or a count: the hypothesis kinds SNLI-VE's fine-tuning reads at chance (a record none of
  whose captions has such a word gets "nothing"). The ITM prior becomes 1 match : 3 non-matches
  (loss 0.562). The README's row was measured with the 4B pairs in one fusion call, the same loss.
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
    itm = alignment.AlignmentMixin.itm

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

    def itm_with_swapped_pairs(self, image, text, mask, sim_i2t, sim_t2i, image_ids=None) -> torch.Tensor:
        """ALBEF's ITM over B matched and 2B in-batch pairs, with B (image, its swapped caption) non-matches
        added: the mean over 4B pairs is (3 x ALBEF's mean + the swapped pairs' mean) / 4."""
        loss = itm(self, image, text, mask, sim_i2t, sim_t2i, image_ids)
        extra = getattr(self, "_negative_batch", None)
        if not (self.training and extra is not None and "negative_ids" in extra):
            return loss
        negative = self.model.encode_text(extra["negative_ids"], extra["negative_mask"])
        fused = self.model.fuse(negative.embeds, extra["negative_mask"], image.embeds,
                                first_token_only=self.itm_first_token_only)
        logits = self.model.itm_logits(fused).float()
        swapped = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
        return (3 * loss + swapped) / 4

    image_text.PretrainDataset.item = item_with_negative
    collate.ImageTextCollate.__call__ = call_with_negative
    pretrain.PretrainModule.pretrain_losses = losses_seeing_batch
    alignment.AlignmentMixin.itm = itm_with_swapped_pairs


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
