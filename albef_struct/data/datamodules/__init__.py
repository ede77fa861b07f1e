"""LightningDataModules per task: records → datasets → loaders with ALBEF's transforms and token lengths."""

from .base import ALBEFDataModule
from .classification import NLVRDataModule, VEDataModule
from .grounding import GroundingDataModule
from .image_text import PretrainDataModule, RetrievalDataModule
from .vqa import VQADataModule

__all__ = [
    "ALBEFDataModule",
    "GroundingDataModule",
    "NLVRDataModule",
    "PretrainDataModule",
    "RetrievalDataModule",
    "VEDataModule",
    "VQADataModule",
]
