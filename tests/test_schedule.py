"""Warm-up + cosine schedule, alpha ramp and ALBEF's weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from albef_struct.lit import OptimConfig, WarmupCosine, decay_groups, freeze_parameters, ramped_alpha


def test_linear_warmup_then_per_epoch_cosine_like_albef():
    cfg = OptimConfig(lr=1e-4, warmup_lr=1e-5, warmup_steps=20, min_lr=1e-5, cosine="epoch")
    schedule = WarmupCosine(cfg, total_steps=300, steps_per_epoch=100, epochs=3)
    assert schedule.learning_rate(0) == pytest.approx(1e-5)
    assert schedule.learning_rate(10) == pytest.approx(5.5e-5)
    assert schedule.learning_rate(20) == pytest.approx(1e-4)  # epoch 0 stays at the peak
    assert schedule.learning_rate(99) == pytest.approx(1e-4)
    epoch1 = 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi / 3))
    assert schedule.learning_rate(100) == pytest.approx(epoch1)
    assert schedule.learning_rate(199) == pytest.approx(epoch1)
    assert schedule(150) == pytest.approx(epoch1 / 1e-4)


def test_per_step_cosine_is_smooth_and_ends_at_min_lr():
    cfg = OptimConfig(lr=2e-4, warmup_lr=0.0, warmup_steps=10, min_lr=1e-6, cosine="step")
    schedule = WarmupCosine(cfg, total_steps=110, steps_per_epoch=55, epochs=2)
    values = [schedule.learning_rate(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1e-6)
    assert schedule.learning_rate(5) == pytest.approx(1e-4)


def test_scheduler_drives_adamw_through_lambda_lr():
    param = nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(lr=1e-3, warmup_lr=1e-4, warmup_steps=4, min_lr=1e-5, cosine="step")
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg, 20, 10, 2))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:5] == pytest.approx([1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3])


def test_alpha_ramps_over_the_first_epoch_only_when_enabled():
    assert ramped_alpha(0.4, 0, 100) == 0.0
    assert ramped_alpha(0.4, 50, 100) == pytest.approx(0.2)
    assert ramped_alpha(0.4, 250, 100) == pytest.approx(0.4)
    assert ramped_alpha(0.4, 0, 100, warmup=False) == pytest.approx(0.4)


def test_decay_groups_follow_albef_rule():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)
            self.norm = nn.LayerNorm(3)
            self.temp = nn.Parameter(torch.tensor(0.07))
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))
            self.frozen = nn.Linear(3, 3)
            self.frozen.requires_grad_(False)

    model = Tiny()
    decay, no_decay = decay_groups(model.named_parameters(), 0.02)
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model.linear.weight), id(model.temp), id(model.pos_embed)}
    assert ids(no_decay) == {id(model.linear.bias), id(model.norm.weight), id(model.norm.bias)}
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0


def test_lr_scale_puts_matching_parameters_in_scaled_groups():
    model = nn.ModuleDict({"enc": nn.Linear(3, 3), "crossattention": nn.Linear(3, 3), "head": nn.Linear(3, 2)})
    groups = decay_groups(model.named_parameters(), 0.02, lr_scale={"crossattention": 10.0, "head": 5.0}, lr=1e-4)
    by_params = {id(p): g for g in groups for p in g["params"]}
    assert "lr" not in by_params[id(model["enc"].weight)]
    assert by_params[id(model["crossattention"].weight)]["lr"] == pytest.approx(1e-3)
    assert by_params[id(model["crossattention"].weight)]["weight_decay"] == 0.02
    assert by_params[id(model["crossattention"].bias)]["weight_decay"] == 0.0
    assert by_params[id(model["head"].bias)]["lr"] == pytest.approx(5e-4)
    assert sum(len(g["params"]) for g in groups) == 6
    # the schedule multiplies every group's own lr: the ratio holds at every step
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(OptimConfig(warmup_steps=4), 20, 10, 2))
    for _ in range(7):
        optimizer.step()
        schedule.step()
        base = [g["lr"] for g in optimizer.param_groups if any(p is model["enc"].weight for p in g["params"])][0]
        scaled = [g["lr"] for g in optimizer.param_groups if any(p is model["crossattention"].weight for p in g["params"])][0]
        assert scaled == pytest.approx(10.0 * base)


def test_lr_scale_rejects_patterns_that_match_nothing_and_bad_factors():
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"\['crossatention'\] match no trainable parameter"):
        decay_groups(model.named_parameters(), 0.02, lr_scale={"crossatention": 10.0}, lr=1e-4)
    with pytest.raises(ValueError, match="positive factors"):
        OptimConfig(lr_scale={"head": 0.0})


def test_freeze_stops_training_matching_parameters_and_keeps_them_out_of_the_optimizer():
    model = nn.ModuleDict({"visual_encoder": nn.Linear(3, 3), "fusion": nn.Linear(3, 3)})
    assert freeze_parameters(model.named_parameters(), ["visual_encoder"]) == 2
    assert not any(p.requires_grad for p in model["visual_encoder"].parameters())
    assert all(p.requires_grad for p in model["fusion"].parameters())
    groups = decay_groups(model.named_parameters(), 0.02)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model["fusion"].parameters()}
    # freezing again is harmless (a second fit), and nothing else changes
    assert freeze_parameters(model.named_parameters(), ["visual_encoder"]) == 0
    assert freeze_parameters(model.named_parameters(), []) == 0


def test_freeze_rejects_patterns_that_match_nothing_and_empty_patterns():
    model = nn.ModuleDict({"visual_encoder": nn.Linear(3, 3)})
    with pytest.raises(ValueError, match=r"\['visual_encodr'\] match no parameter name"):
        freeze_parameters(model.named_parameters(), ["visual_encoder", "visual_encodr"])
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen by the failed call
    with pytest.raises(ValueError, match="optim.freeze needs non-empty"):
        OptimConfig(freeze=[""])
    with pytest.raises(ValueError, match=r"takes a list of parameter-name patterns, e.g. \[visual_encoder\]"):
        OptimConfig(freeze="visual_encoder")
