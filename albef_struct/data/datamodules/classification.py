"""DataModules of labelled image-text classification tasks: NLVR2 and SNLI-VE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ..collate import NLVRCollate, VECollate
from ..datasets import NLVRDataset, VEDataset
from .base import ALBEFDataModule

__all__ = ["NLVRDataModule", "VEDataModule"]


class _ClassificationDataModule(ALBEFDataModule):
    """train/val/test files of one labelled schema (NLVR2, SNLI-VE)."""

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_res: int = 384,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self.files = {"train": train_file, "val": val_file, "test": test_file}

    def make_dataset(self, file: str | Sequence[str], transform) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_collate(self, train: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in self._stages(stage):
            file = self.files[split]
            if file is not None:
                transform = self.train_image_transform() if split == "train" else self.eval_image_transform()
                self._build(split, lambda file=file, transform=transform: self.make_dataset(file, transform))

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self._require("train", "fit"), self.make_collate(True))

    def _eval(self, split: str, stage: str) -> DataLoader | list:
        if self.files[split] is None:
            return []
        return self._eval_loader(self._require(split, stage), self.make_collate(False))

    def val_dataloader(self) -> DataLoader | list:
        return self._eval("val", "validate")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval("test", "test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval("test", "predict")


class NLVRDataModule(_ClassificationDataModule):
    """NLVR2 fine-tuning. Batches: see ``NLVRCollate`` (``image0``, ``image1``, text, label).

    Args:
        train_file: NLVR JSON file(s) (``{images: [p0, p1], sentence, label: 'True'|'False'}``).
        val_file: NLVR dev JSON.
        test_file: NLVR test-P JSON.
        image_res: image size (ALBEF: 384).
        **kwargs: the ``ALBEFDataModule`` arguments (set ``hflip=False`` when sentences
            talk about left and right inside an image).
    """

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_res: int = 384,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_file, val_file, test_file, image_res=image_res, **kwargs)

    def make_dataset(self, file, transform) -> NLVRDataset:
        return NLVRDataset(file, self.image_root, transform, self.max_words, **self.dataset_options())

    def make_collate(self, train: bool) -> NLVRCollate:
        return NLVRCollate(self.tokenizer, self.max_tokens)


class VEDataModule(_ClassificationDataModule):
    """SNLI-VE fine-tuning. Batches: see ``VECollate`` (image, text, label 2/1/0).

    Args:
        train_file: VE JSON file(s) (``{image: <id>, sentence, label}``).
        val_file: VE dev JSON.
        test_file: VE test JSON.
        image_ext: appended to each ``image`` id to form the file name.
        image_res: image size (ALBEF: 384).
        **kwargs: the ``ALBEFDataModule`` arguments (``image_root`` is the Flickr30k folder).
    """

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_ext: str = ".jpg",
        image_res: int = 384,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_file, val_file, test_file, image_res=image_res, **kwargs)
        self.image_ext = image_ext

    def make_dataset(self, file, transform) -> VEDataset:
        return VEDataset(file, self.image_root, transform, self.max_words, self.image_ext, **self.dataset_options())

    def make_collate(self, train: bool) -> VECollate:
        return VECollate(self.tokenizer, self.max_tokens)
