"""Torch datasets over validated ALBEF records, one per task; every item carries a stable ``index``."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import load_image
from .records import NLVR_LABELS, VE_LABELS, BadRecordError, Record, SkipReport, load_records
from .text import pre_caption, pre_question
from .text_augment import WordDropSwap

__all__ = [
    "RecordImageDataset",
    "PretrainDataset",
    "RetrievalTrainDataset",
    "RetrievalEvalDataset",
    "RetrievalTextDataset",
    "VQADataset",
    "NLVRDataset",
    "VEDataset",
    "vqa_answer_weights",
]

Transform = Callable[[Any], torch.Tensor]
PathLike = str | os.PathLike


def _as_list(files: PathLike | Sequence[PathLike]) -> list[PathLike]:
    if isinstance(files, (str, os.PathLike)):
        return [files]
    files = list(files)
    if not files:
        raise ValueError("No annotation files given: pass at least one JSON path.")
    return files


def _contiguous_ids(keys: Sequence[Any]) -> list[int]:
    """Map each key to the order of its first appearance (0, 1, ...)."""
    ids: dict[Any, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


AUG_VIEW = 1000  # the seed salt of a second augmented view of the same image


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
        self.records: list[Record] = []
        for path in _as_list(files):
            self.records += load_records(
                path, schema, image_root=image_root, vg_root=vg_root, image_ext=image_ext,
                skip_bad_records=skip_bad_records, check_images_exist=check_images_exist,
                report=self.skip_report,
            )
        if not self.records:
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
        """Image ``which`` of record ``index``, transformed."""
        return self.transformed(self.load_raw(index, which), index, which)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def transformed(self, image: Any, index: int, view: int = 0) -> torch.Tensor:
        """``transform(image)`` with the torch random draws seeded by (seed, epoch, index, view)."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index, view]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)

    def item(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.item(index)
        except BadRecordError:
            if self.skip_bad_records:
                return None
            raise


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
        self.image_idx = _contiguous_ids([rec.image_paths[0] for rec in self.records])

    def caption(self, index: int, epoch: int | None = None) -> str:
        """The raw caption ``index`` uses in ``epoch`` (default: the current epoch)."""
        caption = self.records[index]["caption"]
        if isinstance(caption, str):
            return caption
        epoch = self.epoch if epoch is None else epoch
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
        return caption[int(state) % len(caption)]

    def item(self, index: int) -> dict[str, Any]:
        text = pre_caption(self.caption(index), self.max_words)
        out = {"text": text, "index": index, "image_idx": self.image_idx[index]}
        if self.text_augment is None:
            out["image"] = self.load(index)
            return out
        # second augmented view: the same image transformed again, the caption EDA-augmented
        image = self.load_raw(index)
        out["image"], out["image_aug"] = self.transformed(image, index, 0), self.transformed(image, index, AUG_VIEW)
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        out["text_aug"] = self.text_augment(text, rng)
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
        self.image_idx = _contiguous_ids([rec["image_id"] for rec in self.records])

    def item(self, index: int) -> dict[str, Any]:
        return {
            "image": self.load(index),
            "text": pre_caption(self.records[index]["caption"], self.max_words),
            "index": index,
            "image_idx": self.image_idx[index],
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


def vqa_answer_weights(answers: str | Sequence[str], source: str = "vqa") -> tuple[list[str], list[float]]:
    """ALBEF's answer weights: VQA gives each distinct answer count/len(answers); VG gives 0.5."""
    items = [answers] if isinstance(answers, str) else list(answers)
    counts = Counter(items)
    total = len(items)
    scale = 0.5 if source == "vg" else 1.0
    return list(counts), [scale * n / total for n in counts.values()]


class VQADataset(RecordImageDataset):
    """VQA questions.

    ``split='train'`` → ``{image, question, answers, weights, index}`` (ALBEF weights, see
    ``vqa_answer_weights``); ``split='test'`` → ``{image, question, question_id, index}``
    plus ``answers`` (the annotators' list) when the record has them.

    Args:
        files: annotation JSON files (schema ``vqa_train`` or ``vqa_test``).
        image_root: folder for VQA (COCO) images.
        transform: PIL image → tensor.
        split: 'train' or 'test'.
        max_words: ``pre_question`` word limit (None: ALBEF's 30 for train, 50 for test).
        vg_root: folder for records with ``dataset == 'vg'`` (None: ``image_root``).
        skip_bad_records, check_images_exist: see ``load_records``.
    """

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        image_root: PathLike | None,
        transform: Transform,
        split: Literal["train", "test"] = "train",
        max_words: int | None = None,
        *,
        vg_root: PathLike | None = None,
        skip_bad_records: bool = False,
        check_images_exist: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"VQADataset split must be 'train' or 'test', got {split!r}.")
        super().__init__(files, image_root, transform, skip_bad_records=skip_bad_records,
                         check_images_exist=check_images_exist, vg_root=vg_root, schema=f"vqa_{split}")
        self.split = split
        self.max_words = max_words if max_words is not None else (30 if split == "train" else 50)

    def item(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        out: dict[str, Any] = {
            "image": self.load(index),
            "question": pre_question(rec["question"], self.max_words),
            "index": index,
        }
        if self.split == "train":
            out["answers"], out["weights"] = vqa_answer_weights(rec["answer"], rec["dataset"])
        else:
            qid = rec["question_id"]
            out["question_id"] = int(qid) if isinstance(qid, str) and qid.strip().isdigit() else qid
            if "answer" in rec:
                answer = rec["answer"]
                out["answers"] = [answer] if isinstance(answer, str) else list(answer)
        return out


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

    def item(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {
            "image0": self.load(index, 0),
            "image1": self.load(index, 1),
            "text": pre_caption(rec["sentence"], self.max_words),
            "label": NLVR_LABELS[rec["label"]],
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

    def item(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {
            "image": self.load(index),
            "text": pre_caption(rec["sentence"], self.max_words),
            "label": VE_LABELS[rec["label"]],
            "index": index,
        }
