"""Image-text retrieval fine-tuning (COCO, Flickr30k) and zero-shot retrieval evaluation.

ALBEF's retrieval model is the pretraining model without the MLM head. Training
minimises ITC + ITM:

* ITC with the momentum queue and momentum distillation, where every caption of
  the same image is a positive: targets are ``alpha * softmax(teacher sims) +
  (1 - alpha) * same_image / n_same_image``, over the batch and the queue. The
  queue stores each momentum feature's image id (ALBEF's ``idx_queue``), so
  queued captions of the anchor's image are positives too;
* ITM on the matched pairs plus one hard-negative text per image and one
  hard-negative image per text, drawn from the ITC similarities with every
  candidate of the same image excluded.

Evaluation (:class:`~albef_struct.lit.retrieval_eval.RetrievalEvalMixin`) scores
all pairs by ITC, re-ranks each query's top ``k_test`` with the ITM match logit
(both directions, batched, rows sharded across ranks) and reports
``txt_r1/5/10``, ``img_r1/5/10`` and ``r_mean``.

Zero-shot evaluation of any checkpoint is ``albef-struct test --config
configs/retrieval_flickr.yaml --model.init_args.init_from <ckpt>``: the weights
load when the module is built, so no ``--ckpt_path`` is needed.
"""

from __future__ import annotations

from typing import Any

import torch

from albef_struct.data import RetrievalDataModule
from albef_struct.data.collate import is_empty_batch
from albef_struct.lit.alignment import AlignmentMixin, checked_uniform_negative_steps
from albef_struct.lit.retrieval_eval import ITC_RECALL, ITM_RECALL, RETRIEVAL_TEST_RESULTS, RetrievalEvalMixin
from albef_struct.lit.schedule import OptimConfig
from albef_struct.lit.task import ALBEFModule
from albef_struct.losses import InfoNCEQueueLoss
from albef_struct.models import ALBEFConfig, FeatureQueue
from albef_struct.tasks.registry import register_task

# ALBEF's Retrieval_coco.yaml / Retrieval_flickr.yaml: lr 1e-5 (warm-up from 1e-5, i.e. none), cosine to 1e-6.
RETRIEVAL_OPTIM = OptimConfig(lr=1e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=100, min_lr=1e-6)


