"""Downstream tasks: one LightningModule per task (retrieval, VQA, NLVR2, SNLI-VE), each registered in
:mod:`albef_struct.tasks.registry` (docs/adding_a_task.md says how to add one)."""
