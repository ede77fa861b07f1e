"""The base of every task's dataset: validated records from JSON files, images loaded and seeded-transformed on access."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bad_records import BadRecordError, SkipReport
from ..images import load_image
from ..record_store import PackedRecords, release_freed_memory
from ..records import load_records

__all__ = ["PathLike", "RecordImageDataset", "Transform", "seeded_transform"]

Transform = Callable[[Any], torch.Tensor]
PathLike = str | os.PathLike


def _as_list(files: PathLike | Sequence[PathLike]) -> list[PathLike]:
    if isinstance(files, (str, os.PathLike)):
        return [files]
    files = list(files)
    if not files:
        raise ValueError("No annotation files given: pass at least one JSON path.")
    return files


def seeded_transform(transform: Transform, image: Any, key: Sequence[int]) -> torch.Tensor:
    """``transform(image)`` with the torch random draws seeded by ``key`` (e.g. seed, epoch, index, view),
    leaving the global generator as it was: a sample is augmented the same way wherever it is loaded."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


class RecordImageDataset(Dataset):
    """Base: records loaded from JSON files, images loaded and transformed on access.

    With ``skip_bad_records`` a bad record is skipped at load time (counted in
    ``skip_report``) and an unreadable image at access time makes ``__getitem__`` return
    ``None`` (the collate drops it and counts it in ``n_skipped``).

    The image transform's random draws are seeded by (``seed``, epoch, index, view), so a
    sample gets the same augmentation whichever DataLoader worker loads it, and again when
    a run resumes mid-epoch; ``set_epoch`` (called by the training sampler) moves them on.
    """

    seed: int = 0

    schema: str = ""

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        *,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
        vg_root: PathLike | None = None,
        image_ext: str = "",
        schema: str | None = None,
    ) -> None:
        self.transform = transform
        # Shared memory, so persistent DataLoader workers see the epoch set in the main process.
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self.skip_bad_records = skip_bad_records
        self.skip_report = SkipReport()
        schema = schema or self.schema
        self.records = PackedRecords()  # packed: a list of dicts costs ~1.4 kB a record in every loader worker
        for path in _as_list(files):
            self.records.extend(load_records(
                path, schema, image_root=image_root, vg_root=vg_root, image_ext=image_ext,
                skip_bad_records=skip_bad_records, check_images_exist=check_images_exist,
                report=self.skip_report,
            ))
        release_freed_memory()
        if not len(self.records):
            raise ValueError(
                f"No usable records in {[str(f) for f in _as_list(files)]} (schema {schema!r}). "
                + (self.skip_report.summary() if self.skip_report.total else "The files are empty lists.")
            )

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, index: int, which: int = 0):
        """Image ``which`` of record ``index`` as an RGB PIL image."""
        rec = self.records[index]
        field = "image" if len(rec.image_paths) == 1 else f"images[{which}]"
        return load_image(rec.image_paths[which], source=rec.source, record_index=rec.row, field=field)

    def load(self, index: int, which: int = 0) -> torch.Tensor:
        """Image ``which`` of record ``index``, transformed; or its cached encoder tokens (:meth:`use_image_cache`)."""
        cache = getattr(self, "image_cache", None)
        if cache is not None:
            return cache.lookup(self.records[index].image_paths[which], self.image_cache_root)
        return self.transformed(self.load_raw(index, which), index, which)

    def use_image_cache(self, cache: Any, image_root: PathLike) -> None:
        """Read image tokens from ``cache`` (an :class:`~albef_struct.data.image_cache.ImageTokenCache`
        keyed by paths relative to ``image_root``) instead of loading and transforming the images."""
        self.image_cache, self.image_cache_root = cache, image_root

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def transformed(self, image: Any, index: int, view: int = 0) -> torch.Tensor:
        """``transform(image)`` with the torch random draws seeded by (seed, epoch, index, view)."""
        return seeded_transform(self.transform, image, (self.seed, self.epoch, index, view))

    def item(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.item(index)
        except BadRecordError:
            if self.skip_bad_records:
                return None
            raise
