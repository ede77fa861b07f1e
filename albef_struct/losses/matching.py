"""Image-text matching: hard-negative sampling from contrastive similarities and the ITM loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_weights(sim: torch.Tensor, same_image: torch.Tensor) -> torch.Tensor:
    """Row-wise sampling weights ``softmax(sim)`` with same-image entries zeroed.

    ``sim`` is ``[B, B]`` (anchors x in-batch candidates); ``same_image[i, j]`` is
    True where candidate ``j`` shows the same image as anchor ``i`` (at least
    the diagonal).
    """
    weights = F.softmax(sim.float(), dim=1).masked_fill(same_image, 0.0)
    # A row whose softmax mass underflowed to zero falls back to uniform over valid candidates; so does a
    # NaN/Inf row (non-finite features), so that the loss, not torch.multinomial, reports the problem.
    empty = ~(weights.sum(dim=1, keepdim=True) > 0)
    uniform = (~same_image).to(weights.dtype)
    return torch.where(empty, uniform, weights)


_SINGLE_IMAGE = (
    "hard-negative sampling needs at least two different images in every batch; "
    "increase the batch size or shuffle the data so a batch is not a single image's captions"
)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    uniform: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative text per image and one hard negative image per text.

    ``sim_i2t``/``sim_t2i`` are the ``[B, B]`` in-batch ITC logits. Candidates
    showing the same image (same ``image_ids``; the diagonal when ids are not
    given) are never drawn. With ``uniform`` every other-image candidate is equally
    likely (easy negatives; the similarities are ignored). One ``torch.multinomial``
    call per direction, no loop. Returns ``(neg_text_for_image, neg_image_for_text)``,
    index tensors of shape ``[B]``.
    """
    batch = sim_i2t.shape[0]
    if batch < 2:
        raise ValueError(_SINGLE_IMAGE)
    if image_ids is None:
        same = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
    else:
        ids = image_ids.view(-1, 1)
        same = ids == ids.T
        if bool(same.all(dim=1).any()):  # the only host sync, and only when image ids are given
            raise ValueError(_SINGLE_IMAGE)
    if uniform:  # "same image" is symmetric, so one weight matrix serves both directions
        weights_text = weights_image = (~same).float()
    else:
        weights_text, weights_image = negative_weights(sim_i2t, same), negative_weights(sim_t2i, same.T)
    neg_text = torch.multinomial(weights_text, 1, generator=generator).squeeze(1)
    neg_image = torch.multinomial(weights_image, 1, generator=generator).squeeze(1)
    return neg_text, neg_image


def itm_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over matched pairs (label 1) and mismatched pairs (label 0)."""
    logits = torch.cat([positive_logits, negative_logits], dim=0)
    labels = torch.cat(
        [
            torch.ones(positive_logits.shape[0], dtype=torch.long, device=logits.device),
            torch.zeros(negative_logits.shape[0], dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits.float(), labels)
