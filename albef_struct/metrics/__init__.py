"""Evaluation metrics: retrieval recall, VQA accuracy, latent-geometry measures."""

from albef_struct.metrics.retrieval import chance_recall, recall_at_k, retrieval_metrics

__all__ = ["chance_recall", "recall_at_k", "retrieval_metrics"]
