"""Image-text retrieval recall@k (ALBEF's ``itm_eval``) and its chance level."""

from __future__ import annotations

import math

import torch

KS = (1, 5, 10)


def best_relevant_rank(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Per query (row), the 0-based rank of its best-scored relevant candidate.

    A candidate's rank counts the candidates scored strictly higher plus the
    irrelevant candidates tied with it, so ties never flatter the result (ALBEF's
    argsort breaks them arbitrarily; on tie-free scores the two agree). A query
    without any relevant candidate gets a rank no k reaches.
    """
    masked = scores.masked_fill(~relevant, float("-inf"))
    best = masked.max(dim=1, keepdim=True).values
    higher = (scores > best).sum(dim=1)
    ties = ((scores == best) & ~relevant).sum(dim=1)
    never = torch.full_like(higher, torch.iinfo(higher.dtype).max)
    return torch.where(relevant.any(dim=1), higher + ties, never)


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Percentage of queries with at least one relevant candidate in the top k."""
    ranks = best_relevant_rank(scores.float(), relevant)
    return {k: 100.0 * (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(score_i2t: torch.Tensor, score_t2i: torch.Tensor, txt2img: torch.Tensor) -> dict[str, float]:
    """ALBEF's retrieval metrics from ``[N_img, N_txt]`` and ``[N_txt, N_img]`` score matrices.

    ``txt2img[j]`` is the image of text ``j``; an image's relevant texts are all
    its captions. Returns ``txt_r1/5/10`` (image->text), ``img_r1/5/10``
    (text->image), their means and ``r_mean``.
    """
    txt2img = txt2img.to(score_i2t.device)
    n_img = score_i2t.shape[0]
    relevant_t2i = txt2img.view(-1, 1) == torch.arange(n_img, device=txt2img.device).view(1, -1)
    txt = recall_at_k(score_i2t, relevant_t2i.T)
    img = recall_at_k(score_t2i, relevant_t2i)
    metrics = {f"txt_r{k}": v for k, v in txt.items()} | {f"img_r{k}": v for k, v in img.items()}
    metrics["txt_r_mean"] = sum(txt.values()) / len(txt)
    metrics["img_r_mean"] = sum(img.values()) / len(img)
    metrics["r_mean"] = (metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2
    return metrics


def chance_recall(txt2img: torch.Tensor, n_images: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Expected recall@k (percent) of a random ranking, in the keys of :func:`retrieval_metrics`."""
    n_texts = int(txt2img.numel())
    per_image = torch.bincount(txt2img.long(), minlength=n_images).tolist()
    out: dict[str, float] = {}
    for k in ks:
        miss = [
            1.0 if n == 0 else (math.comb(n_texts - n, k) / math.comb(n_texts, k) if n_texts >= k else 0.0)
            for n in per_image
        ]
        out[f"txt_r{k}"] = 100.0 * (1.0 - sum(miss) / n_images)
        out[f"img_r{k}"] = 100.0 * min(1.0, k / n_images)
    return out
