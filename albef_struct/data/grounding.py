"""Referring-expression grounding data: evaluation records with boxes, and their batches.

Evaluation records (schema ``grounding``): ``{"image", "text", "box": [x, y, w, h], "proposals":
[[x, y, w, h], ...]}`` with boxes in the original image's pixels (RefCOCO's convention), plus
any extra fields (``ref_id``, ``split``) kept as they are. Training files are retrieval-train
records (``{"image", "caption", "image_id"}``): ALBEF fine-tunes grounding as retrieval (ITC +
ITM) on expression-image pairs, with the image file as the id. Images are resized whole (no
crop: the boxes must stay on the image) in training and evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
from .collate import Batch, _drop_skipped, _TextCollate
from .datasets.base import RecordImageDataset
from .text import pre_caption

__all__ = ["GROUNDING_MAX_TOKENS", "GroundingCollate", "GroundingEvalDataset"]

#: ALBEF tokenises grounding expressions untruncated at evaluation; 30 tokens cover RefCOCO+'s
GROUNDING_MAX_TOKENS = 30


class GroundingEvalDataset(RecordImageDataset):
    """Evaluation records → ``{image, text, box, proposals, image_size, index}`` (boxes as float tensors)."""

    schema = "grounding"

    def __init__(self, files, image_root, transform, max_words: int = 30, **options: Any) -> None:
        super().__init__(files, image_root, transform, **options)
        self.max_words = max_words

    def item(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.load_raw(index)
        return {"image": self.transformed(image, index), "text": pre_caption(record["text"], self.max_words),
                "box": torch.tensor(record["box"], dtype=torch.float32),
                "proposals": torch.tensor(record["proposals"], dtype=torch.float32),
                "image_size": torch.tensor(image.size), "index": index}


class GroundingCollate(_TextCollate):
    """→ ``image`` [B,3,R,R], ``input_ids``/``attention_mask``, ``box`` [B,4], ``image_size`` [B,2] (width,
    height), ``index`` [B], ``proposals`` (a list of [N_i, 4]), ``n_skipped``."""

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        batch.update(self._tokenize([it["text"] for it in kept]))
        for key in ("image", "box", "image_size"):
            batch[key] = torch.stack([it[key] for it in kept])
        batch["index"] = torch.tensor([it["index"] for it in kept])
        batch["proposals"] = [it["proposals"] for it in kept]
        return batch
