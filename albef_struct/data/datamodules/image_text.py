"""DataModules of image-caption pairs: pretraining and retrieval fine-tuning, evaluated by retrieval."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from ..collate import ImageTextCollate, RetrievalImageCollate, RetrievalTextCollate
from ..datasets import PretrainDataset, RetrievalEvalDataset, RetrievalTrainDataset
from ..text_augment import WordDropSwap
from ..transforms import pretrain_transform
from .base import PRETRAIN_CROP_SCALE, ALBEFDataModule

__all__ = ["PretrainDataModule", "RetrievalDataModule"]


class _RetrievalEvalMixin:
    """val/test as retrieval evaluation sets: two loaders, [images, texts]."""

    eval_sets: dict[str, RetrievalEvalDataset]

    def _setup_eval(self, split: str, file: str | None) -> None:
        if file is None:
            return
        ds = self._build(split, lambda: RetrievalEvalDataset(
            file, self.image_root, self.eval_image_transform(), self.max_words, **self.dataset_options()))
        self.eval_sets[split] = ds

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        if split not in self.eval_sets:
            return []
        ds = self.eval_sets[split]
        return [
            self._eval_loader(ds, RetrievalImageCollate()),
            self._eval_loader(ds.text_dataset(), RetrievalTextCollate(self.tokenizer)),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        """[image loader (dataloader_idx 0), text loader (dataloader_idx 1)]; [] without a val file."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        """[image loader (dataloader_idx 0), text loader (dataloader_idx 1)]; [] without a test file."""
        return self._eval_loaders("test")


class PretrainDataModule(_RetrievalEvalMixin, ALBEFDataModule):
    """Image–caption pretraining, with optional zero-shot retrieval val/test sets.

    Batches: see ``ImageTextCollate`` (train) and ``RetrievalImageCollate`` /
    ``RetrievalTextCollate`` (val/test, two dataloaders: 0 = images, 1 = texts).
    ``eval_sets['val'|'test']`` hold ``texts``, ``img2txt`` and ``txt2img``.

    Args:
        train_files: pretraining JSON files (``{image, caption: str | [str, ...]}``).
        val_file: optional retrieval-eval JSON (``{image, caption: [str, ...]}``) for zero-shot val.
        test_file: optional retrieval-eval JSON for zero-shot test.
        image_res: image size (ALBEF: 256).
        second_view: also yield a second augmented view of every pair (``image_aug``,
            ``input_ids_aug``, ``attention_mask_aug``) for the latent-structure losses.
        text_delete_prob, text_swaps: the second view's EDA-style word deletion / swaps.
        **kwargs: the ``ALBEFDataModule`` arguments.
    """

    crop_scale_default = PRETRAIN_CROP_SCALE
    max_tokens_default = 25

    def __init__(
        self,
        train_files: list[str],
        val_file: str | None = None,
        test_file: str | None = None,
        image_res: int = 256,
        second_view: bool = False,
        text_delete_prob: float = 0.1,
        text_swaps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files)
        self.val_file, self.test_file = val_file, test_file
        self.text_augment = WordDropSwap(text_delete_prob, text_swaps) if second_view else None
        if second_view and self.image_cache is not None:
            raise ValueError("second_view needs augmented images, which data.init_args.image_cache does not hold: "
                             "drop one of the two")
        self.eval_sets = {}

    def train_image_transform(self):
        return pretrain_transform(self.image_res, self.crop_scale, self.hflip, self.randaugment)

    def setup(self, stage: str | None = None) -> None:
        splits = self._stages(stage)
        if "train" in splits:
            self._build("train", lambda: PretrainDataset(
                self.train_files, self.image_root, self.train_image_transform(), self.max_words,
                seed=self.seed, text_augment=self.text_augment, **self.dataset_options()))
        if "val" in splits:
            self._setup_eval("val", self.val_file)
        if "test" in splits:
            self._setup_eval("test", self.test_file)

    @property
    def train_dataset(self) -> PretrainDataset:
        return self._require("train", "fit")

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_dataset, ImageTextCollate(self.tokenizer, self.max_tokens, truncation=True))


class RetrievalDataModule(_RetrievalEvalMixin, ALBEFDataModule):
    """Image–text retrieval fine-tuning (COCO / Flickr30k format).

    Batches: see ``ImageTextCollate`` (train; ``image_idx`` numbers ``image_id``) and, for
    val/test, two dataloaders (0 = images, 1 = texts); ``eval_sets['val'|'test']`` hold
    ``texts``, ``img2txt`` and ``txt2img``.

    Args:
        train_file: retrieval-train JSON file(s) (``{image, caption: str, image_id}``).
        val_file: retrieval-eval JSON (``{image, caption: [str, ...]}``).
        test_file: retrieval-eval JSON.
        image_res: image size (ALBEF: 384).
        **kwargs: the ``ALBEFDataModule`` arguments.
    """

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_res: int = 384,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.eval_sets = {}

    def setup(self, stage: str | None = None) -> None:
        splits = self._stages(stage)
        if "train" in splits and self.train_file is not None:
            self._build("train", lambda: RetrievalTrainDataset(
                self.train_file, self.image_root, self.train_image_transform(), self.max_words,
                **self.dataset_options()))
        if "val" in splits:
            self._setup_eval("val", self.val_file)
        if "test" in splits:
            self._setup_eval("test", self.test_file)

    @property
    def train_dataset(self) -> RetrievalTrainDataset:
        return self._require("train", "fit")

    def train_dataloader(self) -> DataLoader:
        # ALBEF passes max_length=30 without truncation=True, so training captions are not truncated.
        return self._train_loader(self.train_dataset, ImageTextCollate(self.tokenizer, self.max_tokens, truncation=True))
