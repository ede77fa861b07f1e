"""Retrieval fine-tuning: checkpoint import, same-image ITC targets, hard negatives, evaluation, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader

import albef_struct.lit.alignment as alignment
import albef_struct.lit.retrieval_eval as retrieval_eval
from albef_struct.cli import main
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.retrieval_eval import EncodedGallery, itm_match_scores, rerank
from albef_struct.losses import ContrastiveInputs
from albef_struct.metrics.retrieval import retrieval_metrics
from albef_struct.models import TextConfig
from albef_struct.tasks.retrieval import RetrievalModule
from tests.conftest import REPO, tiny_config

CONFIGS = [REPO / "configs" / "retrieval_coco.yaml", REPO / "configs" / "retrieval_flickr.yaml",
           REPO / "configs" / "demo" / "retrieval.yaml"]
NO_DROPOUT = TextConfig(hidden=32, layers=2, fusion_layer=1, heads=2, intermediate=64, max_position=40,
                        hidden_dropout=0.0, attention_dropout=0.0)


def make_batch(image_idx: list[int], seed: int = 0, length: int = 6) -> dict[str, torch.Tensor]:
    """Random distinct images (one per image id) and random captions, as a training batch."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor(image_idx)
    images = torch.randn(int(ids.max()) + 1, 3, 32, 32, generator=gen)
    tokens = torch.randint(1000, 2000, (len(image_idx), length), generator=gen)
    tokens[:, 0] = 101
    return {"image": images[ids], "input_ids": tokens, "attention_mask": torch.ones_like(tokens),
            "image_idx": ids, "index": torch.arange(len(image_idx))}


