"""In-batch InfoNCE and SigLIP: values, gradients, DDP equivalence (the decomposable loss: test_decomposable_loss.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.losses import CONTRASTIVE_LOSSES, ContrastiveInputs, build_contrastive_loss
from albef_struct.losses.infonce import InfoNCELoss
from albef_struct.losses.siglip import SigLIPLoss

TAU = 0.5


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def raw_dataset(n: int = 6, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised leaf features of a tiny paired dataset (texts correlated with images)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=g, dtype=torch.float64)
    texts = images + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return images.requires_grad_(), texts.requires_grad_()


def full_infonce(images: torch.Tensor, texts: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Full-dataset symmetric InfoNCE (same gradient as the mean-normalised generalized loss)."""
    v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    target = torch.arange(v.shape[0])
    return (F.cross_entropy(v @ t.T / tau, target) + F.cross_entropy(t @ v.T / tau, target)) / 2


def batch_inputs(images: torch.Tensor, texts: torch.Tensor, index: list[int], tau: float = TAU, **extra) -> ContrastiveInputs:
    v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    idx = torch.tensor(index)
    return ContrastiveInputs(v[idx], t[idx], torch.tensor(tau, dtype=torch.float64), sample_index=idx, **extra)


def grads(loss: torch.Tensor, *leaves: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, leaves)])


def test_registry_builds_the_new_losses():
    assert {"infonce_queue", "infonce", "decomposable", "siglip"} <= set(CONTRASTIVE_LOSSES)
    for name in ("infonce", "decomposable", "siglip"):
        loss = build_contrastive_loss(name)
        assert not loss.uses_teacher and not loss.uses_queue


# --- InfoNCE -------------------------------------------------------------------------------
def test_infonce_equals_cross_entropy_both_directions():
    images, texts = raw_dataset(4)
    inputs = batch_inputs(images, texts, [0, 1, 2, 3])
    out = InfoNCELoss()(inputs)
    logits = inputs.image_feat @ inputs.text_feat.T / TAU
    target = torch.arange(4)
    i2t, t2i = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
    torch.testing.assert_close(out.loss, (i2t + t2i) / 2)
    torch.testing.assert_close(out.logs["itc_i2t"], i2t)
    torch.testing.assert_close(out.logs["itc_t2i"], t2i)
    torch.testing.assert_close(out.sim_i2t, logits)
    torch.testing.assert_close(out.sim_t2i, logits.T)


def test_infonce_hand_computed():
    image, text = unit([1, 0], [0, 1]), unit([1, 0], [0.6, 0.8])
    out = InfoNCELoss()(ContrastiveInputs(image, text, torch.tensor(TAU, dtype=torch.float64)))
    sims = [[1.0, 0.6], [0.0, 0.8]]
    expected = 0.0
    for i in range(2):
        row = [s / TAU for s in sims[i]]
        col = [sims[j][i] / TAU for j in range(2)]
        expected += -(row[i] - math.log(sum(map(math.exp, row)))) - (col[i] - math.log(sum(map(math.exp, col))))
    assert out.loss.item() == pytest.approx(expected / 4, rel=1e-12)


def two_rank_inputs(images, texts, rank: int, **extra) -> ContrastiveInputs:
    """Rank ``rank`` of 2 holds pairs (2r, 2r+1); candidates are the global batch of 4."""
    v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    local = torch.tensor([2 * rank, 2 * rank + 1])
    return ContrastiveInputs(
        v[local], t[local], torch.tensor(TAU, dtype=torch.float64), sample_index=local,
        image_candidates=v, text_candidates=t, positive_index=local, candidate_sample_index=torch.arange(4), **extra,
    )


@pytest.mark.parametrize("loss", [InfoNCELoss(), SigLIPLoss().double()])
def test_local_anchor_mean_over_ranks_equals_global_batch(loss):
    images, texts = raw_dataset(4)
    single = loss(batch_inputs(images, texts, [0, 1, 2, 3]))
    ranks = [loss(two_rank_inputs(images, texts, r)) for r in range(2)]
    averaged = (ranks[0].loss + ranks[1].loss) / 2  # DDP averages the ranks' gradients
    torch.testing.assert_close(averaged, single.loss)
    torch.testing.assert_close(grads(averaged, images, texts), grads(single.loss, images, texts))
    assert ranks[1].sim_i2t.shape == (2, 2)
    torch.testing.assert_close(ranks[1].sim_i2t, single.sim_i2t[2:, 2:])
    torch.testing.assert_close(ranks[1].sim_t2i, single.sim_t2i[2:, 2:])


def test_infonce_gradcheck():
    images, texts = raw_dataset(3)
    assert torch.autograd.gradcheck(lambda v, t: InfoNCELoss()(batch_inputs(v, t, [0, 1, 2])).loss, (images, texts))


# --- SigLIP --------------------------------------------------------------------------------
def test_siglip_init_and_hand_computed_value():
    loss = SigLIPLoss()
    assert loss.logit_scale.exp().item() == pytest.approx(10.0)
    assert loss.logit_bias.item() == -10.0
    assert {n for n, _ in loss.named_parameters()} == {"logit_scale", "logit_bias"}
    image, text = unit([1, 0], [0, 1]), unit([1, 0], [0.6, 0.8])
    out = loss.double()(ContrastiveInputs(image, text, torch.tensor(1.0, dtype=torch.float64)))
    # logits = 10·[[1, .6], [0, .8]] − 10 = [[0, −4], [−10, −2]]; labels = [[1, −1], [−1, 1]]
    log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = -(log_sig(0) + log_sig(4) + log_sig(10) + log_sig(-2)) / 2
    # (the float32 parameters hold exp(log 10) to ~1e-7)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.logs["siglip_pos"].item() == pytest.approx(-(log_sig(0) + log_sig(-2)) / 2, rel=1e-6)
    torch.testing.assert_close(out.sim_i2t, torch.tensor([[0.0, -4.0], [-10.0, -2.0]], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.sim_t2i, out.sim_i2t.T)
    out.loss.backward()
    assert loss.logit_scale.grad is not None and loss.logit_bias.grad is not None


def test_siglip_gradcheck():
    images, texts = raw_dataset(3)
    loss = SigLIPLoss(scale_init=2.0, bias_init=-1.0).double()
    assert torch.autograd.gradcheck(lambda v, t: loss(batch_inputs(v, t, [0, 1, 2])).loss, (images, texts))
