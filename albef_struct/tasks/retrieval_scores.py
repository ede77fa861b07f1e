"""Retrieval scores without Lightning: ITC similarities for all pairs, the ITM match logit of the top k.

:mod:`albef_struct.lit.retrieval_eval` evaluates with them (across ranks);
:mod:`albef_struct.inference` re-ranks with :func:`itm_match_scores`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from albef_struct.models.albef import ALBEF

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EncodedGallery:
    """Every image and text of an evaluation split, ordered by their dataset index."""

    image_embeds: torch.Tensor  # [N, T_img, D_img]
    image_feats: torch.Tensor  # [N, E]
    text_embeds: torch.Tensor  # [M, L, D_txt]
    text_masks: torch.Tensor  # [M, L]
    text_feats: torch.Tensor  # [M, E]
    txt2img: torch.Tensor  # [M]


def shard_rows(n: int, rank: int, world: int) -> range:
    """Contiguous block of rows ``rank`` re-ranks (ALBEF's split)."""
    step = math.ceil(n / world)
    return range(min(n, rank * step), min(n, (rank + 1) * step))


@torch.no_grad()
def itm_match_scores(
    model: ALBEF,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    batch_size: int,
    image_index: torch.Tensor | None = None,
    text_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """ITM "match" logit for aligned pairs (row i of each input), in chunks of ``batch_size``.

    With ``image_index`` / ``text_index`` the embeddings are galleries and pair i is
    (``image_index[i]``, ``text_index[i]``): each chunk gathers only its own rows, so
    k_test pairs per query never hold a copy of every pair's tokens at once.
    Pairs are processed shortest text first (grouped by image first when indexed) and each
    chunk is cut to its longest text; a chunk projects each of its distinct images' keys and
    values once per fusion layer (a query image's k_test texts share one projection).
    """
    if (image_index is None) != (text_index is None) or (
        image_index is not None and image_index.shape != text_index.shape
    ):
        raise ValueError("itm_match_scores: give image_index and text_index together, one entry per pair "
                         f"(got {None if image_index is None else tuple(image_index.shape)} and "
                         f"{None if text_index is None else tuple(text_index.shape)})")
    n_pairs = (image_index if image_index is not None else image_embeds).shape[0]
    image_rows = image_index if image_index is not None else torch.arange(n_pairs, device=image_embeds.device)
    text_rows = text_index if text_index is not None else torch.arange(n_pairs, device=text_embeds.device)
    lengths = text_masks.sum(dim=1)[text_rows]
    order = lengths.argsort(stable=True)
    if image_index is not None:  # by image, then by text length (aligned pairs: every image differs)
        order = order[image_rows[order].argsort(stable=True)]
    scores = torch.empty(n_pairs, device=image_embeds.device)
    for start in range(0, n_pairs, batch_size):
        chunk = order[start : start + batch_size]
        width = int(lengths[chunk].max())
        texts = text_rows[chunk]
        images, index = image_rows[chunk].unique(return_inverse=True)
        fused = model.fuse(
            text_embeds[texts, :width], text_masks[texts, :width], image_embeds[images],
            first_token_only=True, image_index=index,
        )
        scores[chunk] = model.itm_logits(fused)[:, 1].float()
    return scores


@torch.no_grad()
def rerank(
    model: ALBEF,
    gallery: EncodedGallery,
    k_test: int,
    batch_size: int = 128,
    rank: int = 0,
    world: int = 1,
    gather: Gather | None = None,
    itc_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's retrieval scores: -100 everywhere except each query's top ``k_test`` by ITC,
    which get the ITM match logit, plus ``itc_weight`` times the pair's ITC cosine similarity
    (0: ALBEF's rule, ITM alone; 1: BLIP's sum). With an ITC term the others get -inf instead,
    since a weighted negative similarity can fall below -100. Rows are split across ranks and gathered.

    Returns ``(score_i2t [N, M], score_t2i [M, N])``.
    """
    sims = gallery.image_feats.float() @ gallery.text_feats.float().T
    n_img, n_txt = sims.shape
    if k_test > min(n_img, n_txt):
        raise ValueError(
            f"k_test={k_test} is larger than the evaluation gallery ({n_img} images, {n_txt} texts); "
            f"set k_test to at most {min(n_img, n_txt)}"
        )

    def one_direction(query_sims: torch.Tensor, pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        n_query, n_cand = query_sims.shape
        rows = shard_rows(n_query, rank, world)
        row_ids = torch.arange(rows.start, rows.stop, device=query_sims.device)
        top = query_sims[row_ids].topk(k_test, dim=1).indices  # [r, k]
        queries = row_ids.view(-1, 1).expand_as(top).reshape(-1)
        local = pair(queries, top.reshape(-1)).view(-1, k_test)
        if itc_weight:
            local = local + itc_weight * query_sims[row_ids.view(-1, 1), top]
        if gather is not None and world > 1:
            local, top, row_ids = _gather_rows(gather, local, top, row_ids, math.ceil(n_query / world))
        scores = torch.full((n_query, n_cand), -100.0 if not itc_weight else -math.inf, device=query_sims.device)
        scores[row_ids.view(-1, 1), top] = local
        return scores

    def i2t_pairs(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return itm_match_scores(
            model, gallery.image_embeds, gallery.text_embeds, gallery.text_masks, batch_size,
            image_index=images, text_index=texts,
        )

    def t2i_pairs(texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return i2t_pairs(images, texts)

    return one_direction(sims, i2t_pairs), one_direction(sims.T, t2i_pairs)


def _gather_rows(
    gather: Gather, scores: torch.Tensor, top: torch.Tensor, rows: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather every rank's re-ranked rows (padded to ``block`` rows) and drop the padding."""
    pad = block - rows.shape[0]
    valid = torch.ones(block, dtype=torch.bool, device=rows.device)
    if pad:
        valid[rows.shape[0] :] = False
        scores = F.pad(scores, (0, 0, 0, pad))
        top = F.pad(top, (0, 0, 0, pad))
        rows = F.pad(rows, (0, pad))
    scores, top, rows, valid = (gather(t).flatten(0, 1) for t in (scores, top, rows, valid))
    return scores[valid], top[valid], rows[valid]
