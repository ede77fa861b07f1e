"""In-batch InfoNCE, the decomposable loss and SigLIP: values, gradients, unbiasedness, state, DDP."""

from __future__ import annotations

import itertools
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from albef_struct.losses import CONTRASTIVE_LOSSES, ContrastiveInputs, build_contrastive_loss
from albef_struct.losses.decomposable import DecomposableLoss, log_minibatch_denominator
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


def frozen_decomposable(log_avg_i2t: torch.Tensor, log_avg_t2i: torch.Tensor, **kwargs) -> DecomposableLoss:
    """A loss whose running denominators are fixed (γ = 0, all visited)."""
    loss = DecomposableLoss(num_samples=log_avg_i2t.shape[0], gamma=0.0, **kwargs).double()
    loss.log_avg_i2t.copy_(log_avg_i2t.detach())
    loss.log_avg_t2i.copy_(log_avg_t2i.detach())
    loss.visited.fill_(True)
    return loss


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


# --- decomposable: identities ---------------------------------------------------------------
def test_decomposable_gamma_one_mean_mode_has_in_batch_infonce_gradient():
    """The "nothing gained" identity: Ā = Â of the same batch gives InfoNCE's gradient."""
    images, texts = raw_dataset(5)
    index = [4, 0, 2]
    loss = DecomposableLoss(num_samples=5, gamma=1.0, u_mode="mean", positive_weight="batch", u_from="updated").double()
    loss(batch_inputs(images, texts, index))  # any previous visit: γ = 1 overwrites it
    out = loss(batch_inputs(images, texts, index))
    reference = InfoNCELoss()(batch_inputs(images, texts, index))
    torch.testing.assert_close(grads(out.loss, images, texts), grads(reference.loss, images, texts), rtol=1e-10, atol=1e-12)
    # logs: the generalized (mean-normalised) loss = InfoNCE − log G
    torch.testing.assert_close(out.logs["itc_i2t"], reference.logs["itc_i2t"] - math.log(3))
    torch.testing.assert_close(out.sim_i2t, reference.sim_i2t)


def exact_log_denominators(images, texts, positive_weight_of_g: int | None = None):
    """log A_i per direction over the full dataset; with ``g``: positive weight 1/g (the §2.4 λ = g−1 form)."""
    v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    out = []
    for logits in (v @ t.T / TAU, t @ v.T / TAU):
        n = logits.shape[0]
        if positive_weight_of_g is None:
            out.append(torch.logsumexp(logits, 1) - math.log(n))
        else:
            g = positive_weight_of_g
            w = torch.full((n, n), (1 - 1 / g) / (n - 1), dtype=logits.dtype)
            w.fill_diagonal_(1 / g)
            out.append(torch.logsumexp(logits + w.log(), 1))
    return out


def average_gradient(make_loss, images, texts, batches) -> torch.Tensor:
    total = 0
    for batch in batches:
        total = total + grads(make_loss()(batch_inputs(images, texts, list(batch))).loss, images, texts)
    return total / len(batches)


def test_decomposable_with_exact_denominators_is_unbiased_and_infonce_is_not():
    """Averaged over every batch of size 2 (what a shuffled sampler draws), anchors and candidates
    being the batch: the decomposable gradient equals the full-dataset InfoNCE gradient exactly
    (positive weighted 1/N), while in-batch InfoNCE's averaged gradient does not."""
    images, texts = raw_dataset(6)
    batches = list(itertools.combinations(range(6), 2))
    full = grads(full_infonce(images, texts), images, texts)
    log_a = exact_log_denominators(images, texts)
    decomposable = average_gradient(lambda: frozen_decomposable(*log_a, positive_weight="dataset"), images, texts, batches)
    torch.testing.assert_close(decomposable, full, rtol=1e-10, atol=1e-12)
    minibatch = average_gradient(InfoNCELoss, images, texts, batches)
    assert (minibatch - full).norm() > 0.05 * full.norm()


