"""Evaluation metrics: retrieval recall, VQA accuracy, latent-geometry measures, linear probes."""

from albef_struct.metrics.geometry import (
    alignment,
    geometry_report,
    matched_cosine,
    mean_cosine_unmatched,
    modality_gap,
    pca_2d,
    plot_embeddings,
    uniformity,
)
from albef_struct.metrics.probe import linear_probe_accuracy, probe_report
from albef_struct.metrics.retrieval import chance_recall, recall_at_k, retrieval_metrics
from albef_struct.metrics.vqa import (
    MajorityAnswerAccuracy,
    VQAAccuracy,
    normalize_answer,
    vqa_accuracy,
    write_evalai_submission,
)

__all__ = [
    "chance_recall",
    "recall_at_k",
    "retrieval_metrics",
    "VQAAccuracy",
    "MajorityAnswerAccuracy",
    "normalize_answer",
    "vqa_accuracy",
    "write_evalai_submission",
    "alignment",
    "geometry_report",
    "matched_cosine",
    "mean_cosine_unmatched",
    "modality_gap",
    "pca_2d",
    "plot_embeddings",
    "uniformity",
    "linear_probe_accuracy",
    "probe_report",
]
