"""Image-text retrieval evaluation: ITC similarities for all pairs, then ITM re-ranking of the top k.

Used by pretraining (zero-shot retrieval on a held-out split) and by the
retrieval task. Evaluation dataloaders come in pairs: ``dataloader_idx`` 0
yields image batches ``{image, image_index}``, 1 yields text batches
``{input_ids, attention_mask, text_index, image_index}``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from albef_struct.metrics.report import format_table, write_json
from albef_struct.metrics.retrieval import chance_recall, retrieval_metrics
from albef_struct.tasks.registry import SummaryMetric
from albef_struct.tasks.retrieval_scores import EncodedGallery, itm_match_scores, rerank, shard_rows

__all__ = ["EncodedGallery", "ITC_RECALL", "ITM_RECALL", "RETRIEVAL_TEST_RESULTS", "RetrievalEvalMixin",
           "itm_match_scores", "rerank", "shard_rows"]

#: The results file of a retrieval test (``retrieval_<stage>.json``) and its rows in ``make demo``'s table.
RETRIEVAL_TEST_RESULTS = "retrieval_test"
ITC_RECALL = (SummaryMetric("itc_txt_r1", "image->text R@1, ITC", "txt_r1"),
              SummaryMetric("itc_img_r1", "text->image R@1, ITC", "img_r1"))
ITM_RECALL = (SummaryMetric("txt_r1", "image->text R@1, ITM re-ranked"),
              SummaryMetric("img_r1", "text->image R@1, ITM re-ranked"))


class RetrievalEvalMixin:
    """Validation/test steps for retrieval; needs ``self.model`` (an ALBEF with projections and ITM).

    Logs ``<stage>/txt_r1`` ... ``<stage>/r_mean`` (ITM re-ranked, ALBEF's protocol)
    and the same with an ``itc_`` prefix for the ITC ranking alone; at test end
    prints the table next to chance level and writes ``retrieval_<stage>.json``.
    """

    k_test: int
    rerank_batch_size: int
    rerank_itc_weight: float = 0.0

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
            itc_weight=self.rerank_itc_weight,
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
        rule = f"ITM + {self.rerank_itc_weight:g} x ITC similarity" if self.rerank_itc_weight else "ITM"
        print(f"\nRetrieval results ({stage}; {rule} re-ranks the top k_test={self.k_test} by ITC)")
        print(format_table(("direction", "metric", "ITC+ITM (%)", "ITC only (%)", "chance (%)"), rows))
        results = {"metrics": metrics, "chance": chance, "k_test": self.k_test, "rerank_itc_weight": self.rerank_itc_weight}
        path = write_json(f"{self.results_dir}/retrieval_{stage}.json", results)
        print(f"written to {path}")
