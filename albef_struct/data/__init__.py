"""Data: ALBEF-format JSON records → cleaned text, transformed images, tokenized batches, DataModules.

The DataModules (Lightning) load on first use, so the rest imports without Lightning
(``albef_struct.inference`` needs only the tokenizer and the transforms).
"""

from .bad_records import BadRecordError, SkipReport
from .collate import (
    ClassificationCollate,
    ImageTextCollate,
    NLVRCollate,
    RetrievalImageCollate,
    RetrievalTextCollate,
    VECollate,
    VQATestCollate,
    VQATrainCollate,
    is_empty_batch,
)
from .datasets import (
    NLVRDataset,
    PretrainDataset,
    RecordImageDataset,
    RetrievalEvalDataset,
    RetrievalTextDataset,
    RetrievalTrainDataset,
    VEDataset,
    VQADataset,
    vqa_answer_weights,
)
from .images import load_image, resolve_image_path, to_rgb
from .loaders import EpochShuffleSampler, ResumableDataLoader, ResumableEpochSampler
from .records import NLVR_LABELS, SCHEMAS, VE_LABELS, Record, load_answer_list, load_records
from .text import pre_caption, pre_question
from .text_augment import WordDropSwap
from .tokenizer import ALBEFTokenizer, default_tokenizer_path
from .transforms import (
    ALBEF_OPS,
    CLIP_MEAN,
    CLIP_STD,
    RandomAugment,
    apply_op,
    op_argument,
    pretrain_transform,
    test_transform,
    train_transform,
)

#: the Lightning DataModules, imported from .datamodules when first named
_DATAMODULES = ("ALBEFDataModule", "GroundingDataModule", "NLVRDataModule", "PretrainDataModule", "RetrievalDataModule", "VEDataModule",
                "VQADataModule")


def __getattr__(name: str):
    if name in _DATAMODULES:
        from . import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WordDropSwap",
    "ALBEF_OPS", "ALBEFDataModule", "ALBEFTokenizer", "BadRecordError", "CLIP_MEAN", "CLIP_STD",
    "ClassificationCollate", "EpochShuffleSampler", "GroundingDataModule", "ImageTextCollate", "NLVRCollate", "NLVRDataModule",
    "NLVRDataset", "NLVR_LABELS", "PretrainDataModule", "PretrainDataset", "RandomAugment", "Record",
    "RecordImageDataset", "ResumableDataLoader", "ResumableEpochSampler", "RetrievalDataModule",
    "RetrievalEvalDataset", "RetrievalImageCollate",
    "RetrievalTextCollate", "RetrievalTextDataset", "RetrievalTrainDataset", "SCHEMAS", "SkipReport",
    "VECollate", "VEDataModule", "VEDataset", "VE_LABELS", "VQADataModule", "VQADataset", "VQATestCollate",
    "VQATrainCollate", "apply_op", "default_tokenizer_path", "is_empty_batch", "load_answer_list",
    "load_image", "load_records", "op_argument", "pre_caption", "pre_question", "pretrain_transform",
    "resolve_image_path", "test_transform", "to_rgb", "train_transform", "vqa_answer_weights",
]
