"""Torch datasets over validated ALBEF records, one per task; every item carries a stable ``index``."""

from .base import RecordImageDataset
from .classification import NLVRDataset, VEDataset
from .image_text import PretrainDataset, RetrievalEvalDataset, RetrievalTextDataset, RetrievalTrainDataset
from .vqa import VQADataset, vqa_answer_weights

__all__ = [
    "NLVRDataset",
    "PretrainDataset",
    "RecordImageDataset",
    "RetrievalEvalDataset",
    "RetrievalTextDataset",
    "RetrievalTrainDataset",
    "VEDataset",
    "VQADataset",
    "vqa_answer_weights",
]
