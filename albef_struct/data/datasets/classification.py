"""Datasets of labelled image-text pairs: NLVR2 (two images per statement) and SNLI-VE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..records import NLVR_LABELS, VE_LABELS
from ..text import pre_caption
from .base import PathLike, RecordImageDataset, Transform

__all__ = ["NLVRDataset", "VEDataset"]


class NLVRDataset(RecordImageDataset):
    """NLVR2 pairs → ``{image0, image1, text, label, index}``; label 1 for 'True', 0 for 'False'.

    Args:
        files: annotation JSON files (schema ``nlvr``).
        image_root: folder for relative image paths.
        transform: PIL image → tensor (applied to each image independently).
        max_words: ``pre_caption`` word limit.
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    schema = "nlvr"

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

    def text(self, index: int) -> str:
        """The statement as the model reads it."""
        return pre_caption(self.records[index]["sentence"], self.max_words)

    def label(self, index: int) -> int:
        return NLVR_LABELS[self.records[index]["label"]]

    def item(self, index: int) -> dict[str, Any]:
        return {
            "image0": self.load(index, 0),
            "image1": self.load(index, 1),
            "text": self.text(index),
            "label": self.label(index),
            "index": index,
        }


class VEDataset(RecordImageDataset):
    """SNLI-VE pairs → ``{image, text, label, index}``; entailment 2, neutral 1, contradiction 0.

    Args:
        files: annotation JSON files (schema ``ve``).
        image_root: folder of the Flickr30k images.
        transform: PIL image → tensor.
        max_words: ``pre_caption`` word limit.
        image_ext: appended to each record's ``image`` (ALBEF stores ids without it).
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    schema = "ve"

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        max_words: int = 30,
        image_ext: str = ".jpg",
        *,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
    ) -> None:
        super().__init__(files, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist, image_ext=image_ext)
        self.max_words = max_words

    def text(self, index: int) -> str:
        """The hypothesis as the model reads it."""
        return pre_caption(self.records[index]["sentence"], self.max_words)

    def label(self, index: int) -> int:
        return VE_LABELS[self.records[index]["label"]]

    def item(self, index: int) -> dict[str, Any]:
        return {"image": self.load(index), "text": self.text(index), "label": self.label(index), "index": index}
