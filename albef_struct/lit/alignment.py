"""Image-text alignment shared by pretraining and retrieval: encoders, ITC with queue, hard-negative ITM."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch

from albef_struct.losses import ContrastiveInputs, ContrastiveOutput, itm_loss, sample_hard_negatives
from albef_struct.models.albef import Encoded


class EncodedBatch(NamedTuple):
    """Online and momentum-teacher encodings of one image-text batch."""

    image: Encoded
    text: Encoded
    image_m: Encoded
    text_m: Encoded


def checked_uniform_negative_steps(steps: int) -> int:
    """``itm_uniform_negative_steps`` validated: a step count, 0 for ALBEF's hard negatives throughout."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"itm_uniform_negative_steps must be a non-negative step count, got {steps!r}")
    return steps


class AlignmentMixin:
    """ITC + ITM steps for a module with ``model``, ``teacher``, ``queue``, ``contrastive``.

    The teacher is updated before its forward pass and the queue after the
    contrastive loss, in ALBEF's order. With ``itc_queue_in_place`` the loss reads
    the queue without copying it, so a training step's momentum features enter
    the queue once its backward pass is done (``on_after_backward``), or at the
    start of the next contrastive step when no backward ran; either way before
    the next step reads the queue. Without it, the loss gets copies (ALBEF's way)
    and the features enter the queue at once.
    Losses without a queue contrast against the global batch: features are
    all-gathered with gradients across ranks.
    """

    itm_single_fusion_call: bool
    itm_uniform_negative_steps: int = 0
    itc_queue_in_place: bool = True
    itm_first_token_only: bool = True
    _pending_enqueue: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def encode_batch(self, batch: dict[str, Any]) -> EncodedBatch:
        model, teacher = self.model, self.teacher.model
        ids, mask = batch["input_ids"], batch["attention_mask"]
        model.clamp_temperature()
        image = model.encode_image(batch["image"])
        text = model.encode_text(ids, mask)
        with torch.no_grad():
            self.update_teacher()
            image_m = teacher.encode_image(batch["image"])
            text_m = teacher.encode_text(ids, mask)
        return EncodedBatch(image, text, image_m, text_m)

    def contrastive_step(
        self, enc: EncodedBatch, batch: dict[str, Any], alpha: float, image_ids: torch.Tensor | None = None
    ) -> ContrastiveOutput:
        """The configured contrastive loss; the momentum features (and ids) enter the queue after backward."""
        self.flush_enqueue()
        uses_queue = self.contrastive.uses_queue
        inputs = ContrastiveInputs(
            image_feat=enc.image.feat,
            text_feat=enc.text.feat,
            temp=self.model.temp,
            image_feat_m=enc.image_m.feat,
            text_feat_m=enc.text_m.feat,
            image_queue=self._queue_for_loss(self.queue.image_feats) if uses_queue else None,
            text_queue=self._queue_for_loss(self.queue.text_feats) if uses_queue else None,
            alpha=alpha,
            image_ids=image_ids,
            queue_ids=self.queue.idx.view(-1) if uses_queue else None,
            sample_index=batch.get("index"),
        )
        if not uses_queue and self._world_size() > 1:
            self._add_global_candidates(inputs)
        out = self.contrastive(inputs)
        if uses_queue:
            self._pending_enqueue = (enc.image_m.feat, enc.text_m.feat, image_ids)
            if not (self.itc_queue_in_place and out.loss.requires_grad):  # no backward reads the queue
                self.flush_enqueue()
        return out

    def _queue_for_loss(self, queue: torch.Tensor) -> torch.Tensor:
        return queue if self.itc_queue_in_place else queue.clone()

    def flush_enqueue(self) -> None:
        """Enqueue the last contrastive step's momentum features, if still pending."""
        pending, self._pending_enqueue = self._pending_enqueue, None
        if pending is not None:
            self.enqueue(*pending)

    def on_after_backward(self) -> None:
        self.flush_enqueue()

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _add_global_candidates(self, inputs: ContrastiveInputs) -> None:
        """Global-batch candidates (gradients flow back to every rank) and a state-sync gather."""
        batch = inputs.image_feat.shape[0]
        inputs.image_candidates = self.all_gather(inputs.image_feat, sync_grads=True).flatten(0, 1)
        inputs.text_candidates = self.all_gather(inputs.text_feat, sync_grads=True).flatten(0, 1)
        offset = self.trainer.global_rank * batch
        inputs.positive_index = torch.arange(offset, offset + batch, device=inputs.image_feat.device)
        if inputs.sample_index is not None:
            inputs.candidate_sample_index = self.all_gather(inputs.sample_index).flatten(0, 1)
        inputs.gather = lambda tensor: self.all_gather(tensor).flatten(0, 1)

    @torch.no_grad()
    def enqueue(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Push the momentum features of the global batch (all ranks) into the queue."""
        if self._world_size() > 1:
            image_feat_m = self.all_gather(image_feat_m).flatten(0, 1)
            text_feat_m = self.all_gather(text_feat_m).flatten(0, 1)
            ids = None if ids is None else self.all_gather(ids).flatten(0, 1)
        self.queue.enqueue(image_feat_m, text_feat_m, ids)

    def itm(
        self,
        image: Encoded,
        text: Encoded,
        mask: torch.Tensor,
        sim_i2t: torch.Tensor,
        sim_t2i: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM over B matched pairs and 2B negative pairs: hard ones drawn from the ITC logits, or
        uniformly drawn ones during the first ``itm_uniform_negative_steps`` optimizer steps."""
        uniform = self.global_step < self.itm_uniform_negative_steps
        neg_text, neg_image = sample_hard_negatives(sim_i2t, sim_t2i, image_ids, uniform=uniform)
        batch = mask.shape[0]
        texts = torch.cat([text.embeds, text.embeds, text.embeds[neg_text]])
        masks = torch.cat([mask, mask, mask[neg_text]])
        own = torch.arange(batch, device=neg_image.device)
        image_index = torch.cat([own, neg_image, own])
        first_only = self.itm_first_token_only
        if self.itm_single_fusion_call:  # each image's cross-attention keys and values projected once
            fused = self.model.fuse(texts, masks, image.embeds, first_token_only=first_only, image_index=image_index)
            logits = self.model.itm_logits(fused)
        else:  # ALBEF's two calls: matched pairs, then both kinds of negatives
            images = image.embeds[image_index]
            fuse = partial(self.model.fuse, first_token_only=first_only)
            positive = self.model.itm_logits(fuse(texts[:batch], masks[:batch], images[:batch]))
            negative = self.model.itm_logits(fuse(texts[batch:], masks[batch:], images[batch:]))
            logits = torch.cat([positive, negative])
        return itm_loss(logits[:batch], logits[batch:])
