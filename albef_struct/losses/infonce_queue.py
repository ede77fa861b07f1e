"""ALBEF's image-text contrastive loss: a momentum-feature queue as extra candidates, distilled targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from albef_struct.losses.contrastive_base import ContrastiveInputs, ContrastiveLoss, ContrastiveOutput
from albef_struct.losses.mlm import soft_cross_entropy

__all__ = ["InfoNCEQueueLoss", "logits_with_queue", "positive_targets"]


def positive_targets(image_ids: torch.Tensor | None, candidate_ids: torch.Tensor | None, batch: int, total: int, device: torch.device) -> torch.Tensor:
    """Row-normalised ``[B, total]`` targets: 1 where a candidate shows the anchor's image.

    Without ids the positives are the diagonal of the first ``batch`` columns.
    """
    if image_ids is None or candidate_ids is None:
        targets = torch.zeros(batch, total, device=device)
        targets[:, :batch].fill_diagonal_(1.0)
        return targets
    positives = (image_ids.view(-1, 1) == candidate_ids.view(1, -1)).float()
    return positives / positives.sum(dim=1, keepdim=True)


class InfoNCEQueueLoss(ContrastiveLoss):
    """ALBEF's ITC: candidates = [batch momentum features, queue], momentum-distilled targets.

    Targets are ``alpha * softmax(teacher logits) + (1 - alpha) * positives``;
    positives are the diagonal, or every candidate of the same image when
    ``same_image_positives`` is on and image ids are given (retrieval). The
    student's logits use the teacher's candidate features, as ALBEF does.

    The queues are read as given, not copied: a caller that updates its queue
    before the backward pass must pass copies (``AlignmentMixin`` enqueues after it).

    With ``fp32_logits`` (the default) the similarities are computed in float32 even under
    mixed-precision autocast: the queue then enters the product as it is stored instead of
    as a half-precision copy that autograd would keep until the backward pass (2 x 32 MiB at
    ALBEF's queue of 65,536 x 256), and the logits keep float32's resolution. Off, autocast
    decides the product's precision, as in ALBEF's code run under autocast.
    """

    uses_queue = True
    uses_teacher = True

    def __init__(self, same_image_positives: bool = False, fp32_logits: bool = True) -> None:
        super().__init__()
        self.same_image_positives = same_image_positives
        self.fp32_logits = fp32_logits

    def forward(self, inputs: ContrastiveInputs) -> ContrastiveOutput:
        if inputs.image_feat_m is None or inputs.text_feat_m is None:
            raise ValueError("infonce_queue needs the momentum teacher's features")
        batch = inputs.image_feat.shape[0]
        queue_len = 0 if inputs.image_queue is None else inputs.image_queue.shape[1]
        ids, candidate_ids = None, None
        if self.same_image_positives and inputs.image_ids is not None:
            ids = inputs.image_ids
            candidate_ids = ids if inputs.queue_ids is None else torch.cat([ids, inputs.queue_ids.view(-1)])
        targets = positive_targets(ids, candidate_ids, batch, batch + queue_len, inputs.image_feat.device)
        fp32 = self.fp32_logits

        with torch.no_grad():
            sim_i2t_m = logits_with_queue(inputs.image_feat_m, inputs.text_feat_m, inputs.text_queue, fp32) / inputs.temp
            sim_t2i_m = logits_with_queue(inputs.text_feat_m, inputs.image_feat_m, inputs.image_queue, fp32) / inputs.temp
            targets_i2t = inputs.alpha * F.softmax(sim_i2t_m, dim=1) + (1 - inputs.alpha) * targets
            targets_t2i = inputs.alpha * F.softmax(sim_t2i_m, dim=1) + (1 - inputs.alpha) * targets

        sim_i2t = logits_with_queue(inputs.image_feat, inputs.text_feat_m, inputs.text_queue, fp32) / inputs.temp
        sim_t2i = logits_with_queue(inputs.text_feat, inputs.image_feat_m, inputs.image_queue, fp32) / inputs.temp
        loss_i2t = soft_cross_entropy(sim_i2t, targets_i2t).mean()
        loss_t2i = soft_cross_entropy(sim_t2i, targets_t2i).mean()
        return ContrastiveOutput(
            loss=(loss_i2t + loss_t2i) / 2,
            sim_i2t=sim_i2t[:, :batch],
            sim_t2i=sim_t2i[:, :batch],
            logs={"itc_i2t": loss_i2t.detach(), "itc_t2i": loss_t2i.detach()},
        )


def logits_with_queue(
    anchors: torch.Tensor, batch_feats: torch.Tensor, queue: torch.Tensor | None, fp32: bool = False
) -> torch.Tensor:
    """``[B, B (+ Q)]`` similarities of ``anchors`` with the batch's (momentum) features, then the queue.

    The queue enters its product as it is, not copied: autograd keeps a reference for the
    anchors' gradient, so the caller must not enqueue before the backward pass
    (``AlignmentMixin`` defers it); an in-place update before then fails loudly. ``fp32``
    computes in float32 (float64 stays float64) whatever autocast is active, so a float32 queue
    enters uncast.
    """
    if fp32:
        wide = torch.promote_types(anchors.dtype, torch.float32)
        with torch.autocast(anchors.device.type, enabled=False):
            return logits_with_queue(anchors.to(wide), batch_feats.to(wide), queue)
    own = anchors @ batch_feats.T
    if queue is None:
        return own
    return torch.cat([own, anchors @ queue.detach().to(anchors.dtype)], dim=1)
