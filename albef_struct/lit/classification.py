"""Shared steps of ALBEF's classifier tasks (SNLI-VE, NLVR2): distilled training, accuracy, report."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from albef_struct.data.collate import is_empty_batch
from albef_struct.lit.task import ALBEFModule
from albef_struct.losses.classification import distilled_cross_entropy
from albef_struct.metrics.blind import text_only_predictions
from albef_struct.metrics.report import report_results
from albef_struct.models import ALBEF


class ClassifierModule(ALBEFModule):
    """A classifier on the fused [CLS] trained with momentum distillation.

    Subclasses define :attr:`class_names` and :meth:`logits`; their task spec names the results file.
    Training minimises :func:`distilled_cross_entropy` against the EMA teacher's
    logits (the teacher is updated before its forward, as in ALBEF). ``val/acc``
    and ``test/acc`` (percent, torchmetrics) are the online model's; the test ends
    with a table and ``<task_spec.result_name>.json`` next to the majority-class rate, with
    the confusion matrix, per-class accuracy and any :meth:`subset_metrics`.
    """

    class_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        classes = len(self.class_names)
        self.val_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes=classes)

    def logits(self, model: ALBEF, batch: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        """Class logits ``[B, C]`` of ``model`` (the online model or the teacher's) for a batch."""
        raise NotImplementedError

    def subset_metrics(self, confusion: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """Extra test metrics from the confusion matrix (rows: true class), with their chance levels."""
        return {}, {}

    def classification_losses(self, batch: dict[str, Any], alpha: float) -> dict[str, torch.Tensor]:
        """Loss and accuracy of one training batch; the teacher is EMA-updated before its forward."""
        logits = self.logits(self.model, batch)
        teacher_logits = None
        if self.teacher is not None:
            self.update_teacher()
            with torch.no_grad():
                teacher_logits = self.logits(self.teacher.model, batch)
        loss = distilled_cross_entropy(logits, batch["label"], teacher_logits, alpha)
        return {"loss": loss, "acc": 100.0 * (logits.argmax(dim=-1) == batch["label"]).float().mean()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None
        alpha = self.current_alpha() if self.distill else 0.0
        losses = self.classification_losses(batch, alpha)
        self.log_losses("train", losses, batch_size=batch["label"].shape[0])
        self.log("train/alpha", alpha, on_step=True, on_epoch=False)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if is_empty_batch(batch):
            return
        logits = self.logits(self.model, batch)
        labels = batch["label"]
        (self.val_acc if stage == "val" else self.test_acc).update(logits.argmax(dim=-1), labels)
        if stage == "test":
            self.test_confusion.update(logits.argmax(dim=-1), labels)
        self.log_losses(stage, {"loss": F.cross_entropy(logits.float(), labels)}, batch_size=labels.shape[0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_count:
            self.log("val/acc", 100.0 * self.val_acc.compute(), prog_bar=True)
        self.val_acc.reset()

    def blind_metrics(self) -> dict[str, float]:
        """The test metrics of a text-only classifier trained on the training split (the model's
        blind baseline, :func:`~albef_struct.metrics.blind.text_only_predictions`); {} when the
        DataModule names no training and test file."""
        datamodule = self.trainer.datamodule
        files = getattr(datamodule, "files", None) or {}
        if not (files.get("train") and files.get("test")):
            return {}
        train, test = (datamodule.make_dataset(files[split], None) for split in ("train", "test"))
        predicted = text_only_predictions([train.text(i) for i in range(len(train))],
                                          [train.label(i) for i in range(len(train))],
                                          [test.text(i) for i in range(len(test))], len(self.class_names))
        truth = torch.tensor([test.label(i) for i in range(len(test))])
        confusion = torch.zeros(len(self.class_names), len(self.class_names), dtype=torch.long)
        confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
        subset, _ = self.subset_metrics(confusion)
        return {"acc": 100.0 * float((predicted == truth).float().mean()), **subset}

    def on_test_epoch_end(self) -> None:
        if not self.test_acc.update_count:
            return
        acc = 100.0 * self.test_acc.compute()
        self.log("test/acc", acc)
        confusion = self.test_confusion.compute().long().cpu()
        self.test_acc.reset()
        self.test_confusion.reset()
        if self.trainer.is_global_zero:
            counts = confusion.sum(dim=1)
            total = int(counts.sum())
            chance = 100.0 * float(counts.max()) / max(1, total)  # always predicting the majority class
            per_class = {
                f"acc_{name}": 100.0 * float(confusion[i, i]) / max(1, int(counts[i]))
                for i, name in enumerate(self.class_names)
            }
            subset, subset_chance = self.subset_metrics(confusion)
            report_results(
                self.results_dir, self.task_spec.result_name, {"acc": float(acc), **subset}, {"acc": chance, **subset_chance},
                blind=self.blind_metrics(),
                extra={"n_examples": total, "label_counts": dict(zip(self.class_names, counts.tolist())),
                       "per_class_acc": per_class, "confusion": {"rows_true_cols_predicted": self.class_names,
                                                                 "counts": confusion.tolist()}},
            )
