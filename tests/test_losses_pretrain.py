"""ITC, ITM hard negatives and MLM: hand-computed values, gradients, statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from albef_struct.losses import (
    ContrastiveInputs,
    InfoNCEQueueLoss,
    build_contrastive_loss,
    itm_loss,
    mask_tokens,
    mlm_distill_loss,
    sample_hard_negatives,
)
from albef_struct.losses.matching import negative_weights


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_itc_without_distillation_equals_hand_computed_infonce():
    image = unit([1.0, 0.0], [0.0, 1.0])
    text = unit([1.0, 0.2], [0.3, 1.0])
    queue = unit([-1.0, 0.0]).T  # one queued text/image feature
    temp = torch.tensor(0.5, dtype=torch.float64)
    out = InfoNCEQueueLoss()(
        ContrastiveInputs(image, text, temp, image_feat_m=image, text_feat_m=text, image_queue=queue, text_queue=queue, alpha=0.0)
    )
    # image->text: candidates [text0, text1, queue]; text->image: [image0, image1, queue]
    expected = 0.0
    for anchors, cands in ((image, torch.cat([text, queue.T])), (text, torch.cat([image, queue.T]))):
        for i in range(2):
            logits = [float(anchors[i] @ c) / 0.5 for c in cands]
            expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits))) / 2
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-12)
    assert out.sim_i2t.shape == (2, 2)


def test_itc_distillation_targets_mix_teacher_softmax():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    image_m, text_m = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    temp = torch.tensor(0.1)
    out = InfoNCEQueueLoss()(ContrastiveInputs(image, text, temp, image_m, text_m, alpha=0.3))
    targets_i2t = 0.3 * F.softmax(image_m @ text_m.T / temp, 1) + 0.7 * torch.eye(3)
    targets_t2i = 0.3 * F.softmax(text_m @ image_m.T / temp, 1) + 0.7 * torch.eye(3)
    i2t = -(targets_i2t * F.log_softmax(image @ text_m.T / temp, 1)).sum(1).mean()
    t2i = -(targets_t2i * F.log_softmax(text @ image_m.T / temp, 1)).sum(1).mean()
    torch.testing.assert_close(out.loss, (i2t + t2i) / 2)


def test_itc_same_image_positives_spread_target_mass():
    image = F.normalize(torch.randn(3, 4), dim=-1)
    ids = torch.tensor([7, 7, 9])
    queue_ids = torch.tensor([9, -100])
    queue = F.normalize(torch.randn(4, 2), dim=0)
    loss = InfoNCEQueueLoss(same_image_positives=True)
    out = loss(ContrastiveInputs(image, image, torch.tensor(1.0), image, image, queue, queue, 0.0, ids, queue_ids))
    # anchor 2 (image 9) has two positives: itself and queue slot 0
    logits = image[2] @ torch.cat([image, queue.T]).T
    expected_row2 = -(0.5 * F.log_softmax(logits, 0)[2] + 0.5 * F.log_softmax(logits, 0)[3])
    manual = F.log_softmax(image @ torch.cat([image, queue.T]).T, 1)
    targets = torch.tensor([[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0.5, 0.5, 0]])
    per_row = -(targets * manual).sum(1)
    torch.testing.assert_close(per_row[2], expected_row2)
    torch.testing.assert_close(out.loss, per_row.mean())


def test_itc_gradients_reach_online_features_and_temperature_only():
    torch.manual_seed(1)
    image = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    temp = torch.tensor(0.07, requires_grad=True)
    teacher = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    out = InfoNCEQueueLoss()(ContrastiveInputs(image, text, temp, teacher, teacher, alpha=0.4))
    out.loss.backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0 and temp.grad != 0
    assert teacher.grad is None or teacher.grad.abs().sum() > 0  # candidates enter the student logits


def test_itc_gradcheck_float64():
    torch.manual_seed(2)
    image = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1).requires_grad_()
    teacher_i = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1)
    teacher_t = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1)
    queue = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=0)

    def loss(i, t):
        temp = torch.tensor(0.2, dtype=torch.float64)
        return InfoNCEQueueLoss()(ContrastiveInputs(i, t, temp, teacher_i, teacher_t, queue, queue, 0.4)).loss

    assert torch.autograd.gradcheck(loss, (image, text))


def test_unknown_contrastive_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="infonce_queue"):
        build_contrastive_loss("nope")


def test_hard_negatives_never_pick_the_same_image():
    torch.manual_seed(0)
    sim = torch.randn(6, 6) * 5
    ids = torch.tensor([0, 0, 1, 1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg_text, neg_image = sample_hard_negatives(sim, sim.T, ids, generator=gen)
        assert (ids[neg_text] != ids).all() and (ids[neg_image] != ids).all()
    neg_text, _ = sample_hard_negatives(sim, sim.T, None, generator=gen)
    assert (neg_text != torch.arange(6)).all()


def test_hard_negatives_follow_softmax_of_similarities():
    sim = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    weights = negative_weights(sim, torch.eye(3, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(sim, sim.T, generator=gen)[0] for _ in range(4000)])
    freq_row0 = torch.bincount(draws[:, 0], minlength=3).float() / 4000
    expected = weights[0] / weights[0].sum()
    torch.testing.assert_close(freq_row0, expected, atol=0.03, rtol=0)
    assert expected[1] > 0.8  # exp(2) / (exp(2) + 1)


def test_uniform_negatives_ignore_similarities_and_skip_the_same_image():
    sim = torch.tensor([[0.0, 50.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 9.0], [3.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([0, 1, 1, 2])
    gen = torch.Generator().manual_seed(0)
    draws = [sample_hard_negatives(sim, sim.T, ids, generator=gen, uniform=True) for _ in range(3000)]
    neg_text = torch.stack([d[0] for d in draws])
    neg_image = torch.stack([d[1] for d in draws])
    assert (ids[neg_text] != ids).all() and (ids[neg_image] != ids).all()
    # row 0 (image 0): candidates 1, 2, 3 equally likely although sim[0, 1] dominates the softmax
    freq = torch.bincount(neg_text[:, 0], minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]), atol=0.03, rtol=0)
    # row 1 (image 1): only candidates 0 and 3 show another image
    freq = torch.bincount(neg_image[:, 1], minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.0, 0.0, 0.5]), atol=0.03, rtol=0)


def test_hard_negatives_need_two_images():
    sim = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="two different images"):
        sample_hard_negatives(sim, sim, torch.tensor([4, 4, 4]))


def test_itm_loss_labels_and_value():
    positive = torch.tensor([[0.0, 2.0]])
    negative = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = (
        -F.log_softmax(positive[0], 0)[1] - F.log_softmax(negative[0], 0)[0] - F.log_softmax(negative[1], 0)[0]
    ) / 3
    torch.testing.assert_close(itm_loss(positive, negative), expected)


def test_mask_tokens_statistics_and_protected_tokens():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (400, 50), generator=gen)
    ids[:, 0] = 101  # [CLS]
    ids[:, 40:] = 0  # [PAD]
    masked, labels = mask_tokens(ids, vocab_size=30522, mask_token_id=103, protected_ids=(0, 101), probability=0.15, generator=gen)
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, 40:].any()
    assert selected[:, 1:40].float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[selected], ids[selected])
    as_mask = (masked == 103) & selected
    unchanged = (masked == ids) & selected
    assert as_mask.sum() / selected.sum() == pytest.approx(0.8, abs=0.03)
    assert unchanged.sum() / selected.sum() == pytest.approx(0.1 + 0.1 / 30522 * 1000, abs=0.03)
    assert torch.equal(masked[~selected], ids[~selected])


def test_mlm_loss_without_teacher_is_cross_entropy_over_labelled_tokens():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[-100, 4, -100], [2, -100, 6]])
    expected = F.cross_entropy(logits.view(-1, 7), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(mlm_distill_loss(logits, labels), expected)


def test_mlm_distillation_term_averages_over_labelled_tokens():
    torch.manual_seed(3)
    logits, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[-100, 1, 2], [3, -100, -100]])
    keep = labels != -100
    soft = -(F.softmax(teacher, -1) * F.log_softmax(logits, -1)).sum(-1)[keep].mean()
    hard = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(mlm_distill_loss(logits, labels, teacher, 0.25), 0.75 * hard + 0.25 * soft)


def test_mlm_loss_is_zero_not_nan_when_nothing_is_masked():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = mlm_distill_loss(logits, torch.full((1, 4), -100), torch.randn(1, 4, 5), 0.4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("module_name", ["pretrain", "retrieval"])
def test_itm_draws_uniform_negatives_for_the_configured_steps_then_hard_ones(monkeypatch, module_name):
    from types import SimpleNamespace

    from albef_struct.lit import alignment
    from albef_struct.lit.pretrain import PretrainModule
    from albef_struct.tasks.retrieval import RetrievalModule
    from tests.conftest import tiny_config

    cls = PretrainModule if module_name == "pretrain" else RetrievalModule
    module = cls(arch=tiny_config(), queue_size=16, itm_uniform_negative_steps=2)
    seen: list[bool] = []
    original = alignment.sample_hard_negatives

    def recording(sim_i2t, sim_t2i, image_ids=None, generator=None, uniform=False):
        seen.append(uniform)
        return original(sim_i2t, sim_t2i, image_ids, generator, uniform)

    monkeypatch.setattr(alignment, "sample_hard_negatives", recording)
    n = 4
    image = module.model.encode_image(torch.randn(n, 3, 32, 32))
    text = module.model.encode_text(torch.randint(1000, 2000, (n, 5)), torch.ones(n, 5, dtype=torch.long))
    sim = torch.randn(n, n)
    for step in range(4):
        module._trainer = SimpleNamespace(global_step=step)
        loss = module.itm(image, text, torch.ones(n, 5, dtype=torch.long), sim, sim.T)
        assert torch.isfinite(loss)
    module._trainer = None
    assert seen == [True, True, False, False]


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_uniform_negative_steps_must_be_a_step_count(steps):
    from albef_struct.lit.pretrain import PretrainModule
    from tests.conftest import tiny_config

    with pytest.raises(ValueError, match="itm_uniform_negative_steps"):
        PretrainModule(arch=tiny_config(), queue_size=16, itm_uniform_negative_steps=steps)


def _queued_itc(fp32_logits: bool, autocast: bool, queue_dtype: torch.dtype = torch.float32):
    """ALBEF's ITC with a 512-entry queue; its loss, the anchors' gradients and the bytes autograd kept."""
    g = torch.Generator().manual_seed(0)
    feats = [F.normalize(torch.randn(4, 32, generator=g), dim=-1) for _ in range(4)]
    image, text = (f.clone().requires_grad_() for f in feats[:2])
    queues = [F.normalize(torch.randn(32, 512, generator=g), dim=0).to(queue_dtype) for _ in range(2)]
    inputs = ContrastiveInputs(image, text, torch.tensor(0.07), *feats[2:], *queues, alpha=0.4)
    saved: dict[int, tuple[torch.dtype, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = (t.dtype, t.numel())
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = InfoNCEQueueLoss(fp32_logits=fp32_logits)(inputs).loss
    return loss, torch.autograd.grad(loss, [image, text]), saved, {q.untyped_storage().data_ptr() for q in queues}


def test_itc_fp32_logits_under_bf16_autocast_equal_float32_and_keep_the_queue_uncast():
    reference, ref_grads, _, _ = _queued_itc(fp32_logits=True, autocast=False)
    loss, grads, saved, queue_ptrs = _queued_itc(fp32_logits=True, autocast=True)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)  # autocast changes nothing in this product
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=0, atol=0)
    assert queue_ptrs <= set(saved)  # the queues themselves are what backward reads
    assert not [n for dtype, n in saved.values() if dtype == torch.bfloat16 and n >= 32 * 512]  # no bf16 queue copy

    cast, cast_grads, cast_saved, _ = _queued_itc(fp32_logits=False, autocast=True)  # ALBEF's code under autocast
    assert sum(dtype == torch.bfloat16 and n == 32 * 512 for dtype, n in cast_saved.values()) == 2
    assert (cast - reference).abs() > 1e-5  # the bf16 product really is another computation
    torch.testing.assert_close(cast, reference, rtol=2e-2, atol=0)


def test_itc_fp32_logits_keep_float64_and_a_half_precision_queue_is_widened():
    loss, _, _, _ = _queued_itc(fp32_logits=True, autocast=False, queue_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32
    image = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1)
    out = InfoNCEQueueLoss(fp32_logits=True)(
        ContrastiveInputs(image, image, torch.tensor(0.2, dtype=torch.float64), image, image,
                          image.T.contiguous(), image.T.contiguous(), 0.4))
    assert out.loss.dtype == torch.float64 and out.sim_i2t.dtype == torch.float64
