"""Weakly supervised referring-expression grounding (RefCOCO+), ALBEF's fifth task.

ALBEF fine-tunes the retrieval model (ITC + ITM) on expression-image pairs, without boxes.
At evaluation it explains the ITM score of each expression by Grad-CAM through the cross-
attention of one fusion layer (:mod:`albef_struct.inference.gradcam`; ALBEF's is the third)
and ranks the image's box proposals by the heat they hold (mass over ``area ** box_alpha``,
ALBEF 0.5). A prediction is right when the top proposal overlaps the referred box with
IoU >= 0.5. Beside the accuracy the test reports the random-proposal chance (the share of
proposals that would be right, averaged over expressions) and a centre-box baseline (the
proposal nearest the image centre, written as the blind baseline: it reads neither the pixels nor
the text, only the proposals' geometry).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.aggregation import CatMetric

from albef_struct.data.collate import is_empty_batch
from albef_struct.data import GroundingDataModule
from albef_struct.inference.gradcam import GRADCAM_MODES, box_iou, box_scores, gradcam
from albef_struct.lit.schedule import OptimConfig
from albef_struct.metrics.report import report_results
from albef_struct.models import ALBEFConfig
from albef_struct.tasks.registry import SummaryMetric, register_task
from albef_struct.tasks.retrieval import RetrievalModule

# ALBEF's Grounding.yaml: lr 1e-5, cosine to 1e-6, batch 32, 5 epochs at 384 px.
GROUNDING_OPTIM = OptimConfig(lr=1e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=100, min_lr=1e-6)
IOU_HIT = 0.5


@register_task(
    "grounding", "referring-expression grounding (retrieval fine-tuning, Grad-CAM box ranking)",
    datamodule=GroundingDataModule,
    heads={"projections": True, "itm_head": True},
    queue=True,
    fresh_ok={"queue.": "the checkpoint has no feature queue (e.g. ALBEF's released fine-tuned files); it starts random"},
    optim=GROUNDING_OPTIM,
    training_loss="retrieval_losses",
    result_name="grounding_test",
    title="grounding",
    summary=(SummaryMetric("acc", "top proposal by Grad-CAM, IoU >= 0.5 (blind: centre box)"),),
)
class GroundingModule(RetrievalModule):
    """Grounding: retrieval fine-tuning, then Grad-CAM box ranking on ``GroundingDataModule``'s eval records.

    Args (besides :class:`RetrievalModule`'s training ones):
        gradcam_mode: ``itm`` (ALBEF's default: the ITM score through a fusion layer's cross-attention) or ``itc``
            (the ITC similarity through a ViT block's [CLS] attention).
        gradcam_layer: the fusion layer (itm) or ViT block (itc) explained (None: ALBEF's choice).
        box_alpha: a proposal scores its heat mass over ``area ** box_alpha`` (ALBEF: 0.5).
    """

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        queue_size: int = 65536,
        momentum: float = 0.995,
        alpha: float = 0.4,
        alpha_warmup: bool = True,
        distill: bool = True,
        itm_uniform_negative_steps: int = 0,
        init_from: str | None = None,
        text_dropout: float | None = None,
        gradcam_mode: str = "itm",
        gradcam_layer: int | None = None,
        box_alpha: float = 0.5,
    ) -> None:
        super().__init__(arch, optim, queue_size, momentum, alpha, alpha_warmup, distill,
                         itm_uniform_negative_steps=itm_uniform_negative_steps, init_from=init_from,
                         text_dropout=text_dropout)
        if gradcam_mode not in GRADCAM_MODES:
            raise ValueError(f"gradcam_mode must be one of {GRADCAM_MODES}, got {gradcam_mode!r}")
        self.gradcam_mode, self.gradcam_layer, self.box_alpha = gradcam_mode, gradcam_layer, box_alpha
        self.outcomes = CatMetric()  # rows of (index, hit, chance, centre-box hit), variable length per rank

    def ground(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[B, 4]`` rows: dataset index, whether the top proposal hits, the random-proposal chance, the centre box."""
        cam = gradcam(self.model, batch["image"], batch["input_ids"], batch["attention_mask"], self.gradcam_mode,
                      self.gradcam_layer)
        rows = []
        for i, proposals in enumerate(batch["proposals"]):
            proposals, box = proposals.to(cam.text_map.device), batch["box"][i].to(cam.text_map.device)
            width, height = (int(v) for v in batch["image_size"][i].tolist())
            ious = box_iou(box, proposals)
            top = box_scores(cam.text_map[i], proposals, (width, height), self.box_alpha).argmax()
            centres = proposals[:, :2] + proposals[:, 2:] / 2
            central = (centres - torch.tensor([width / 2, height / 2], device=centres.device)).norm(dim=1).argmin()
            rows.append(torch.stack([batch["index"][i].to(ious), (ious[top] >= IOU_HIT).to(ious),
                                     (ious >= IOU_HIT).to(ious).mean(), (ious[central] >= IOU_HIT).to(ious)]))
        return torch.stack(rows)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not is_empty_batch(batch):
            self.outcomes.update(self.ground(batch))

    test_step = validation_step

    def _split_of(self, stage: str) -> Any:
        """Record index -> its ``split`` field (RefCOCO+'s val / testA / testB), when the records carry one."""
        dataset = getattr(getattr(self.trainer, "datamodule", None), "eval_sets", {}).get(stage)
        return (lambda i: dataset.records[i].get("split")) if dataset is not None else (lambda i: None)

    def _finish_grounding(self, stage: str) -> dict[str, float] | None:
        if not self.outcomes.update_count:
            return None
        rows = self.outcomes.compute().reshape(-1, 4)
        self.outcomes.reset()
        index = rows[:, 0].long()
        first = torch.ones_like(index, dtype=torch.bool)  # the distributed sampler repeats records to even out ranks
        order = torch.argsort(index, stable=True)
        first[order[1:]] = index[order[1:]] != index[order[:-1]]
        rows = rows[first]
        result = {"acc": 100 * float(rows[:, 1].mean()), "chance": 100 * float(rows[:, 2].mean()),
                  "centre_box": 100 * float(rows[:, 3].mean()), "n": int(rows.shape[0]), "splits": {}}
        split_of = self._split_of(stage)
        splits = [split_of(int(i)) for i in rows[:, 0].tolist()]
        for name in sorted({s for s in splits if s is not None}):
            keep = torch.tensor([s == name for s in splits])
            result["splits"][name] = 100 * float(rows[keep, 1].mean())
        return result

    def on_validation_epoch_end(self) -> None:
        result = self._finish_grounding("val")
        if result is not None:
            self.log("val/acc", result["acc"], prog_bar=True, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        result = self._finish_grounding("test")
        if result is None:
            return
        self.log("test/acc", result["acc"], sync_dist=False)
        if self.trainer.is_global_zero:
            per_split = {f"acc_{name}": value for name, value in result["splits"].items()}
            # the centre box reads neither the pixels nor the text, only the proposals' geometry: the blind baseline
            report_results(self.results_dir, self.task_spec.result_name, {"acc": result["acc"], **per_split},
                           {"acc": result["chance"]}, blind={"acc": result["centre_box"]},
                           extra={"n_expressions": result["n"],
                                  "gradcam_mode": self.gradcam_mode, "gradcam_layer": self.gradcam_layer,
                                  "box_alpha": self.box_alpha})
