"""Model building blocks: ViT image encoder, BERT text/fusion encoders, the ALBEF core."""

from albef_struct.models.albef import ALBEF, ALBEFConfig
from albef_struct.models.momentum import FeatureQueue, MomentumTeacher
from albef_struct.models.text import TextConfig
from albef_struct.models.vision import VisionConfig

__all__ = ["ALBEF", "ALBEFConfig", "FeatureQueue", "MomentumTeacher", "TextConfig", "VisionConfig"]
