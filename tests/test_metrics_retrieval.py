"""Retrieval recall@k (ALBEF's itm_eval) on hand-made score matrices, ties, torchmetrics, chance level."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from albef_struct.metrics import chance_recall, recall_at_k, retrieval_metrics
from albef_struct.metrics.retrieval import best_relevant_rank

# 3 images with 2, 3 and 2 captions
TXT2IMG = torch.tensor([0, 0, 1, 1, 1, 2, 2])
# image -> text scores; the best relevant caption is at rank 1, 2 and 0
I2T = torch.tensor([
    [0.1, 0.8, 0.9, 0.3, 0.2, 0.0, 0.5],  # relevant t0, t1: best 0.8, beaten by 0.9 -> rank 1
    [0.9, 0.2, 0.7, 0.1, 0.3, 0.8, 0.6],  # relevant t2..t4: best 0.7, beaten by 0.9, 0.8 -> rank 2
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.95, 0.6],  # relevant t5, t6: best 0.95 -> rank 0
])
# text -> image scores; the ground-truth image is at rank 0, 1, 1, 0, 2, 0, 2
T2I = torch.tensor([
    [0.9, 0.1, 0.2],
    [0.2, 0.5, 0.1],
    [0.3, 0.4, 0.5],
    [0.1, 0.9, 0.2],
    [0.8, 0.1, 0.9],
    [0.1, 0.2, 0.7],
    [0.6, 0.5, 0.4],
])


def _relevant_t2i(txt2img: torch.Tensor, n_img: int) -> torch.Tensor:
    return txt2img[:, None] == torch.arange(n_img)[None, :]


def test_ranks_by_hand() -> None:
    rel = _relevant_t2i(TXT2IMG, 3)
    assert best_relevant_rank(I2T, rel.T).tolist() == [1, 2, 0]
    assert best_relevant_rank(T2I, rel).tolist() == [0, 1, 1, 0, 2, 0, 2]


def test_recall_at_k_by_hand() -> None:
    rel = _relevant_t2i(TXT2IMG, 3)
    txt = recall_at_k(I2T, rel.T, ks=(1, 2, 3))
    img = recall_at_k(T2I, rel, ks=(1, 2, 3))
    assert txt == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert img == pytest.approx({1: 300 / 7, 2: 500 / 7, 3: 100.0})


def test_retrieval_metrics_by_hand() -> None:
    m = retrieval_metrics(I2T, T2I, TXT2IMG)
    expected = {
        "txt_r1": 100 / 3, "txt_r5": 100.0, "txt_r10": 100.0,
        "img_r1": 300 / 7, "img_r5": 100.0, "img_r10": 100.0,
    }
    expected["txt_r_mean"] = (100 / 3 + 200) / 3
    expected["img_r_mean"] = (300 / 7 + 200) / 3
    expected["r_mean"] = (expected["txt_r_mean"] + expected["img_r_mean"]) / 2
    assert m == pytest.approx(expected)


def _planted(ranks: list[int], n_cand: int, relevant: torch.Tensor, seed: int) -> torch.Tensor:
    """Tie-free scores in which the best relevant candidate of row q has 0-based rank ``ranks[q]``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for q, r in enumerate(ranks):
        rel_idx = relevant[q].nonzero().flatten()
        irr_idx = (~relevant[q]).nonzero().flatten()
        irr_idx = irr_idx[torch.randperm(len(irr_idx), generator=gen)]
        rel_idx = rel_idx[torch.randperm(len(rel_idx), generator=gen)]
        # ranking from the top: r irrelevant, then the relevant ones, then the other irrelevant
        order = torch.cat([irr_idx[:r], rel_idx, irr_idx[r:]])
        row = torch.empty(n_cand)
        row[order] = torch.linspace(1.0, 0.0, n_cand)
        rows.append(row)
    return torch.stack(rows)


def test_recall_with_planted_ranks_both_directions() -> None:
    n_img = 12
    txt2img = torch.arange(n_img).repeat_interleave(torch.tensor([5, 5, 4, 5, 5, 3, 5, 5, 5, 2, 5, 5]))
    n_txt = len(txt2img)
    rel = _relevant_t2i(txt2img, n_img)
    i2t_ranks = [0, 0, 0, 1, 4, 5, 9, 10, 20, 3, 40, 7]
    # hand count: <1: 3 of 12; <5: 0,0,0,1,4,3 = 6; <10: + 5, 9, 7 = 9
    i2t = _planted(i2t_ranks, n_txt, rel.T, seed=0)
    assert best_relevant_rank(i2t, rel.T).tolist() == i2t_ranks
    t2i_ranks = [int(v) for v in torch.randint(0, n_img, (n_txt,), generator=torch.Generator().manual_seed(1))]
    t2i = _planted(t2i_ranks, n_img, rel, seed=2)
    m = retrieval_metrics(i2t, t2i, txt2img)
    assert m["txt_r1"] == pytest.approx(100 * 3 / 12)
    assert m["txt_r5"] == pytest.approx(100 * 6 / 12)
    assert m["txt_r10"] == pytest.approx(100 * 9 / 12)
    for k in (1, 5, 10):
        assert m[f"img_r{k}"] == pytest.approx(100 * sum(r < k for r in t2i_ranks) / n_txt)


# ---------------------------------------------------------------------------
# ties: a tie with an irrelevant candidate is resolved against the query


