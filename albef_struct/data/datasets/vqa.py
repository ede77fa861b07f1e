"""The VQA dataset: questions with ALBEF's answer weights (train) or question ids (test)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from ..text import pre_question
from .base import PathLike, RecordImageDataset, Transform

__all__ = ["VQADataset", "vqa_answer_weights"]


def vqa_answer_weights(answers: str | Sequence[str], source: str = "vqa") -> tuple[list[str], list[float]]:
    """ALBEF's answer weights: VQA gives each distinct answer count/len(answers); VG gives 0.5."""
    items = [answers] if isinstance(answers, str) else list(answers)
    counts = Counter(items)
    total = len(items)
    scale = 0.5 if source == "vg" else 1.0
    return list(counts), [scale * n / total for n in counts.values()]


class VQADataset(RecordImageDataset):
    """VQA questions.

    ``split='train'`` → ``{image, question, answers, weights, index}`` (ALBEF weights, see
    ``vqa_answer_weights``); ``split='test'`` → ``{image, question, question_id, index}``
    plus ``answers`` (the annotators' list) when the record has them.

    Args:
        files: annotation JSON files (schema ``vqa_train`` or ``vqa_test``).
        image_root: folder for VQA (COCO) images.
        transform: PIL image → tensor.
        split: 'train' or 'test'.
        max_words: ``pre_question`` word limit (None: ALBEF's 30 for train, 50 for test).
        vg_root: folder for records with ``dataset == 'vg'`` (None: ``image_root``).
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        split: Literal["train", "test"] = "train",
        max_words: int | None = None,
        *,
        vg_root: PathLike | None = None,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"VQADataset split must be 'train' or 'test', got {split!r}.")
        super().__init__(files, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist, vg_root=vg_root, schema=f"vqa_{split}")
        self.split = split
        self.max_words = max_words if max_words is not None else (30 if split == "train" else 50)

    def item(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        out: dict[str, Any] = {
            "image": self.load(index),
            "question": pre_question(rec["question"], self.max_words),
            "index": index,
        }
        if self.split == "train":
            out["answers"], out["weights"] = vqa_answer_weights(rec["answer"], rec["dataset"])
        else:
            qid = rec["question_id"]
            out["question_id"] = int(qid) if isinstance(qid, str) and qid.strip().isdigit() else qid
            if "answer" in rec:
                answer = rec["answer"]
                out["answers"] = [answer] if isinstance(answer, str) else list(answer)
        return out
