"""Datasets of image-caption pairs: pretraining, retrieval training and retrieval evaluation (images and texts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..text import pre_caption
from ..text_augment import WordDropSwap
from .base import PathLike, RecordImageDataset, Transform

__all__ = ["PretrainDataset", "RetrievalEvalDataset", "RetrievalTextDataset", "RetrievalTrainDataset", "choose_caption",
           "second_view"]


def _contiguous_ids(keys: Iterable[Any]) -> np.ndarray:
    """Map each key to the order of its first appearance (0, 1, ...), as an int64 array."""
    ids: dict[Any, int] = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64)


AUG_VIEW = 1000  # the seed salt of a second augmented view of the same image


def choose_caption(caption: str | Sequence[str], seed: int, epoch: int, index: int) -> str:
    """The caption a record uses in ``epoch``: itself, or one of its list drawn from (seed, epoch, index),
    the same in every worker layout and storage format."""
    if isinstance(caption, str):
        return caption
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    return caption[int(state) % len(caption)]


def second_view(image: Any, text: str, transformed: Any, text_augment: WordDropSwap, key: tuple[int, int, int],
                index: int) -> dict[str, Any]:
    """The pair twice, for the latent-structure losses: ``image`` and ``image_aug`` (the image transformed again,
    ``transformed(image, index, view)``) and ``text_aug`` (the caption EDA-augmented, seeded by ``key``)."""
    rng = np.random.default_rng([*key, 1])
    return {"image": transformed(image, index, 0), "image_aug": transformed(image, index, AUG_VIEW),
            "text_aug": text_augment(text, rng)}


class PretrainDataset(RecordImageDataset):
    """Image–caption pairs for pretraining → ``{image, text, index, image_idx}``.

    A record whose ``caption`` is a list yields one caption per access, chosen from
    (seed, epoch, index) so it is reproducible and independent of worker layout; call
    ``set_epoch`` each epoch (the train sampler does this).

    Args:
        files: annotation JSON files (schema ``pretrain``); ``index`` counts across them.
        image_root: folder for relative image paths (None: each JSON file's folder).
        transform: PIL image → tensor.
        max_words: ``pre_caption`` word limit.
        seed: seed of the caption choice.
        skip_bad_records, check_images_exist: see ``load_records``.
        text_augment: when given, items also carry a second augmented view:
            ``image_aug`` (the image transformed again) and ``text_aug``.
    """

    schema = "pretrain"

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        max_words: int = 30,
        seed: int = 0,
        *,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
        text_augment: WordDropSwap | None = None,
    ) -> None:
        super().__init__(files, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist)
        self.max_words = max_words
        self.text_augment = text_augment
        self.seed = int(seed) % 2**32  # SeedSequence needs a non-negative seed
        self.image_idx = _contiguous_ids(rec.image_paths[0] for rec in self.records)

    def caption(self, index: int, epoch: int | None = None) -> str:
        """The raw caption ``index`` uses in ``epoch`` (default: the current epoch)."""
        return choose_caption(self.records[index]["caption"], self.seed, self.epoch if epoch is None else epoch, index)

    def item(self, index: int) -> dict[str, Any]:
        text = pre_caption(self.caption(index), self.max_words)
        out = {"text": text, "index": index, "image_idx": int(self.image_idx[index])}
        if self.text_augment is None:
            out["image"] = self.load(index)
            return out
        out.update(second_view(self.load_raw(index), text, self.transformed, self.text_augment,
                               (self.seed, self.epoch, index), index))
        return out


class RetrievalTrainDataset(RecordImageDataset):
    """Retrieval fine-tuning pairs → ``{image, text, index, image_idx}``; ``image_idx`` numbers ``image_id``.

    Args:
        files: annotation JSON files (schema ``retrieval_train``).
        image_root: folder for relative image paths.
        transform: PIL image → tensor.
        max_words: ``pre_caption`` word limit.
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    schema = "retrieval_train"

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        max_words: int = 30,
        *,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
    ) -> None:
        super().__init__(files, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist)
        self.max_words = max_words
        self.image_idx = _contiguous_ids(rec["image_id"] for rec in self.records)

    def item(self, index: int) -> dict[str, Any]:
        return {
            "image": self.load(index),
            "text": pre_caption(self.records[index]["caption"], self.max_words),
            "index": index,
            "image_idx": int(self.image_idx[index]),
        }


class RetrievalEvalDataset(RecordImageDataset):
    """Retrieval evaluation set: iterates images → ``{image, image_index}``.

    Attributes ``texts`` (all cleaned captions), ``txt2img`` (image of each text) and
    ``img2txt`` (texts of each image); ``text_dataset()`` iterates the texts.

    Args:
        file: annotation JSON file (schema ``retrieval_eval``: one record per image).
        image_root: folder for relative image paths.
        transform: PIL image → tensor.
        max_words: ``pre_caption`` word limit.
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    schema = "retrieval_eval"

    def __init__(
        self,
        file: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        max_words: int = 30,
        *,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
    ) -> None:
        super().__init__(file, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist)
        self.texts: list[str] = []
        self.txt2img: list[int] = []
        self.img2txt: list[list[int]] = []
        for img_id, rec in enumerate(self.records):
            ids = []
            for caption in rec["caption"]:
                ids.append(len(self.texts))
                self.texts.append(pre_caption(caption, max_words))
                self.txt2img.append(img_id)
            self.img2txt.append(ids)

    def item(self, index: int) -> dict[str, Any]:
        return {"image": self.load(index), "image_index": index}

    def text_dataset(self) -> RetrievalTextDataset:
        return RetrievalTextDataset(self.texts, self.txt2img)


class RetrievalTextDataset(Dataset):
    """The captions of a retrieval evaluation set → ``{text, text_index, image_index}``."""

    def __init__(self, texts: Sequence[str], txt2img: Sequence[int]) -> None:
        self.texts, self.txt2img = list(texts), list(txt2img)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.texts[index], "text_index": index, "image_index": self.txt2img[index]}
