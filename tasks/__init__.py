"""Downstream tasks: one LightningModule per task (retrieval, VQA, NLVR2, SNLI-VE)."""
