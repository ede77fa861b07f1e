"""The VQA DataModule: training questions with weighted answers, and answer ranking at val/test/predict."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ..collate import VQATestCollate, VQATrainCollate
from ..datasets import VQADataset
from ..records import load_answer_list
from .base import ALBEFDataModule

__all__ = ["VQADataModule"]


class VQADataModule(ALBEFDataModule):
    """VQA fine-tuning and answer ranking (VQA v2 + Visual Genome format).

    Batches: see ``VQATrainCollate`` (train) and ``VQATestCollate`` (val/test/predict).
    ``answer_list`` holds the candidate answers and ``answer_list_tokens`` their
    ``[CLS] answer [SEP]`` ids and mask.

    Args:
        train_files: VQA-train JSON files (``{dataset?, image, question, answer}``).
        val_file: VQA JSON with ``question_id`` and (for accuracy) ``answer``.
        test_file: VQA-test JSON (``{image, question, question_id}``); also used by predict.
        answer_list: JSON list of candidate answers (needed for val/test/predict).
        vg_root: image folder for records with ``dataset == 'vg'`` (None: ``image_root``).
        eval_max_words: ``pre_question`` word limit at val/test (ALBEF: 50; ``max_words``
            applies to training questions, ALBEF: 30).
        image_res: image size (ALBEF: 384).
        **kwargs: the ``ALBEFDataModule`` arguments (``image_root`` is the VQA/COCO folder).
    """

    max_tokens_default = 25

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        answer_list: str | None = None,
        vg_root: str | None = None,
        eval_max_words: int = 50,
        image_res: int = 384,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self.eval_max_words = eval_max_words
        self.train_files = [train_files] if isinstance(train_files, str) else train_files
        self.val_file, self.test_file = val_file, test_file
        self.answer_list_file, self.vg_root = answer_list, vg_root
        self._answer_list: list[str] | None = None
        self._answer_tokens: dict[str, torch.Tensor] | None = None

    @property
    def answer_list(self) -> list[str]:
        """Candidate answers, in file order."""
        if self._answer_list is None:
            if self.answer_list_file is None:
                raise ValueError("VQADataModule needs answer_list=<JSON list of candidate answers> to rank answers.")
            self._answer_list = load_answer_list(self.answer_list_file)
        return self._answer_list

    @property
    def answer_list_tokens(self) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` [n_answers, La] of ``[CLS] answer [SEP]``."""
        if self._answer_tokens is None:
            self._answer_tokens = self.tokenizer.encode_answers(self.answer_list)
        return self._answer_tokens

    def setup(self, stage: str | None = None) -> None:
        splits = self._stages(stage)
        if "train" in splits and self.train_files:
            self._build("train", lambda: VQADataset(
                self.train_files, self.image_root, self.train_image_transform(), "train", self.max_words,
                vg_root=self.vg_root, **self.dataset_options()))
        for split, file in (("val", self.val_file), ("test", self.test_file)):
            if split in splits and file is not None:
                self._build(split, lambda file=file: VQADataset(
                    file, self.image_root, self.eval_image_transform(), "test", self.eval_max_words,
                    vg_root=self.vg_root, **self.dataset_options()))
        if splits & {"val", "test"} and self.answer_list_file is not None:
            self.answer_list  # validate now rather than at the first eval step

    def question_records(self, split: str) -> list[dict]:
        """The validated records of ``split`` ('train' or 'test'; [] without its file), images not loaded."""
        files = self.train_files if split == "train" else self.test_file
        if not files:
            return []
        dataset = VQADataset(files, self.image_root, None, "train" if split == "train" else "test",
                             vg_root=self.vg_root, **self.dataset_options())
        return dataset.records

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self._require("train", "fit"), VQATrainCollate(self.tokenizer, self.max_tokens))

    def _eval(self, split: str, stage: str) -> DataLoader | list:
        file = self.val_file if split == "val" else self.test_file
        if file is None:
            return []
        return self._eval_loader(self._require(split, stage), VQATestCollate(self.tokenizer, max_length=None))

    def val_dataloader(self) -> DataLoader | list:
        return self._eval("val", "validate")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval("test", "test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval("test", "predict")
