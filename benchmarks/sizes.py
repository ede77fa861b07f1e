"""Model sizes the benchmarks run and the synthetic batches they feed them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from albef_struct.models import ALBEFConfig, TextConfig, VisionConfig


@dataclass(frozen=True)
class Size:
    """One benchmarked architecture and its fixed batch."""

    name: str
    vision: VisionConfig
    text: TextConfig
    batch: int
    text_len: int
    note: str

    def arch(self, **overrides) -> ALBEFConfig:
        """The ALBEF config (dropout as in ALBEF); ``overrides`` set heads, attention, checkpointing."""
        return ALBEFConfig(vision=self.vision, text=self.text, **overrides)


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny",
        VisionConfig(img_size=64, patch_size=16, width=192, depth=4, heads=3),
        TextConfig(hidden=192, layers=6, fusion_layer=3, heads=3, intermediate=768),
        batch=32,
        text_len=25,
        note="ViT 192x4 @64px + BERT h192 3+3 (the environment notes' tiny size)",
    ),
    "small": Size(
        "small",
        VisionConfig(img_size=112, patch_size=16, width=384, depth=12, heads=6),
        TextConfig(hidden=384, layers=6, fusion_layer=3, heads=12, intermediate=1536),
        batch=16,
        text_len=25,
        note="ViT-S/16 (384x12, 6 heads) @112px + BERT h384 3+3, 12 heads (MiniLM-sized)",
    ),
    "base": Size(
        "base",
        VisionConfig(),
        TextConfig(),
        batch=2,
        text_len=25,
        note="ALBEF-base: ViT-B/16 @256px + BERT-base 6+6",
    ),
}


def text_batch(batch: int, length: int, generator: torch.Generator, vocab: int = 30522) -> dict[str, torch.Tensor]:
    """Random captions: ``[CLS]`` + word ids, lengths spread over ``[length/2, length]``, padded."""
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    ids[:, 0] = 101
    lengths = torch.randint(max(2, length // 2), length + 1, (batch,), generator=generator)
    lengths[0] = length  # the batch is padded to its longest caption
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def pretrain_batch(size: Size, batch: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Image-caption batch with ``index`` and ``image_idx`` (every pair a different image)."""
    g = torch.Generator().manual_seed(seed)
    n = batch or size.batch
    res = size.vision.img_size
    out = {"image": torch.randn(n, 3, res, res, generator=g), **text_batch(n, size.text_len, g)}
    out["index"] = torch.arange(n)
    out["image_idx"] = torch.arange(n)
    return out


def classification_batch(size: Size, classes: int, images: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """VE (one image) or NLVR2 (``image0``/``image1``) batch with random labels."""
    g = torch.Generator().manual_seed(seed)
    res, n = size.vision.img_size, size.batch
    out = text_batch(n, size.text_len, g)
    if images == 1:
        out["image"] = torch.randn(n, 3, res, res, generator=g)
    else:
        for k in range(images):
            out[f"image{k}"] = torch.randn(n, 3, res, res, generator=g)
    out["label"] = torch.randint(classes, (n,), generator=g)
    return out


def vqa_batch(size: Size, answers_per_question: int = 2, answer_len: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """VQA training batch: questions, ``answers_per_question`` answers each (``[CLS] word [SEP]``), weights."""
    g = torch.Generator().manual_seed(seed)
    res, n = size.vision.img_size, size.batch
    questions = text_batch(n, size.text_len, g)
    total = n * answers_per_question
    answer_ids = torch.randint(1000, 30522, (total, answer_len), generator=g)
    answer_ids[:, 0] = 101
    answer_ids[:, -1] = 102
    return {
        "image": torch.randn(n, 3, res, res, generator=g),
        "question_ids": questions["input_ids"],
        "question_mask": questions["attention_mask"],
        "answer_ids": answer_ids,
        "answer_mask": torch.ones_like(answer_ids),
        "answer_weights": torch.full((total,), 1.0 / answers_per_question),
        "answers_per_question": torch.full((n,), answers_per_question, dtype=torch.long),
        "index": torch.arange(n),
    }
