"""Collate functions: stack images, tokenize text, drop skipped items and count them in ``n_skipped``."""

from __future__ import annotations

from typing import Any

import torch

from .tokenizer import ALBEFTokenizer

__all__ = [
    "ImageTextCollate",
    "RetrievalImageCollate",
    "RetrievalTextCollate",
    "VQATrainCollate",
    "VQATestCollate",
    "ClassificationCollate",
    "NLVRCollate",
    "VECollate",
    "is_empty_batch",
]

Batch = dict[str, Any]


def _drop_skipped(items: list[dict | None]) -> tuple[list[dict], Batch]:
    kept = [it for it in items if it is not None]
    return kept, {"n_skipped": torch.tensor(len(items) - len(kept), dtype=torch.long)}


def _long(values: list[Any]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _stack(kept: list[dict], key: str) -> torch.Tensor:
    return torch.stack([it[key] for it in kept])


def is_empty_batch(batch: Batch) -> bool:
    """True when every item of the batch was skipped (the batch then holds only ``n_skipped``)."""
    return set(batch) == {"n_skipped"}


class _TextCollate:
    """Holds the tokenizer (picklable) and the token-length settings."""

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None, truncation: bool = True) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation and max_length is not None

    def _tokenize(self, texts: list[str], padding: str = "longest") -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, max_length=self.max_length, padding=padding, truncation=self.truncation)


class ImageTextCollate(_TextCollate):
    """Pretraining / retrieval training → ``image`` [B,3,R,R] float, ``input_ids``,
    ``attention_mask`` [B,L] long, ``index``, ``image_idx`` [B] long, ``n_skipped`` 0-dim long;
    with a second augmented view also ``image_aug``, ``input_ids_aug``, ``attention_mask_aug``.

    ``max_length`` (counting [CLS]) truncates when ``truncation``; ALBEF: 25 truncated for
    pretraining, untruncated for retrieval.
    """

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None = 25, truncation: bool = True) -> None:
        super().__init__(tokenizer, max_length, truncation)

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        tokens = self._tokenize([it["text"] for it in kept])
        batch.update(
            image=_stack(kept, "image"),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            index=_long([it["index"] for it in kept]),
            image_idx=_long([it["image_idx"] for it in kept]),
        )
        if "image_aug" in kept[0]:  # second augmented view
            aug = self._tokenize([it["text_aug"] for it in kept])
            batch.update(
                image_aug=_stack(kept, "image_aug"),
                input_ids_aug=aug["input_ids"],
                attention_mask_aug=aug["attention_mask"],
            )
        return batch


class RetrievalImageCollate:
    """Retrieval evaluation images → ``image`` [B,3,R,R], ``image_index`` [B] long, ``n_skipped``."""

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if kept:
            batch.update(image=_stack(kept, "image"), image_index=_long([it["image_index"] for it in kept]))
        return batch


#: Retrieval evaluation pads (and truncates) every text to this many tokens, as ALBEF's evaluation does.
RETRIEVAL_EVAL_TOKENS = 30


class RetrievalTextCollate(_TextCollate):
    """Retrieval evaluation texts → ``input_ids``, ``attention_mask`` [B,max_length] (padded to
    ``max_length`` as ALBEF's evaluation), ``text_index``, ``image_index`` [B] long, ``n_skipped``."""

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int = RETRIEVAL_EVAL_TOKENS) -> None:
        super().__init__(tokenizer, max_length, truncation=True)

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        tokens = self._tokenize([it["text"] for it in kept], padding="max_length")
        batch.update(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            text_index=_long([it["text_index"] for it in kept]),
            image_index=_long([it["image_index"] for it in kept]),
        )
        return batch


class VQATrainCollate(_TextCollate):
    """VQA training → ``image``, ``question_ids``/``question_mask`` [B,Lq], ``answer_ids``/
    ``answer_mask`` [sum n,La] (``[CLS] answer [SEP]``), ``answer_weights`` float [sum n],
    ``answers_per_question`` long [B], ``index`` [B], ``n_skipped``.

    Answers of question i are rows ``sum(n[:i]) … sum(n[:i+1])``. ``max_length`` applies to
    questions (ALBEF: 25, truncated); ``answer_max_length`` optionally caps answers.
    """

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None = 25, answer_max_length: int | None = None) -> None:
        super().__init__(tokenizer, max_length, truncation=True)
        self.answer_max_length = answer_max_length

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        questions = self._tokenize([it["question"] for it in kept])
        answers = self.tokenizer.encode_answers([a for it in kept for a in it["answers"]], self.answer_max_length)
        batch.update(
            image=_stack(kept, "image"),
            question_ids=questions["input_ids"],
            question_mask=questions["attention_mask"],
            answer_ids=answers["input_ids"],
            answer_mask=answers["attention_mask"],
            answer_weights=torch.tensor([w for it in kept for w in it["weights"]], dtype=torch.float32),
            answers_per_question=_long([len(it["answers"]) for it in kept]),
            index=_long([it["index"] for it in kept]),
        )
        return batch


class VQATestCollate(_TextCollate):
    """VQA evaluation → ``image``, ``question_ids``/``question_mask`` [B,Lq], ``question_id``
    [B] long (a list when ids are not integers), ``index`` [B], ``n_skipped``, and ``answers``
    (list of lists of str) when the records have them. ALBEF does not truncate test questions.
    """

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None = None) -> None:
        super().__init__(tokenizer, max_length, truncation=True)

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        questions = self._tokenize([it["question"] for it in kept])
        qids = [it["question_id"] for it in kept]
        batch.update(
            image=_stack(kept, "image"),
            question_ids=questions["input_ids"],
            question_mask=questions["attention_mask"],
            question_id=_long(qids) if all(isinstance(q, int) for q in qids) else qids,
            index=_long([it["index"] for it in kept]),
        )
        if any("answers" in it for it in kept):
            batch["answers"] = [list(it.get("answers", [])) for it in kept]
        return batch


class ClassificationCollate(_TextCollate):
    """Image(s) + sentence + class label → the ``image_keys`` tensors, ``input_ids``,
    ``attention_mask``, ``label`` [B] long, ``index`` [B] long, ``n_skipped``."""

    def __init__(self, tokenizer: ALBEFTokenizer, image_keys: tuple[str, ...] = ("image",), max_length: int | None = None) -> None:
        super().__init__(tokenizer, max_length, truncation=True)
        self.image_keys = tuple(image_keys)

    def __call__(self, items: list[dict | None]) -> Batch:
        kept, batch = _drop_skipped(items)
        if not kept:
            return batch
        tokens = self._tokenize([it["text"] for it in kept])
        batch.update({key: _stack(kept, key) for key in self.image_keys})
        batch.update(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            label=_long([it["label"] for it in kept]),
            index=_long([it["index"] for it in kept]),
        )
        return batch


class NLVRCollate(ClassificationCollate):
    """NLVR2 → ``image0``, ``image1`` [B,3,R,R], ``input_ids``, ``attention_mask``, ``label``, ``index``, ``n_skipped``."""

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None = None) -> None:
        super().__init__(tokenizer, ("image0", "image1"), max_length)


class VECollate(ClassificationCollate):
    """SNLI-VE → ``image`` [B,3,R,R], ``input_ids``, ``attention_mask``, ``label``, ``index``, ``n_skipped``."""

    def __init__(self, tokenizer: ALBEFTokenizer, max_length: int | None = None) -> None:
        super().__init__(tokenizer, ("image",), max_length)