def test_decomposable_batch_weighting_with_full_candidates_is_exact():
    """positive_weight="batch" with the full dataset as candidates: each anchor batch's gradient is its
    share of the full gradient, so a partition's average is the full-dataset InfoNCE gradient."""
    images, texts = raw_dataset(6)
    loss = frozen_decomposable(*exact_log_denominators(images, texts), positive_weight="batch")
    total = 0
    for anchors in ([0, 1], [2, 3], [4, 5]):
        v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        idx = torch.tensor(anchors)
        inputs = ContrastiveInputs(v[idx], t[idx], torch.tensor(TAU, dtype=torch.float64), sample_index=idx,
                                   image_candidates=v, text_candidates=t, positive_index=idx)
        total = total + grads(loss(inputs).loss, images, texts)
    torch.testing.assert_close(total / 3, grads(full_infonce(images, texts), images, texts), rtol=1e-10, atol=1e-12)


def test_decomposable_batch_weighting_is_unbiased_for_its_generalized_loss():
    """With the positive always in the batch, "batch" weighting targets the §2.4 loss with positive
    weight 1/G (λ = G − 1): exact denominators of that loss give its gradient in expectation."""
    images, texts = raw_dataset(6)
    log_a = exact_log_denominators(images, texts, positive_weight_of_g=2)
    batches = list(itertools.combinations(range(6), 2))
    decomposable = average_gradient(lambda: frozen_decomposable(*log_a, positive_weight="batch"), images, texts, batches)
    v, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    target = torch.stack([(-(v * t).sum(-1) / TAU + a).mean() for a in log_a]).mean()
    torch.testing.assert_close(decomposable, grads(target, images, texts), rtol=1e-10, atol=1e-12)


def test_minibatch_denominator_weights():
    logits = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    positive = torch.tensor([1])
    batch = log_minibatch_denominator(logits, positive, "batch", 10)
    assert batch.item() == pytest.approx(math.log((1 + math.e + math.e**2) / 3))
    dataset = log_minibatch_denominator(logits, positive, "dataset", 10)
    assert dataset.item() == pytest.approx(math.log(math.e / 10 + 0.9 * (1 + math.e**2) / 2))


def test_decomposable_gradcheck():
    images, texts = raw_dataset(4)
    for weight in ("batch", "dataset"):
        loss = frozen_decomposable(torch.zeros(4), torch.full((4,), 0.3), positive_weight=weight)
        assert torch.autograd.gradcheck(lambda v, t: loss(batch_inputs(v, t, [3, 0, 1])).loss, (images, texts))


# --- decomposable: state ----------------------------------------------------------------------
def test_decomposable_ema_updates_visited_indices_only():
    images, texts = raw_dataset(5)
    gamma = 0.3
    loss = DecomposableLoss(num_samples=5, gamma=gamma, positive_weight="batch").double()
    v, t = F.normalize(images, dim=-1).detach(), F.normalize(texts, dim=-1).detach()

    def hat(index):
        idx = torch.tensor(index)
        logits = v[idx] @ t[idx].T / TAU
        return torch.logsumexp(logits, 1).exp() / len(index), torch.logsumexp(logits.T, 1).exp() / len(index)

    loss(batch_inputs(images, texts, [1, 3]))
    first_i2t, first_t2i = hat([1, 3])
    a_i2t, a_t2i = loss.running_denominators()
    torch.testing.assert_close(a_i2t[[1, 3]], first_i2t)
    torch.testing.assert_close(a_t2i[[1, 3]], first_t2i)
    assert loss.visited.tolist() == [False, True, False, True, False]

    loss(batch_inputs(images, texts, [3, 4]))
    second_i2t, second_t2i = hat([3, 4])
    a_i2t, a_t2i = loss.running_denominators()
    torch.testing.assert_close(a_i2t[3], (1 - gamma) * first_i2t[1] + gamma * second_i2t[0])
    torch.testing.assert_close(a_t2i[3], (1 - gamma) * first_t2i[1] + gamma * second_t2i[0])
    torch.testing.assert_close(a_i2t[4], second_i2t[1])  # first visit: overwritten
    torch.testing.assert_close(a_i2t[1], first_i2t[0])  # not in the batch: unchanged
    assert a_i2t[0].item() == 1.0 and a_i2t[2].item() == 1.0  # never visited: initial log Ā = 0
    assert loss.visited.tolist() == [False, True, False, True, True]