def test_tie_with_an_irrelevant_candidate_is_not_a_hit() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.1, 0.2]])
    rel = torch.tensor([[True, False, False, False]])
    assert best_relevant_rank(scores, rel).tolist() == [1]
    assert recall_at_k(scores, rel, ks=(1, 2)) == {1: 0.0, 2: 100.0}
    # all four tied: the relevant one is counted last
    flat = torch.zeros(1, 4)
    assert best_relevant_rank(flat, rel).tolist() == [3]
    assert recall_at_k(flat, rel, ks=(3, 4)) == {3: 0.0, 4: 100.0}


def test_tie_below_the_top() -> None:
    # two irrelevant above, one irrelevant tied: rank 3
    scores = torch.tensor([[0.9, 0.8, 0.4, 0.4, 0.1]])
    rel = torch.tensor([[False, False, False, True, False]])
    assert best_relevant_rank(scores, rel).tolist() == [3]


def test_ties_among_lower_relevant_candidates_do_not_matter() -> None:
    scores = torch.tensor([[0.9, 0.3, 0.3, 0.3]])
    rel = torch.tensor([[True, True, False, False]])  # best relevant 0.9 is alone at the top
    assert best_relevant_rank(scores, rel).tolist() == [0]


def test_ties_among_relevant_candidates_are_not_penalised() -> None:
    scores = torch.tensor([[0.9, 0.9, 0.1, 0.2]])
    rel = torch.tensor([[True, True, False, False]])
    assert best_relevant_rank(scores, rel).tolist() == [0]


def test_query_without_relevant_candidates_is_never_a_hit() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    rel = torch.zeros(1, 3, dtype=torch.bool)
    assert recall_at_k(scores, rel, ks=(1, 5)) == {1: 0.0, 5: 0.0}


# ---------------------------------------------------------------------------
# agreement with torchmetrics and with the chance level


def _random_txt2img(n_img: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (n_img,), generator=gen)
    return torch.arange(n_img).repeat_interleave(counts)


def _hit_rate(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    n_query, n_cand = scores.shape
    metric = RetrievalHitRate(top_k=k)
    indexes = torch.arange(n_query).repeat_interleave(n_cand)
    return 100.0 * metric(scores.flatten(), relevant.flatten(), indexes=indexes).item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_hit_rate(seed: int) -> None:
    n_img = 17
    txt2img = _random_txt2img(n_img, seed)
    n_txt = len(txt2img)
    gen = torch.Generator().manual_seed(100 + seed)
    # permutations of distinct values: no ties
    i2t = torch.randperm(n_img * n_txt, generator=gen).view(n_img, n_txt).float()
    t2i = torch.randperm(n_txt * n_img, generator=gen).view(n_txt, n_img).float()
    rel = _relevant_t2i(txt2img, n_img)
    m = retrieval_metrics(i2t, t2i, txt2img)
    for k in (1, 5, 10):
        assert m[f"txt_r{k}"] == pytest.approx(_hit_rate(i2t, rel.T, k), abs=1e-4)
        assert m[f"img_r{k}"] == pytest.approx(_hit_rate(t2i, rel, k), abs=1e-4)


def test_chance_recall_closed_form() -> None:
    txt2img = torch.arange(10).repeat_interleave(5)  # 10 images x 5 captions
    c = chance_recall(txt2img, 10)
    assert c["img_r1"] == pytest.approx(10.0)
    assert c["img_r5"] == pytest.approx(50.0)
    assert c["img_r10"] == pytest.approx(100.0)
    assert c["txt_r1"] == pytest.approx(100 * 5 / 50)
    # P(no caption of the image among the top 5 of 50) = C(45, 5) / C(50, 5)
    assert c["txt_r5"] == pytest.approx(100 * (1 - math.comb(45, 5) / math.comb(50, 5)))
    assert c["txt_r10"] == pytest.approx(100 * (1 - math.comb(45, 10) / math.comb(50, 10)))
    assert chance_recall(torch.zeros(3, dtype=torch.long), 1) == pytest.approx(
        {f"{d}_r{k}": 100.0 for d in ("txt", "img") for k in (1, 5, 10)}
    )


def test_chance_recall_matches_monte_carlo() -> None:
    n_img = 8
    txt2img = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7, 7])
    n_txt = len(txt2img)
    rel = _relevant_t2i(txt2img, n_img)
    gen = torch.Generator().manual_seed(0)
    trials = 2000  # stacked as extra query rows: one call per direction
    i2t = torch.rand(trials * n_img, n_txt, generator=gen)
    t2i = torch.rand(trials * n_txt, n_img, generator=gen)
    txt = recall_at_k(i2t, rel.T.repeat(trials, 1))
    img = recall_at_k(t2i, rel.repeat(trials, 1))
    expected = chance_recall(txt2img, n_img)
    assert set(expected) == {f"{d}_r{k}" for d in ("txt", "img") for k in (1, 5, 10)}
    for k in (1, 5, 10):  # standard errors <= 0.4 points
        assert txt[k] == pytest.approx(expected[f"txt_r{k}"], abs=2.0)
        assert img[k] == pytest.approx(expected[f"img_r{k}"], abs=2.0)
    # retrieval_metrics reports under the same keys
    m = retrieval_metrics(i2t[:n_img], t2i[:n_txt], txt2img)
    assert set(expected) <= set(m)
