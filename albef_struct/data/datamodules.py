"""LightningDataModules per task: records → datasets → loaders with ALBEF's transforms and token lengths."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .collate import (
    ImageTextCollate,
    NLVRCollate,
    RetrievalImageCollate,
    RetrievalTextCollate,
    VECollate,
    VQATestCollate,
    VQATrainCollate,
)
from .datasets import (
    NLVRDataset,
    PretrainDataset,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    VEDataset,
    VQADataset,
)
from .records import SkipReport, load_answer_list
from .text_augment import WordDropSwap
from .tokenizer import ALBEFTokenizer
from .transforms import pretrain_transform, test_transform, train_transform

__all__ = [
    "EpochShuffleSampler",
    "ResumableDataLoader",
    "ResumableEpochSampler",
    "ALBEFDataModule",
    "PretrainDataModule",
    "RetrievalDataModule",
    "VQADataModule",
    "NLVRDataModule",
    "VEDataModule",
]

log = logging.getLogger(__name__)

PRETRAIN_CROP_SCALE = (0.2, 1.0)
FINETUNE_CROP_SCALE = (0.5, 1.0)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation fixed by (seed, epoch) and tells the dataset the epoch.

    Lightning calls ``set_epoch`` before each training epoch. Where it cannot reach this
    sampler (it wraps it for DDP), the epoch advances by one per pass instead.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0
        self._epoch_was_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_was_set = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        if not self._epoch_was_set:
            self.epoch += 1
        self._epoch_was_set = False
        return iter(order)


class ResumableEpochSampler(EpochShuffleSampler):
    """:class:`EpochShuffleSampler` that can start its next pass ``n`` samples into the epoch's order."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """Leave out the first ``n`` indices of the next pass (the order itself is unchanged)."""
        if n < 0:
            raise ValueError(f"cannot skip {n} samples")
        self._skip = int(n)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class _CountingIterator:
    """Counts the batches a DataLoader iterator hands out."""

    def __init__(self, inner: Iterator[Any], loader: ResumableDataLoader) -> None:
        self.inner, self.loader = inner, loader

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        self.loader._yielded += 1
        return batch

    def __len__(self) -> int:
        return len(self.inner)


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose place in the epoch travels in Lightning checkpoints.

    Lightning saves ``state_dict()`` of stateful training loaders in every checkpoint
    and calls ``load_state_dict`` before iterating when it resumes; the next pass then
    starts after the batches already trained on, in the same (seed, epoch) order,
    without loading them. Lightning's batch counter only works for loaders with a
    length, which this one has.

    This works when the sampler is a :class:`ResumableEpochSampler` (one process).
    Under DDP Lightning rebuilds the loader around a ``DistributedSamplerWrapper``;
    the loader then works as a plain DataLoader, and a resume from a mid-epoch
    checkpoint warns that the epoch's order restarts from its beginning.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Its own generator for the per-pass worker seed, so that starting a pass draws nothing from the
        # global RNG: a run resumed from a checkpoint taken at an epoch's last step would otherwise miss
        # the draw the uninterrupted run made when the next epoch began, and every random choice of the
        # training step (masking, negatives, dropout) would be one draw off from then on.
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        super().__init__(*args, **kwargs)
        if self.batch_size is None:
            raise TypeError("ResumableDataLoader needs a batch_size (it counts whole batches)")
        self._yielded = 0
        self._epoch = getattr(self.sampler, "epoch", 0)
        self._resume_at = 0

    @property
    def resumable(self) -> bool:
        """Whether a pass can start mid-epoch (the sampler is a :class:`ResumableEpochSampler`)."""
        return isinstance(self.sampler, ResumableEpochSampler)

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_at = self._resume_at, 0
        if self.resumable:
            self.sampler.skip_next(skip * self.batch_size)
            self._epoch = self.sampler.epoch
        else:
            skip = 0
        self._yielded = skip
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._yielded), "length": len(self)}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        if not self.resumable:
            if done:
                log.warning(
                    "resuming %d batches into an epoch with a distributed sampler: this epoch's data order starts "
                    "again from its beginning (mid-epoch resumption is exact only in one process; resume from an "
                    "end-of-epoch checkpoint for an exact data order)", done,
                )
            return
        # not set_epoch: like a fresh sampler, it then moves on to the next epoch by itself after this pass
        # (Lightning calls set_epoch before every epoch anyway)
        self.sampler.epoch = epoch
        self._resume_at = done


