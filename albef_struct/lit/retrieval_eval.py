"""Image-text retrieval evaluation: ITC similarities for all pairs, then ITM re-ranking of the top k.

Used by pretraining (zero-shot retrieval on a held-out split) and by the
retrieval task. Evaluation dataloaders come in pairs: ``dataloader_idx`` 0
yields image batches ``{image, image_index}``, 1 yields text batches
``{input_ids, attention_mask, text_index, image_index}``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from albef_struct.metrics.report import format_table, write_json
from albef_struct.metrics.retrieval import chance_recall, retrieval_metrics
from albef_struct.models.albef import ALBEF
from albef_struct.tasks.registry import SummaryMetric

Gather = Callable[[torch.Tensor], torch.Tensor]

#: The results file of a retrieval test (``retrieval_<stage>.json``) and its rows in ``make demo``'s table.
RETRIEVAL_TEST_RESULTS = "retrieval_test"
ITC_RECALL = (SummaryMetric("itc_txt_r1", "image->text R@1, ITC", "txt_r1"),
              SummaryMetric("itc_img_r1", "text->image R@1, ITC", "img_r1"))
ITM_RECALL = (SummaryMetric("txt_r1", "image->text R@1, ITM re-ranked"),
              SummaryMetric("img_r1", "text->image R@1, ITM re-ranked"))


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
) -> torch.Tensor:
    """ITM "match" logit for aligned pairs (row i of each input), in chunks of ``batch_size``.

    Pairs are processed shortest text first and each chunk is cut to its longest
    text, so evaluation padding costs nothing.
    """
    lengths = text_masks.sum(dim=1)
    order = lengths.argsort()
    scores = torch.empty(order.shape[0], device=image_embeds.device)
    for start in range(0, order.shape[0], batch_size):
        chunk = order[start : start + batch_size]
        width = int(lengths[chunk].max())
        fused = model.fuse(text_embeds[chunk, :width], text_masks[chunk, :width], image_embeds[chunk])
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's retrieval scores: -100 everywhere except each query's top ``k_test`` by ITC,
    which get the ITM match logit. Rows are split across ranks and gathered.

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
        if gather is not None and world > 1:
            local, top, row_ids = _gather_rows(gather, local, top, row_ids, math.ceil(n_query / world))
        scores = torch.full((n_query, n_cand), -100.0, device=query_sims.device)
        scores[row_ids.view(-1, 1), top] = local
        return scores

    def i2t_pairs(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return itm_match_scores(
            model, gallery.image_embeds[images], gallery.text_embeds[texts], gallery.text_masks[texts], batch_size
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


class RetrievalEvalMixin:
    """Validation/test steps for retrieval; needs ``self.model`` (an ALBEF with projections and ITM).

    Logs ``<stage>/txt_r1`` ... ``<stage>/r_mean`` (ITM re-ranked, ALBEF's protocol)
    and the same with an ``itc_`` prefix for the ITC ranking alone; at test end
    prints the table next to chance level and writes ``retrieval_<stage>.json``.
    """

    k_test: int
    rerank_batch_size: int

    def _eval_buffers(self) -> dict[str, list]:
        if not hasattr(self, "_retrieval_buffers"):
            self._retrieval_buffers: dict[str, list] = defaultdict(list)
        return self._retrieval_buffers

    def _collect(self, batch: dict, dataloader_idx: int) -> None:
        buffers = self._eval_buffers()
        if dataloader_idx == 0:
            image = self.model.encode_image(batch["image"])
            buffers["image_index"].append(batch["image_index"])
            buffers["image_embeds"].append(image.embeds)
            buffers["image_feats"].append(image.feat)
        else:
            text = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
            buffers["text_index"].append(batch["text_index"])
            buffers["txt2img"].append(batch["image_index"])
            buffers["text_embeds"].append(text.embeds)
            buffers["text_masks"].append(batch["attention_mask"])
            buffers["text_feats"].append(text.feat)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish_retrieval("val")

    def on_test_epoch_end(self) -> None:
        metrics, chance = self._finish_retrieval("test") or ({}, {})
        if metrics and self.trainer.is_global_zero:
            self._report_retrieval("test", metrics, chance)

    def _gallery(self) -> EncodedGallery | None:
        buffers = self._retrieval_buffers if hasattr(self, "_retrieval_buffers") else {}
        if not buffers.get("image_index") or not buffers.get("text_index"):
            return None
        max_len = max(t.shape[1] for t in buffers["text_embeds"])
        if self.trainer.world_size > 1:  # ranks may have padded their texts to different lengths
            max_len = int(self.all_gather(torch.tensor(max_len, device=self.device)).max())
        text_embeds = torch.cat([F.pad(t, (0, 0, 0, max_len - t.shape[1])) for t in buffers["text_embeds"]])
        text_masks = torch.cat([F.pad(m, (0, max_len - m.shape[1])) for m in buffers["text_masks"]])
        image_index, image_embeds, image_feats = self._gather_ordered(
            torch.cat(buffers["image_index"]), torch.cat(buffers["image_embeds"]), torch.cat(buffers["image_feats"])
        )
        text_index, text_embeds, text_masks, text_feats, txt2img = self._gather_ordered(
            torch.cat(buffers["text_index"]),
            text_embeds,
            text_masks,
            torch.cat(buffers["text_feats"]),
            torch.cat(buffers["txt2img"]),
        )
        return EncodedGallery(image_embeds, image_feats, text_embeds, text_masks, text_feats, txt2img)

    def _gather_ordered(self, index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All-gather across ranks, sort by dataset index and drop duplicates (sampler padding)."""
        if self.trainer.world_size > 1:
            index = self.all_gather(index).flatten(0, 1)
            values = tuple(self.all_gather(v).flatten(0, 1) for v in values)
        index, order = index.sort()
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return (index[keep], *(v[order][keep] for v in values))

    def _finish_retrieval(self, stage: str) -> tuple[dict[str, float], dict[str, float]] | None:
        gallery = self._gallery()
        self._retrieval_buffers = defaultdict(list)
        if gallery is None:
            return None
        score_i2t, score_t2i = rerank(
            self.model,
            gallery,
            self.k_test,
            self.rerank_batch_size,
            rank=self.trainer.global_rank,
            world=self.trainer.world_size,
            gather=self.all_gather,
        )
        metrics = retrieval_metrics(score_i2t, score_t2i, gallery.txt2img)
        sims = gallery.image_feats.float() @ gallery.text_feats.float().T
        itc_only = retrieval_metrics(sims, sims.T, gallery.txt2img)
        metrics.update({f"itc_{name}": value for name, value in itc_only.items()})
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "r_mean", rank_zero_only=True)
        return metrics, chance_recall(gallery.txt2img, gallery.image_feats.shape[0])

    def _report_retrieval(self, stage: str, metrics: dict[str, float], chance: dict[str, float]) -> None:
        rows = []
        for direction, prefix in (("image->text", "txt"), ("text->image", "img")):
            for k in (1, 5, 10):
                key = f"{prefix}_r{k}"
                rows.append((direction, f"R@{k}", metrics[key], metrics[f"itc_{key}"], chance[key]))
        print(f"\nRetrieval results ({stage}; ITM re-ranks the top k_test={self.k_test} by ITC)")
        print(format_table(("direction", "metric", "ITC+ITM (%)", "ITC only (%)", "chance (%)"), rows))
        path = write_json(f"{self.results_dir}/retrieval_{stage}.json", {"metrics": metrics, "chance": chance, "k_test": self.k_test})
        print(f"written to {path}")
