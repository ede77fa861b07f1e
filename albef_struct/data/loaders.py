"""Training loaders that resume mid-epoch: (seed, epoch)-shuffling samplers and a DataLoader whose place in
the epoch travels in Lightning checkpoints."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochShuffleSampler", "ResumableDataLoader", "ResumableEpochSampler"]

log = logging.getLogger(__name__)


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
        # kept as an int64 array, read lazily: a list of a million Python ints would cost 36 MB
        order = torch.randperm(len(self.dataset), generator=gen).numpy()
        if not self._epoch_was_set:
            self.epoch += 1
        self._epoch_was_set = False
        return map(int, order)


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
