"""What every task's DataModule shares: loader settings, transforms, dataset bookkeeping and the loaders."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from ..bad_records import SkipReport
from ..loaders import ResumableDataLoader, ResumableEpochSampler
from ..tokenizer import ALBEFTokenizer
from ..transforms import test_transform, train_transform

__all__ = ["ALBEFDataModule", "FINETUNE_CROP_SCALE", "PRETRAIN_CROP_SCALE"]

log = logging.getLogger(__name__)

PRETRAIN_CROP_SCALE = (0.2, 1.0)
FINETUNE_CROP_SCALE = (0.5, 1.0)


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
        image_cache: a file of image tokens precomputed by the model's frozen image encoder
            (``albef-struct cache-images``, keyed by paths under ``image_root``): batches then hold
            those tokens instead of images, which are neither read nor augmented. The run must
            freeze ``visual_encoder`` (checked, with the encoder's weights, before the first batch).
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
        image_cache: str | None = None,
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
        if image_cache is not None and image_root is None:
            raise ValueError("data.init_args.image_cache needs image_root: the cache is keyed by paths under it")
        self.image_cache = image_cache
        self._image_cache: Any = None
        self._image_cache_checked = True  # False from attaching a cache to a model until its first batch
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

    @property
    def loaded_image_cache(self) -> Any:
        """The :class:`~albef_struct.data.image_cache.ImageTokenCache` of ``image_cache`` (None without one)."""
        if self.image_cache is not None and self._image_cache is None:
            from albef_struct.data.image_cache import ImageTokenCache

            self._image_cache = ImageTokenCache.load(self.image_cache)
        return self._image_cache

    def _build(self, name: str, factory, image_cache: bool = True) -> Any:
        """Build dataset ``name`` once (setup may be called for several stages); ``image_cache=False`` keeps it
        reading images even when the run caches image tokens (e.g. for Grad-CAM, which runs the image encoder)."""
        built = name not in self._datasets
        ds = factory() if built else self._datasets[name]
        reads_cache = image_cache and self.image_cache is not None and hasattr(ds, "use_image_cache")
        if built:
            if reads_cache:
                ds.use_image_cache(self.loaded_image_cache, self.image_root)
            self._datasets[name] = ds
            report = getattr(ds, "skip_report", None)
            if report is not None and report.total:
                log.warning("%s set: %s", name, report.summary())
        if reads_cache:
            self._attach_image_cache()
        return ds

    def _attach_image_cache(self) -> None:
        """Hand the cache to the trainer's model (nothing outside a trainer). Runs in ``setup``, before the
        optimizer exists: a partial cache tells the model which block its tokens enter at and freezes the
        blocks they stand for; the encoder's weights are checked before the first batch."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None:
            self.loaded_image_cache.attach(module)
            self._image_cache_checked = False

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Before the run's first batch, when ``--ckpt_path`` has restored the weights, refuse an image
        encoder other than the one the cached tokens came from (see ``ImageTokenCache.check_encoder``)."""
        if not self._image_cache_checked:
            model = getattr(self.trainer.lightning_module, "model", None)
            if model is not None:
                self.loaded_image_cache.check_encoder(model.visual_encoder, model.config.vision.img_size)
            self._image_cache_checked = True
        return batch

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