class ALBEFDataModule(pl.LightningDataModule):
    """Shared loader settings for every ALBEF task.

    Args:
        image_root: folder that relative image paths in the JSON files are joined to
            (None: relative to each JSON file's folder).
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device.
        num_workers: DataLoader worker processes (0: load in the main process).
        image_res: square image size fed to the model.
        tokenizer_path: directory for ``BertTokenizer.from_pretrained`` (None: the offline
            bert-base-uncased vocabulary).
        hflip: random horizontal flips during training (turn off when text says left/right).
        randaugment: ALBEF's RandomAugment(2, 7) during training.
        crop_scale: RandomResizedCrop area range during training (None: the task default,
            (0.2, 1.0) for pretraining, (0.5, 1.0) for fine-tuning).
        skip_bad_records: skip and count bad records/images instead of raising.
        check_images_exist: check that every image file exists when the JSON is loaded.
        max_words: word limit of ``pre_caption``/``pre_question`` (training questions for VQA).
        max_tokens: token limit (with [CLS]) of training text (None: the task default: 25
            for pretraining and VQA questions, untruncated for the others, as in ALBEF).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers between epochs (None: whenever num_workers > 0).
        drop_last: drop the last incomplete training batch (ALBEF does).
        seed: seed of the training shuffle and caption choice (None: Lightning's
            ``seed_everything`` seed, else 0).
    """

    crop_scale_default: tuple[float, float] = FINETUNE_CROP_SCALE
    max_tokens_default: int | None = None

    def __init__(
        self,
        image_root: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 2,
        image_res: int = 256,
        tokenizer_path: str | None = None,
        hflip: bool = True,
        randaugment: bool = True,
        crop_scale: tuple[float, float] | None = None,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
        max_words: int = 30,
        max_tokens: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        drop_last: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size and eval_batch_size must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.image_root = image_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.image_res = image_res
        self.tokenizer_path = tokenizer_path
        self.hflip = hflip
        self.randaugment = randaugment
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else self.crop_scale_default
        self.skip_bad_records = skip_bad_records
        self.check_images_exist = check_images_exist
        self.max_words = max_words
        self.max_tokens = max_tokens if max_tokens is not None else self.max_tokens_default
        self.pin_memory = pin_memory
        self.persistent_workers = (num_workers > 0) if persistent_workers is None else persistent_workers
        self.drop_last = drop_last
        self._seed = seed
        self._tokenizer: ALBEFTokenizer | None = None
        self._datasets: dict[str, Any] = {}

    # -- shared pieces -------------------------------------------------------

    @property
    def tokenizer(self) -> ALBEFTokenizer:
        """The tokenizer, built on first use."""
        if self._tokenizer is None:
            self._tokenizer = ALBEFTokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def seed(self) -> int:
        if self._seed is not None:
            return int(self._seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def skip_report(self) -> SkipReport:
        """Records skipped while loading the datasets set up so far (see ``skip_bad_records``)."""
        report = SkipReport()
        for ds in self._datasets.values():
            if hasattr(ds, "skip_report"):
                report.merge(ds.skip_report)
        return report

    def dataset_options(self) -> dict[str, Any]:
        return {"skip_bad_records": self.skip_bad_records, "check_images_exist": self.check_images_exist}

    def train_image_transform(self):
        return train_transform(self.image_res, self.crop_scale, self.hflip, self.randaugment)

    def eval_image_transform(self):
        return test_transform(self.image_res)

    def _build(self, name: str, factory) -> Any:
        """Build dataset ``name`` once (setup may be called for several stages)."""
        if name not in self._datasets:
            ds = factory()
            self._datasets[name] = ds
            report = getattr(ds, "skip_report", None)
            if report is not None and report.total:
                log.warning("%s set: %s", name, report.summary())
        return self._datasets[name]

    def _train_loader(self, dataset: Dataset, collate) -> DataLoader:
        if self.drop_last and len(dataset) < self.batch_size:
            raise ValueError(
                f"The training set has {len(dataset)} records, fewer than batch_size={self.batch_size}; "
                "with drop_last=True there would be no training batch. Lower batch_size or set drop_last=False."
            )
        return ResumableDataLoader(
            dataset, batch_size=self.batch_size, sampler=ResumableEpochSampler(dataset, self.seed),
            drop_last=self.drop_last, collate_fn=collate, **self._worker_options(),
        )

    def _eval_loader(self, dataset: Dataset, collate) -> DataLoader:
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          collate_fn=collate, **self._worker_options())

    def _worker_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }

    def _require(self, name: str, stage: str) -> Any:
        if name not in self._datasets:
            raise RuntimeError(
                f"{type(self).__name__} has no {name!r} dataset: call setup({stage!r}) first "
                "(the Trainer does this) and make sure the matching file argument is set."
            )
        return self._datasets[name]

    @staticmethod
    def _stages(stage: str | None) -> set[str]:
        """Which splits a Lightning stage needs."""
        return {
            None: {"train", "val", "test"},
            "fit": {"train", "val"},
            "validate": {"val"},
            "test": {"test"},
            "predict": {"test"},
        }.get(stage, {"train", "val", "test"})


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
            self._eval_loader(ds.text_dataset(), RetrievalTextCollate(self.tokenizer, max_length=30)),
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
