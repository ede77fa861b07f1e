"""EMA teacher and feature queues."""

from __future__ import annotations

import torch
from torch import nn

from albef_struct.models import ALBEF, FeatureQueue, MomentumTeacher
from tests.conftest import tiny_config


def test_ema_update_is_exact_and_leaves_student_alone():
    torch.manual_seed(0)
    student = ALBEF(tiny_config())
    teacher = MomentumTeacher(student, 0.9, exclude=("itm_head", "temp"))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    teacher.update(student)
    for name, value in teacher.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student_state[name])
    for name, value in student.state_dict().items():
        assert torch.equal(value, student_state[name])


def test_teacher_excludes_itm_and_temperature_and_keeps_ties():
    student = ALBEF(tiny_config())
    teacher = MomentumTeacher(student, 0.995, exclude=("itm_head", "temp")).model
    assert not hasattr(teacher, "itm_head") and "temp" not in dict(teacher.named_parameters())
    assert teacher.mlm_head.decoder.weight is teacher.text_encoder.embeddings.word_embeddings.weight
    assert teacher.mlm_head.decoder.weight is not student.mlm_head.decoder.weight
    assert all(not p.requires_grad for p in teacher.parameters())
    assert "itm_head.weight" in student.state_dict() and hasattr(student, "temp")


def test_copy_from_resets_teacher_to_student():
    student = ALBEF(tiny_config())
    teacher = MomentumTeacher(student, 0.5, exclude=("itm_head", "temp"))
    with torch.no_grad():
        student.vision_proj.weight.mul_(3)
    teacher.copy_from(student)
    assert torch.equal(teacher.model.vision_proj.weight, student.vision_proj.weight)


def test_queue_wraps_around_and_keeps_ids():
    queue = FeatureQueue(dim=2, size=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(queue.image_feats.norm(dim=0), torch.ones(5))
    assert (queue.idx == -100).all()
    first = torch.arange(6.0).view(3, 2)
    queue.enqueue(first, -first, torch.tensor([10, 11, 12]))
    second = 100 + torch.arange(6.0).view(3, 2)
    queue.enqueue(second, -second, torch.tensor([20, 21, 22]))
    # slots: 0,1,2 <- first; 3,4 <- second[0:2]; wrap: 0 <- second[2]
    assert int(queue.ptr) == 1
    assert queue.idx.tolist() == [[22, 11, 12, 20, 21]]
    torch.testing.assert_close(queue.image_feats[:, 0], second[2])
    torch.testing.assert_close(queue.text_feats[:, 3], -second[0])
    torch.testing.assert_close(queue.image_feats[:, 2], first[2])


def test_queue_refuses_a_batch_larger_than_itself():
    queue = FeatureQueue(dim=2, size=2)
    try:
        queue.enqueue(torch.zeros(3, 2), torch.zeros(3, 2))
    except ValueError as err:
        assert "size 2" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")


def test_momentum_must_be_a_fraction():
    try:
        MomentumTeacher(nn.Linear(1, 1), 1.5)
    except ValueError as err:
        assert "momentum" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")