def save_pretraining_checkpoint(path: Path, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A Lightning checkpoint of a tiny pretraining module (optionally without some key prefixes)."""
    torch.manual_seed(0)
    state = PretrainModule(arch=tiny_config(), queue_size=16).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    torch.save({"state_dict": state, "pytorch-lightning_version": pl.__version__}, path)
    return state


# --- construction and checkpoint import -------------------------------------------------------------
def test_head_flags_are_set_by_the_task():
    module = RetrievalModule(arch=tiny_config(mlm_head=True, classifier_classes=3), queue_size=16)
    config = module.model.config
    assert config.projections and config.itm_head and not config.mlm_head and not config.classifier_classes
    assert not hasattr(module.model, "mlm_head") and not hasattr(module.teacher.model, "itm_head")
    assert module.queue.idx.shape == (1, 16)


def test_pretraining_checkpoint_loads_without_its_mlm_head(tmp_path):
    source = save_pretraining_checkpoint(tmp_path / "pretrain.ckpt")
    module = RetrievalModule(arch=tiny_config(), queue_size=16, init_from=str(tmp_path / "pretrain.ckpt"))
    report = module.init_report
    ours = module.state_dict()
    for key in ("model.itm_head.weight", "teacher.model.text_proj.weight", "queue.image_feats", "queue.ptr"):
        assert torch.equal(ours[key], source[key]), key
    mlm = {k: why for k, why in report.dropped.items() if ".mlm_head." in k}
    assert mlm and set(mlm.values()) == {"the MLM head is only used in pretraining"}
    assert not report.fresh  # this project's pretraining queue has an (empty, -100) image-id row too
    assert (module.queue.idx == -100).all()


def test_checkpoint_without_queue_or_teacher_starts_a_fresh_queue(tmp_path):
    # ALBEF's released fine-tuned files hold neither momentum copies nor queues.
    source = save_pretraining_checkpoint(tmp_path / "bare.ckpt", drop=("queue.", "teacher."))
    module = RetrievalModule(arch=tiny_config(), queue_size=16, init_from=str(tmp_path / "bare.ckpt"))
    report = module.init_report
    assert {"queue.image_feats", "queue.text_feats", "queue.ptr", "queue.idx"} <= set(report.fresh)
    assert "teacher.model.visual_encoder.pos_embed" in report.from_online
    assert torch.equal(module.teacher.model.text_proj.weight, source["model.text_proj.weight"])


# --- the training step ---------------------------------------------------------------------------------
def itc_by_hand(inputs: ContrastiveInputs, positives: torch.Tensor) -> torch.Tensor:
    """ALBEF's retrieval ITC with an explicit ``[B, B + Q]`` 0/1 positive matrix."""
    targets = positives / positives.sum(dim=1, keepdim=True)
    image_all = torch.cat([inputs.image_feat_m.T, inputs.image_queue], dim=1)
    text_all = torch.cat([inputs.text_feat_m.T, inputs.text_queue], dim=1)
    losses = []
    for feat, feat_m, cands in ((inputs.image_feat, inputs.image_feat_m, text_all),
                                (inputs.text_feat, inputs.text_feat_m, image_all)):
        soft = inputs.alpha * torch.softmax(feat_m @ cands / inputs.temp, dim=1) + (1 - inputs.alpha) * targets
        losses.append(-(soft * torch.log_softmax(feat @ cands / inputs.temp, dim=1)).sum(dim=1).mean())
    return (losses[0] + losses[1]) / 2


def test_itc_counts_every_caption_of_the_same_image_as_positive_in_batch_and_queue():
    module = RetrievalModule(arch=tiny_config(), queue_size=16, alpha=0.4)
    captured: list[tuple[ContrastiveInputs, torch.Tensor]] = []
    forward = module.contrastive.forward

    def spy(inputs: ContrastiveInputs):
        frozen = ContrastiveInputs(**{f.name: getattr(inputs, f.name) for f in fields(inputs)})
        for name in ("image_queue", "text_queue", "queue_ids"):  # the queue is updated after the loss
            setattr(frozen, name, getattr(inputs, name).clone())
        out = forward(inputs)
        captured.append((frozen, out.loss.detach()))
        return out

    module.contrastive.forward = spy
    batch = make_batch([0, 0, 1, 2])  # two captions of image 0
    module.train()
    loss = module.retrieval_losses(batch, alpha=0.4)["loss"]
    assert (module.queue.idx == -100).all() and int(module.queue.ptr) == 0  # read by the loss until its backward
    loss.backward()
    module.on_after_backward()  # Lightning's hook after every backward pass
    assert torch.equal(module.queue.idx[0, :4], batch["image_idx"])  # the queue remembers image ids
    module.retrieval_losses(batch, alpha=0.4)

    first, second = captured
    assert torch.equal(first[0].image_ids, batch["image_idx"]) and (first[0].queue_ids == -100).all()
    in_batch = (batch["image_idx"][:, None] == batch["image_idx"][None, :]).float()
    positives = torch.cat([in_batch, torch.zeros(4, 16)], dim=1)  # empty queue slots are never positive
    torch.testing.assert_close(first[1], itc_by_hand(first[0], positives), atol=1e-6, rtol=0)
    positives[:, 4:8] = in_batch  # queue slots 0-3 now hold this batch's momentum features
    torch.testing.assert_close(second[1], itc_by_hand(second[0], positives), atol=1e-6, rtol=0)
    assert positives[0].nonzero().flatten().tolist() == [0, 1, 4, 5]


def test_hard_negatives_never_pair_captions_of_the_same_image(monkeypatch):
    torch.manual_seed(0)  # the weights and the draws; unseeded, they followed whatever test ran before
    module = RetrievalModule(arch=tiny_config(), queue_size=16)
    original = alignment.sample_hard_negatives
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []

    def repeated(sim_i2t, sim_t2i, image_ids=None, generator=None, uniform=False):
        assert image_ids is not None, "the retrieval step must pass image ids to the negative sampler"
        draws.extend(original(sim_i2t, sim_t2i, image_ids, uniform=uniform) for _ in range(200))
        return draws[-1]

    monkeypatch.setattr(alignment, "sample_hard_negatives", repeated)
    batch = make_batch([0, 0, 1, 2, 2, 3])
    module.train()
    module.retrieval_losses(batch, alpha=0.4)
    ids = batch["image_idx"]
    neg_text = torch.stack([d[0] for d in draws])  # [200, B]
    neg_image = torch.stack([d[1] for d in draws])
    assert (ids[neg_text] != ids).all() and (ids[neg_image] != ids).all()
    assert len(set(neg_text[:, 0].tolist())) == 4  # every other image's captions are drawn


def test_retrieval_losses_sum_itc_and_itm_and_update_the_teacher_first():
    module = RetrievalModule(arch=tiny_config(), queue_size=16, momentum=0.5)
    before = module.teacher.model.text_proj.weight.clone()
    with torch.no_grad():
        module.model.text_proj.weight.add_(1.0)
    online = module.model.text_proj.weight.clone()
    module.train()
    losses = module.retrieval_losses(make_batch([0, 0, 1, 2]), alpha=0.4)
    assert set(losses) >= {"itc", "itm", "loss"}
    torch.testing.assert_close(losses["loss"], losses["itc"] + losses["itm"])
    torch.testing.assert_close(module.teacher.model.text_proj.weight, 0.5 * before + 0.5 * online)
    losses["loss"].backward()
    assert module.model.itm_head.weight.grad is not None and module.model.vision_proj.weight.grad is not None
    assert module.model.temp.grad is not None
    module.on_after_backward()
    assert int(module.queue.ptr) == 4


def test_the_loss_keeps_the_queue_itself_not_a_copy_and_the_next_step_enqueues_what_is_pending():
    module = RetrievalModule(arch=tiny_config(), queue_size=1000)
    module.train()
    queue_numel = module.queue.image_feats.numel()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = module.retrieval_losses(make_batch([0, 1, 2, 3]), alpha=0.4)["loss"]
    queue_sized = {t.untyped_storage().data_ptr() for t in saved if t.numel() == queue_numel}
    held = {module.queue.image_feats.untyped_storage().data_ptr(), module.queue.text_feats.untyped_storage().data_ptr()}
    assert queue_sized == held  # the two queue buffers, and no copy of either
    loss.backward()  # no on_after_backward (a loop outside Lightning): the batch stays pending
    assert int(module.queue.ptr) == 0
    loss = module.retrieval_losses(make_batch([4, 5, 6, 7]), alpha=0.4)["loss"]  # enqueues the pending batch first
    assert int(module.queue.ptr) == 4 and module.queue.idx[0, :4].tolist() == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        module.flush_enqueue()  # an enqueue before backward would change what the backward pass reads
        loss.backward()
    assert int(module.queue.ptr) == 8 and module.queue.idx[0, :8].tolist() == list(range(8))


def test_tiny_model_overfits_a_few_pairs_to_perfect_recall():
    torch.manual_seed(0)
    module = RetrievalModule(arch=tiny_config(text=NO_DROPOUT), queue_size=16, momentum=0.9, k_test=4)
    batch = make_batch([0, 0, 1, 1, 2, 2, 3, 3])
    images = batch["image"][::2]
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 250
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    def recall() -> dict[str, float]:
        module.eval()
        with torch.no_grad():
            image = module.model.encode_image(images)
            text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
            gallery = EncodedGallery(image.embeds, image.feat, text.embeds, batch["attention_mask"], text.feat,
                                     batch["image_idx"])
            metrics = retrieval_metrics(*rerank(module.model, gallery, k_test=4), batch["image_idx"])
        module.train()
        return metrics

    losses, metrics = [], recall()
    module.train()
    for step in range(steps):
        loss = module.retrieval_losses(batch, alpha=0.4)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 10 == 9:
            metrics = recall()
            if metrics["txt_r1"] == metrics["img_r1"] == 100.0:
                break
    assert metrics["txt_r1"] == 100.0 and metrics["img_r1"] == 100.0, (step, metrics)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


# --- evaluation ----------------------------------------------------------------------------------------
def test_reranking_the_whole_gallery_equals_full_itm_scoring():
    torch.manual_seed(0)
    model = RetrievalModule(arch=tiny_config(), queue_size=16).model.eval()
    batch = make_batch([0, 1, 2, 3, 4], seed=3, length=7)
    batch["attention_mask"][1, 4:] = 0  # one shorter caption
    with torch.no_grad():
        image = model.encode_image(batch["image"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        gallery = EncodedGallery(image.embeds, image.feat, text.embeds, batch["attention_mask"], text.feat,
                                 batch["image_idx"])
        score_i2t, score_t2i = rerank(model, gallery, k_test=5, batch_size=3)
        full = torch.stack([model.itm_logits(model.fuse(text.embeds, batch["attention_mask"],
                                                        image.embeds[i].expand(5, -1, -1)))[:, 1] for i in range(5)])
    torch.testing.assert_close(score_i2t, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(score_t2i, full.T, atol=1e-5, rtol=0)
    assert (score_i2t > -100).all()
    pairs = itm_match_scores(model, image.embeds[[0, 3]], text.embeds[[2, 1]], batch["attention_mask"][[2, 1]], 1)
    torch.testing.assert_close(pairs, full[[0, 3], [2, 1]], atol=1e-5, rtol=0)
    by_index = itm_match_scores(model, image.embeds, text.embeds, batch["attention_mask"], 2,
                                image_index=torch.tensor([0, 3, 4]), text_index=torch.tensor([2, 1, 1]))
    torch.testing.assert_close(by_index, full[[0, 3, 4], [2, 1, 1]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="image_index and text_index together"):
        itm_match_scores(model, image.embeds, text.embeds, batch["attention_mask"], 2, image_index=torch.tensor([0, 3]))


def test_an_itc_weight_adds_the_weighted_cosine_to_the_itm_logit_of_each_reranked_pair():
    torch.manual_seed(0)
    model = RetrievalModule(arch=tiny_config(), queue_size=16).model.eval()
    batch = make_batch([0, 1, 2, 3, 4], seed=3, length=7)
    with torch.no_grad():
        image = model.encode_image(batch["image"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        gallery = EncodedGallery(image.embeds, image.feat, text.embeds, batch["attention_mask"], text.feat,
                                 batch["image_idx"])
        itm_i2t, itm_t2i = rerank(model, gallery, k_test=2)
        sum_i2t, sum_t2i = rerank(model, gallery, k_test=2, itc_weight=1.5)
        itc_i2t, itc_t2i = rerank(model, gallery, k_test=2, itc_weight=1e6)
    sims = image.feat @ text.feat.T
    for itm, summed, itc, query_sims in ((itm_i2t, sum_i2t, itc_i2t, sims), (itm_t2i, sum_t2i, itc_t2i, sims.T)):
        top = itm > -100
        assert torch.equal(top, summed > -100) and int(top.sum()) == 2 * 5  # the same top 2 per query
        torch.testing.assert_close(summed[top], itm[top] + 1.5 * query_sims[top], atol=1e-5, rtol=0)
        # a weight this large orders each query's candidates as ITC does
        assert torch.equal(itc.argmax(dim=1), query_sims.argmax(dim=1))
        assert torch.isinf(itc[~top]).all()  # below every re-ranked score, however negative
    assert not torch.equal(itm_i2t.argmax(dim=1), sims.argmax(dim=1))  # which ITM alone does not


def test_aligned_pairs_are_scored_shortest_text_first_in_chunks_cut_to_their_longest_text(monkeypatch):
    torch.manual_seed(0)
    model = RetrievalModule(arch=tiny_config(), queue_size=16).model.eval()
    batch = make_batch([0, 1, 2, 3], length=9)
    batch["attention_mask"][0, 4:] = 0
    batch["attention_mask"][2, 6:] = 0
    with torch.no_grad():
        image = model.encode_image(batch["image"]).embeds
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).embeds
    widths: list[int] = []
    fuse = model.fuse
    monkeypatch.setattr(model, "fuse", lambda t, m, i, **kw: widths.append(t.shape[1]) or fuse(t, m, i, **kw))
    scores = itm_match_scores(model, image, text, batch["attention_mask"], 2)
    assert widths == [6, 9]  # pairs 0 and 2 (4 and 6 tokens), then 1 and 3
    with torch.no_grad():
        full = model.itm_logits(fuse(text, batch["attention_mask"], image))[:, 1]
    torch.testing.assert_close(scores, full, atol=1e-5, rtol=0)


def test_rerank_gathers_each_chunk_from_the_gallery_and_projects_each_image_once_per_chunk(monkeypatch):
    """k_test pairs per query: a copy of every pair's tokens would be k_test x the gallery (TBs at ALBEF's 5k / 256);
    pairs are grouped by image, so a query image's texts share its cross-attention keys and values."""
    from albef_struct.tasks import retrieval_scores

    torch.manual_seed(0)
    model = RetrievalModule(arch=tiny_config(), queue_size=16).model.eval()
    batch = make_batch([0, 1, 2, 3, 4])
    with torch.no_grad():
        image = model.encode_image(batch["image"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    gallery = EncodedGallery(image.embeds, image.feat, text.embeds, batch["attention_mask"], text.feat, batch["image_idx"])
    chunks: list[tuple[int, int]] = []  # (pairs, distinct images) per fusion call
    fuse = model.fuse

    def spy(t, m, i, **kw):
        chunks.append((t.shape[0], i.shape[0]))
        return fuse(t, m, i, **kw)

    monkeypatch.setattr(model, "fuse", spy)
    calls = []
    original = retrieval_scores.itm_match_scores
    monkeypatch.setattr(retrieval_scores, "itm_match_scores",
                        lambda model, images, texts, *a, **kw: calls.append((images, texts)) or original(model, images, texts, *a, **kw))
    rerank(model, gallery, k_test=4, batch_size=4)
    assert len(calls) == 2 and all(i is gallery.image_embeds and t is gallery.text_embeds for i, t in calls)
    assert max(p for p, _ in chunks) == 4 and sum(p for p, _ in chunks) == 2 * 5 * 4  # every pair once per direction
    i2t = chunks[: len(chunks) // 2]
    assert all(images == 1 for _, images in i2t)  # one query image's 4 texts per chunk: its keys/values once
    assert sum(images for _, images in chunks) < sum(p for p, _ in chunks)


def eval_loaders(text_lengths: tuple[int, int] = (5, 7)) -> tuple[list[dict], list[dict]]:
    """3 images (index order shuffled across batches) and 6 captions: image 0 has 2, image 1 has 3, image 2 has 1."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    txt2img = torch.tensor([0, 0, 1, 1, 1, 2])
    image_batches = [{"image": images[[2, 0]], "image_index": torch.tensor([2, 0])},
                     {"image": images[[1]], "image_index": torch.tensor([1])}]
    text_batches = []
    for order, length in zip(([3, 0, 5], [1, 4, 2]), text_lengths):
        order = torch.tensor(order)
        ids = torch.randint(1000, 2000, (3, length), generator=gen)
        ids[:, 0] = 101
        text_batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "text_index": order,
                             "image_index": txt2img[order]})
    return image_batches, text_batches


# Hand-made re-ranked scores (rows: queries) and the recall they give.
HAND_I2T = torch.tensor([[0.5, 0.8, 0.9, 0.1, 0.2, 0.3],   # image 0: best own caption (1) at rank 1
                         [0.1, 0.2, 0.3, 0.4, 0.9, 0.5],   # image 1: own caption 4 first
                         [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]])  # image 2: own caption last (rank 5)
HAND_T2I = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.9, 0.1], [0.1, 0.9, 0.2],
                         [0.5, 0.1, 0.9], [0.1, 0.8, 0.3], [0.1, 0.2, 0.7]])  # ranks 0, 1, 0, 2, 0, 0
HAND_METRICS = {"txt_r1": 100 / 3, "txt_r5": 200 / 3, "txt_r10": 100.0,
                "img_r1": 400 / 6, "img_r5": 100.0, "img_r10": 100.0}


def test_evaluation_path_orders_the_gallery_and_computes_multi_caption_recall(tmp_path, monkeypatch):
    module = RetrievalModule(arch=tiny_config(), queue_size=16, k_test=2, rerank_itc_weight=0.5)
    image_batches, text_batches = eval_loaders()
    seen = {}

    def hand_rerank(model, gallery, k_test, batch_size=128, rank=0, world=1, gather=None, itc_weight=0.0):
        seen.update(gallery=gallery, k_test=k_test, itc_weight=itc_weight)
        return HAND_I2T.clone(), HAND_T2I.clone()

    monkeypatch.setattr(retrieval_eval, "rerank", hand_rerank)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    loaders = [DataLoader(image_batches, batch_size=None), DataLoader(text_batches, batch_size=None)]
    trainer.validate(module, dataloaders=loaders, verbose=False)

    gallery = seen["gallery"]
    assert seen["k_test"] == 2 and seen["itc_weight"] == 0.5
    assert gallery.txt2img.tolist() == [0, 0, 1, 1, 1, 2]
    assert gallery.text_masks.shape == (6, 7) and gallery.text_masks[[0, 3, 5]].sum(1).tolist() == [5, 5, 5]
    module.eval()
    with torch.no_grad():  # features sorted by dataset index: batch rows hold images [2, 0] then [1]
        feats = module.model.encode_image(torch.cat([b["image"] for b in image_batches])).feat
    torch.testing.assert_close(gallery.image_feats, feats[[1, 2, 0]], atol=1e-6, rtol=0)
    for key, value in HAND_METRICS.items():
        assert float(trainer.callback_metrics[f"val/{key}"]) == pytest.approx(value, abs=1e-4), key
    expected_mean = (sum(HAND_METRICS[f"txt_r{k}"] for k in (1, 5, 10)) / 3
                     + sum(HAND_METRICS[f"img_r{k}"] for k in (1, 5, 10)) / 3) / 2
    assert float(trainer.callback_metrics["val/r_mean"]) == pytest.approx(expected_mean, abs=1e-4)

    trainer.test(module, dataloaders=loaders, verbose=False)
    result = json.loads(next(tmp_path.rglob("retrieval_test.json")).read_text())
    assert result["metrics"]["txt_r5"] == pytest.approx(200 / 3)
    assert result["chance"]["img_r1"] == pytest.approx(100 / 3) and result["k_test"] == 2
    assert result["rerank_itc_weight"] == 0.5


def test_evaluation_without_patches_equals_direct_scoring(tmp_path):
    torch.manual_seed(0)
    module = RetrievalModule(arch=tiny_config(), queue_size=16, k_test=3)
    image_batches, text_batches = eval_loaders(text_lengths=(6, 6))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    loaders = [DataLoader(image_batches, batch_size=None), DataLoader(text_batches, batch_size=None)]
    trainer.validate(module, dataloaders=loaders, verbose=False)

    model = module.model.eval()
    image_order = torch.cat([b["image_index"] for b in image_batches]).argsort()  # dataset order
    text_order = torch.cat([b["text_index"] for b in text_batches]).argsort()
    images = torch.cat([b["image"] for b in image_batches])[image_order]
    ids = torch.cat([b["input_ids"] for b in text_batches])[text_order]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(ids, mask)
        gallery = EncodedGallery(image.embeds, image.feat, text.embeds, mask, text.feat,
                                 torch.tensor([0, 0, 1, 1, 1, 2]))
        expected = retrieval_metrics(*rerank(model, gallery, k_test=3), gallery.txt2img)
    for key, value in expected.items():
        assert float(trainer.callback_metrics[f"val/{key}"]) == pytest.approx(value, abs=1e-4), key


# --- configs and the command line ----------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "albef_struct.tasks.retrieval.RetrievalModule"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in printed["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/r_mean" and callbacks["ModelCheckpoint"]["mode"] == "max"


def test_albef_recipe_values_in_real_data_configs(capsys):
    expected = {"retrieval_coco.yaml": (256, 5), "retrieval_flickr.yaml": (128, 10)}
    for name, (k_test, epochs) in expected.items():
        config = yaml.safe_load((REPO / "configs" / name).read_text())
        model = config["model"]["init_args"]
        assert model["k_test"] == k_test and config["trainer"]["max_epochs"] == epochs
        assert model["optim"]["lr"] == 1e-5 and model["optim"]["min_lr"] == 1e-6
        assert model["queue_size"] == 65536 and model["alpha"] == 0.4 and model["alpha_warmup"] is True
        assert model["arch"]["vision"]["img_size"] == 384 and config["data"]["init_args"]["batch_size"] == 32


def test_zero_shot_overrides_parse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(CONFIGS[1]), "--model.init_args.init_from", "ALBEF_4M.pth",
              "--model.init_args.arch.vision.img_size", "256", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["init_from"] == "ALBEF_4M.pth"
    assert printed["model"]["init_args"]["arch"]["vision"]["img_size"] == 256
    assert printed["model"]["init_args"]["arch"]["vision"]["width"] == 768  # the rest of arch is kept


TINY_ARCH = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
    "embed_dim": 16,
}


@pytest.mark.slow
def test_cli_fit_two_steps_then_test_and_zero_shot_test(tmp_path, demo_dir, capsys):
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "monitor": "val/r_mean", "mode": "max"}}],
        },
        "model": {"class_path": "albef_struct.tasks.retrieval.RetrievalModule",
                  "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-4, "warmup_steps": 1},
                                "queue_size": 64, "k_test": 4}},
        "data": {"class_path": "albef_struct.data.RetrievalDataModule",
                 "init_args": {"train_file": str(demo_dir / "retrieval_train.json"),
                               "val_file": str(demo_dir / "retrieval_val.json"),
                               "test_file": str(demo_dir / "retrieval_test.json"),
                               "image_root": str(demo_dir), "image_res": 32, "batch_size": 16,
                               "eval_batch_size": 8, "num_workers": 0, "hflip": False}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[-1]
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert payload["global_step"] == 2 and int(payload["state_dict"]["queue.ptr"]) == 32
    assert (payload["state_dict"]["queue.idx"][0, :32] >= 0).all()  # image ids entered the queue

    assert main(["test", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    result_file = sorted((tmp_path / "run").rglob("retrieval_test.json"))[-1]
    with_ckpt = json.loads(result_file.read_text())
    assert set(with_ckpt["metrics"]) >= {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"}
    assert with_ckpt["chance"]["img_r1"] == pytest.approx(100 / 8)
    result_file.unlink()

    # zero-shot style: the weights come from init_from, no --ckpt_path
    assert main(["test", "--config", str(path), "--model.init_args.init_from", str(ckpt)]) == 0
    zero_shot = json.loads(sorted((tmp_path / "run").rglob("retrieval_test.json"))[-1].read_text())
    assert zero_shot["metrics"] == pytest.approx(with_ckpt["metrics"])
    assert "text->image" in capsys.readouterr().out
