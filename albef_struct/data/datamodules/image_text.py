"""DataModules of image-caption pairs: pretraining and retrieval fine-tuning, evaluated by retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch.utils.data import DataLoader

from ..collate import ImageTextCollate, RetrievalImageCollate, RetrievalTextCollate
from ..datasets import PretrainDataset, RetrievalEvalDataset, RetrievalTrainDataset
from ..shards import ShardLoader, ShardStream
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


TRAIN_FORMATS = ("json", "shards")


class _TrainFormatMixin:
    """The training set as JSON records (map-style, resumable sampler) or as streamed tar shards."""

    format: str
    shuffle_buffer: int

    def _check_format(self, format: str, shuffle_buffer: int) -> None:
        if format not in TRAIN_FORMATS:
            raise ValueError(f"data.init_args.format must be one of {TRAIN_FORMATS}, got {format!r}")
        if format == "shards" and self.image_cache is not None:
            raise ValueError("data.init_args.image_cache is keyed by image files, which shards do not have: "
                             "use format: json with the image cache, or drop image_cache")
        if shuffle_buffer < 0:
            raise ValueError(f"data.init_args.shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.format, self.shuffle_buffer = format, shuffle_buffer

    def _shard_stream(self, folders: str | Sequence[str], text_augment: Any = None) -> ShardStream:
        stream = ShardStream([folders] if isinstance(folders, str) else list(folders), self.train_image_transform(),
                             self.batch_size, self.num_workers, self.max_words, self.seed, self.shuffle_buffer,
                             self.skip_bad_records, text_augment)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            stream.configure(trainer.global_rank, trainer.world_size)
        return stream

    def _training_loader(self, dataset: Any, collate: Any) -> DataLoader:
        if not isinstance(dataset, ShardStream):
            return self._train_loader(dataset, collate)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            dataset.configure(trainer.global_rank, trainer.world_size)
        options = {k: v for k, v in self._worker_options().items() if k != "num_workers"}
        return ShardLoader(dataset, collate, epoch_of=(lambda: trainer.current_epoch) if trainer is not None else None,
                           **options)


class PretrainDataModule(_TrainFormatMixin, _RetrievalEvalMixin, ALBEFDataModule):
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
        format: ``json`` (``train_files`` are JSON files) or ``shards`` (``train_files`` are folders written by
            ``python -m albef_struct.data_prep.make_shards``, streamed: see :mod:`albef_struct.data.shards`).
        shuffle_buffer: samples in each shard stream's shuffle buffer (``format: shards``).
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
        format: Literal["json", "shards"] = "json",
        shuffle_buffer: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self._check_format(format, shuffle_buffer)
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
        if "train" in splits and self.format == "shards":
            self._build("train", lambda: self._shard_stream(self.train_files, self.text_augment))
        elif "train" in splits:
            self._build("train", lambda: PretrainDataset(
                self.train_files, self.image_root, self.train_image_transform(), self.max_words,
                seed=self.seed, text_augment=self.text_augment, **self.dataset_options()))
        if "val" in splits:
            self._setup_eval("val", self.val_file)
        if "test" in splits:
            self._setup_eval("test", self.test_file)

    @property
    def train_dataset(self) -> PretrainDataset | ShardStream:
        return self._require("train", "fit")

    def train_dataloader(self) -> DataLoader:
        return self._training_loader(self.train_dataset, ImageTextCollate(self.tokenizer, self.max_tokens, truncation=True))


class RetrievalDataModule(_TrainFormatMixin, _RetrievalEvalMixin, ALBEFDataModule):
    """Image–text retrieval fine-tuning (COCO / Flickr30k format).

    Batches: see ``ImageTextCollate`` (train; ``image_idx`` numbers ``image_id``) and, for
    val/test, two dataloaders (0 = images, 1 = texts); ``eval_sets['val'|'test']`` hold
    ``texts``, ``img2txt`` and ``txt2img``.

    Args:
        train_file: retrieval-train JSON file(s) (``{image, caption: str, image_id}``).
        val_file: retrieval-eval JSON (``{image, caption: [str, ...]}``).
        test_file: retrieval-eval JSON.
        image_res: image size (ALBEF: 384).
        format: ``json`` or ``shards`` (``train_file`` is then shard folder(s) written with ``--schema
            retrieval_train``), as for :class:`PretrainDataModule`.
        shuffle_buffer: samples in each shard stream's shuffle buffer (``format: shards``).
        **kwargs: the ``ALBEFDataModule`` arguments.
    """

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_res: int = 384,
        format: Literal["json", "shards"] = "json",
        shuffle_buffer: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_res=image_res, **kwargs)
        self._check_format(format, shuffle_buffer)
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.eval_sets = {}

    def setup(self, stage: str | None = None) -> None:
        splits = self._stages(stage)
        if "train" in splits and self.train_file is not None and self.format == "shards":
            self._build("train", lambda: self._shard_stream(self.train_file))
        elif "train" in splits and self.train_file is not None:
            self._build("train", lambda: RetrievalTrainDataset(
                self.train_file, self.image_root, self.train_image_transform(), self.max_words,
                **self.dataset_options()))
        if "val" in splits:
            self._setup_eval("val", self.val_file)
        if "test" in splits:
            self._setup_eval("test", self.test_file)

    @property
    def train_dataset(self) -> RetrievalTrainDataset | ShardStream:
        return self._require("train", "fit")

    def train_dataloader(self) -> DataLoader:
        # ALBEF passes max_length=30 without truncation=True, so training captions are not truncated.
        return self._training_loader(self.train_dataset, ImageTextCollate(self.tokenizer, self.max_tokens, truncation=True))