@register_task(
    "retrieval", "image-text retrieval (ITC + ITM)",
    datamodule=RetrievalDataModule,
    heads={"projections": True, "itm_head": True},
    queue=True,
    fresh_ok={"queue.": "the checkpoint has no feature queue (e.g. ALBEF's released fine-tuned files); it starts random"},
    optim=RETRIEVAL_OPTIM,
    training_loss="retrieval_losses",
    result_name=RETRIEVAL_TEST_RESULTS,
    title="retrieval fine-tuned",
    summary=ITC_RECALL + ITM_RECALL,
)
class RetrievalModule(AlignmentMixin, RetrievalEvalMixin, ALBEFModule):
    """Retrieval fine-tuning (ITC with same-image positives + hard-negative ITM) and evaluation.

    Batches: ``RetrievalDataModule`` (train: ``image``, ``input_ids``,
    ``attention_mask``, ``image_idx``; val/test: an image loader and a text
    loader). A pretraining checkpoint loads whole except its MLM head (dropped,
    with the reason logged); its feature queue is loaded too, as ALBEF does
    (``queue_size`` must equal the checkpoint's), and starts random when the
    file has none (ALBEF's released fine-tuned files). Momentum copies missing
    from the file are made from the loaded online weights.

    Args:
        arch: model sizes (ALBEF-base at 384 px by default); the retrieval head flags
            (projections and ITM head; no MLM head) are set here.
        optim: AdamW + schedule (default: ALBEF's retrieval recipe).
        queue_size: length of the momentum-feature queue (ALBEF: 65536; must equal the
            pretraining checkpoint's queue when it has one).
        momentum: EMA coefficient of the teacher (ALBEF: 0.995).
        alpha: distillation weight of the ITC targets (ALBEF: 0.4).
        alpha_warmup: ramp alpha from 0 over the first epoch (ALBEF ``warm_up: True``).
        distill: use the teacher's similarities in the ITC targets; off = one-hot
            same-image targets (the teacher still supplies the queued features, as in ALBEF).
        same_image_positives: every caption of the anchor's image (batch and queue) is a
            positive (ALBEF); off = only the paired caption.
        itm_single_fusion_call: fuse positive and negative ITM pairs in one call (same numbers).
        itm_uniform_negative_steps: optimizer steps with uniformly drawn (easy) ITM negatives
            before ALBEF's hard negatives (ALBEF: 0).
        itm_first_token_only: the last fusion layer of the ITM pairs computes [CLS] alone (same loss
            to rounding, less work); off: every position, as ALBEF.
        itc_queue_in_place: the ITC loss reads the queue itself and the step's momentum features
            enter it after backward (same loss, two queue copies less memory); off: ALBEF's copy.
        itc_fp32_logits: the ITC similarities are computed in float32 under mixed-precision autocast
            too (no half-precision queue copy kept for backward); off: autocast's precision, as ALBEF.
        init_from: checkpoint to start from (this project's, or an official ALBEF file).
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
        k_test: candidates per query re-ranked by ITM at evaluation (ALBEF: COCO 256, Flickr 128).
        rerank_batch_size: image-text pairs per fusion call when re-ranking.
        rerank_itc_weight: a re-ranked candidate's score is its ITM match logit plus this times its ITC
            cosine similarity (0: ALBEF's rule, ITM alone; 1: BLIP's sum).
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
        same_image_positives: bool = True,
        itm_single_fusion_call: bool = True,
        itm_uniform_negative_steps: int = 0,
        itm_first_token_only: bool = True,
        itc_queue_in_place: bool = True,
        itc_fp32_logits: bool = True,
        init_from: str | None = None,
        text_dropout: float | None = None,
        k_test: int = 256,
        rerank_batch_size: int = 128,
        rerank_itc_weight: float = 0.0,
    ) -> None:
        # The teacher always exists: its features fill the queue even without distillation.
        super().__init__(
            self.task_spec.arch(arch), optim or self.task_spec.optim, alpha, alpha_warmup, distill=True, momentum=momentum,
            init_from=init_from, text_dropout=text_dropout,
        )
        if k_test < 1:
            raise ValueError(f"k_test must be at least 1, got {k_test}")
        self.distill = distill
        self.contrastive = InfoNCEQueueLoss(same_image_positives=same_image_positives, fp32_logits=itc_fp32_logits)
        self.queue = FeatureQueue(self.model.config.embed_dim, queue_size)
        self.itm_single_fusion_call = itm_single_fusion_call
        self.itm_uniform_negative_steps = checked_uniform_negative_steps(itm_uniform_negative_steps)
        self.itc_queue_in_place = itc_queue_in_place
        self.itm_first_token_only = itm_first_token_only
        self.k_test = k_test
        self.rerank_batch_size = rerank_batch_size
        self.rerank_itc_weight = float(rerank_itc_weight)
        self.load_init_weights()

    def training_alpha(self) -> float:
        """The distillation weight of this step (0 without distillation)."""
        return self.current_alpha() if self.distill else 0.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None
        alpha = self.training_alpha()
        losses = self.retrieval_losses(batch, alpha)
        self.log_losses("train", losses, batch_size=batch["image"].shape[0])
        self.log("train/alpha", alpha, on_step=True, on_epoch=False)
        self.log("train/temp", self.model.temp.detach(), on_step=True, on_epoch=False)
        return losses["loss"]

    def retrieval_losses(self, batch: dict[str, Any], alpha: float) -> dict[str, torch.Tensor]:
        """ITC + ITM for one batch; updates the teacher before its forward and the queue after ITC."""
        image_ids = batch["image_idx"]
        enc = self.encode_batch(batch)
        itc = self.contrastive_step(enc, batch, alpha, image_ids=image_ids)
        loss_itm = self.itm(enc.image, enc.text, batch["attention_mask"], itc.sim_i2t, itc.sim_t2i, image_ids=image_ids)
        return {"itc": itc.loss, "itm": loss_itm, **itc.logs, "loss": itc.loss + loss_itm}