def test_decomposable_state_survives_checkpoint_into_another_size():
    images, texts = raw_dataset(5)
    trained = DecomposableLoss(num_samples=5, gamma=0.5)
    trained(batch_inputs(images.float(), texts.float(), [0, 2, 4]))
    holder = nn.Module()
    holder.itc = DecomposableLoss(num_samples=2)
    source = nn.Module()
    source.itc = trained
    holder.load_state_dict(source.state_dict())
    assert holder.itc.num_samples == 5
    for name in ("log_avg_i2t", "log_avg_t2i", "visited"):
        assert torch.equal(getattr(holder.itc, name), getattr(trained, name))
    holder.itc.resize(7)
    assert holder.itc.num_samples == 7 and holder.itc.visited[:5].tolist() == trained.visited.tolist()
    assert not holder.itc.visited[5:].any()


def test_decomposable_sampled_u_reproducible_with_mean_one_over_a():
    images, texts = raw_dataset(5)
    values = []
    for _ in range(2):
        loss = DecomposableLoss(num_samples=5, u_mode="sample", generator=torch.Generator().manual_seed(11)).double()
        values.append(loss(batch_inputs(images, texts, [0, 1, 2])).loss)
    assert values[0].item() == values[1].item()
    for shape in (1.0, 3.0):
        loss = DecomposableLoss(num_samples=1, u_mode="sample", gamma_shape=shape, generator=torch.Generator().manual_seed(0))
        factor = loss.u_factor(torch.empty(200_000, dtype=torch.float64))  # u·Ā ~ Gamma(k, k)
        assert factor.mean().item() == pytest.approx(1.0, abs=0.01)
        assert factor.var().item() == pytest.approx(1.0 / shape, rel=0.03)
    # in expectation over u, the sampled surrogate's gradient is the mean-mode gradient
    log_a = exact_log_denominators(images, texts)
    mean_grad = grads(frozen_decomposable(*log_a)(batch_inputs(images, texts, [0, 1, 2])).loss, images, texts)
    sampled = frozen_decomposable(*log_a, u_mode="sample", generator=torch.Generator().manual_seed(1))
    draws = 2000
    total = sum(grads(sampled(batch_inputs(images, texts, [0, 1, 2])).loss, images, texts) for _ in range(draws))
    assert ((total / draws - mean_grad).norm() / mean_grad.norm()).item() < 0.1


def test_decomposable_errors():
    images, texts = raw_dataset(3)
    inputs = batch_inputs(images, texts, [0, 1])
    inputs.sample_index = None
    with pytest.raises(ValueError, match="sample_index.*DataModule"):
        DecomposableLoss(num_samples=3)(inputs)
    with pytest.raises(ValueError, match="resize"):
        DecomposableLoss()(batch_inputs(images, texts, [0, 1]))
    with pytest.raises(ValueError, match="u_mode"):
        DecomposableLoss(u_mode="mode")


class FakeProcessGroup:
    """All-gather across threads: each rank's tensor, concatenated in rank order."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: list[torch.Tensor | None] = [None] * world

    def gather_for(self, rank: int):
        def gather(tensor: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = tensor.detach().clone()
            self.barrier.wait()
            out = torch.cat(self.slots)
            self.barrier.wait()
            return out

        return gather


def test_decomposable_two_rank_update_is_identical_on_both_ranks():
    images, texts = raw_dataset(4)
    group = FakeProcessGroup(2)
    losses = [DecomposableLoss(num_samples=6, gamma=0.5).double() for _ in range(2)]
    outputs: list = [None, None]

    def step(rank: int) -> None:
        for _ in range(2):  # a first visit, then an EMA update
            outputs[rank] = losses[rank](two_rank_inputs(images, texts, rank, gather=group.gather_for(rank)))

    threads = [threading.Thread(target=step, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    single = DecomposableLoss(num_samples=6, gamma=0.5).double()
    for _ in range(2):
        reference = single(batch_inputs(images, texts, [0, 1, 2, 3]))
    for name in ("log_avg_i2t", "log_avg_t2i", "visited"):
        assert torch.equal(getattr(losses[0], name), getattr(losses[1], name))
        torch.testing.assert_close(getattr(losses[0], name), getattr(single, name))
    averaged = (outputs[0].loss + outputs[1].loss) / 2
    torch.testing.assert_close(averaged, reference.loss)
    torch.testing.assert_close(grads(averaged, images, texts), grads(reference.loss, images, texts))
