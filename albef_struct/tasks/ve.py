"""SNLI-VE (visual entailment): a 3-way classifier on the fused [CLS], with momentum distillation.

ALBEF's VE model runs the text layers, then the fusion layers attending the
image, and classifies the fused [CLS] with ``cls_head`` (Linear(H, H) → ReLU →
Linear(H, 3)); labels are contradiction 0, neutral 1, entailment 2. Training
minimises the distilled cross-entropy against the EMA teacher's logits
(ALBEF's VE.yaml: alpha 0.4, distill on, no alpha warm-up). Validation and test
report accuracy; the best checkpoint is the one with the best ``val/acc``.

The training and evaluation steps are shared with NLVR2 (:class:`ClassifierModule`).
"""

from __future__ import annotations

from typing import Any

import torch

from albef_struct.data import VEDataModule
from albef_struct.lit.classification import ClassifierModule
from albef_struct.lit.schedule import OptimConfig
from albef_struct.models import ALBEF, ALBEFConfig
from albef_struct.tasks.passes import VE_LABELS, ve_logits
from albef_struct.tasks.registry import SummaryMetric, register_task

# ALBEF's VE.yaml: 100 warm-up steps at 1e-5, then 2e-5 with a per-epoch cosine to 1e-6.
VE_OPTIM = OptimConfig(lr=2e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=100, min_lr=1e-6)


@register_task(
    "ve", "SNLI-VE (3-way classifier)",
    datamodule=VEDataModule,
    heads={"classifier_classes": len(VE_LABELS)},
    fresh_ok={"cls_head.": "new 3-way entailment classifier (ALBEF initialises it fresh)"},
    optim=VE_OPTIM,
    training_loss="classification_losses",
    result_name="ve_test",
    title="SNLI-VE",
    summary=(
        SummaryMetric("acc", "accuracy"),
        SummaryMetric("acc_entail_vs_contra", "accuracy on entailment vs contradiction (needs the image)"),
    ),
)
class VEModule(ClassifierModule):
    """SNLI-VE fine-tuning and evaluation (``VEDataModule`` batches: image, text, ``label``).

    Training, validation and test steps come from :class:`ClassifierModule`; the
    test ends with ``ve_test.json`` next to the majority-class rate, including the
    accuracy on entailment vs contradiction (the part a hypothesis-only model must guess).
    A pretraining checkpoint loads without its projections, temperature, ITM/MLM
    heads and queues (each dropped with its reason); ``cls_head`` starts fresh,
    online and teacher alike.

    Args:
        arch: model sizes (ALBEF-base at 384 px by default); the VE head flags
            (3-way ``cls_head``, no projections, ITM or MLM head) are set here.
        optim: AdamW + schedule (default: ALBEF's VE.yaml).
        alpha: distillation weight (ALBEF: 0.4).
        alpha_warmup: ramp alpha from 0 over the first epoch (ALBEF's VE.yaml: ``warm_up: False``).
        distill: train against the momentum teacher's logits (ALBEF: true).
        momentum: EMA coefficient of the teacher (ALBEF: 0.995).
        init_from: checkpoint to start from (this project's, or an official ALBEF file).
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
    """

    class_names = VE_LABELS

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        alpha: float = 0.4,
        alpha_warmup: bool = False,
        distill: bool = True,
        momentum: float = 0.995,
        init_from: str | None = None,
        text_dropout: float | None = None,
    ) -> None:
        super().__init__(self.task_spec.arch(arch), optim or self.task_spec.optim, alpha, alpha_warmup, distill, momentum, init_from,
                         text_dropout=text_dropout)
        self.load_init_weights()

    def subset_metrics(self, confusion: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """``acc_entail_vs_contra``: accuracy on the entailment and contradiction examples alone.

        A hypothesis-only model can spot "neutral" statements from their wording (in SNLI-VE and,
        by construction, in the demo data) but has to guess between entailment and contradiction,
        which only the image decides: its chance level is 50% when the two are balanced.
        """
        rows = [VE_LABELS.index("entailment"), VE_LABELS.index("contradiction")]
        correct = sum(int(confusion[i, i]) for i in rows)
        total = sum(int(confusion[i].sum()) for i in rows)
        if total == 0:
            return {}, {}
        larger = max(int(confusion[i].sum()) for i in rows)
        return {"acc_entail_vs_contra": 100.0 * correct / total}, {"acc_entail_vs_contra": 100.0 * larger / total}

    def logits(self, model: ALBEF, batch: dict[str, Any]) -> torch.Tensor:
        """Class logits of ``model`` (the online model or the teacher's) for a batch."""
        return ve_logits(model, batch["image"], batch["input_ids"], batch["attention_mask"])

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Online-model logits ``[B, 3]`` (contradiction, neutral, entailment)."""
        return ve_logits(self.model, images, input_ids, attention_mask)
