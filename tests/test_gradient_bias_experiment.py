"""The synthetic gradient-bias experiment: closed form, calibration, simulator vs loss modules, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from albef_struct.losses import ContrastiveInputs
from albef_struct.losses.decomposable import DecomposableLoss
from albef_struct.losses.infonce import InfoNCELoss
from experiments.gradient_bias import (
    DTYPE,
    Method,
    Problem,
    StackedRuns,
    batch_schedule,
    calibrate_kappa,
    cosine_lr,
    full_data_loss,
    grid_argmin,
    make_datasets,
    population_kappa,
    settle_step,
    simulate,
    verify_closed_form,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.5, 0.8])
def test_population_loss_minimiser_is_one(noise):
    problem = Problem(noise=noise)
    assert grid_argmin(problem) == pytest.approx(1.0, abs=1e-3)
    checks = verify_closed_form(problem, torch.Generator().manual_seed(0), samples=200_000)
    assert checks["m_monte_carlo"] == pytest.approx(checks["m_closed_form"], abs=0.005)
    assert checks["max_abs_error_log_i0_quadrature"] < 1e-10
    assert checks["argmin_monte_carlo_population_loss_grid"] == pytest.approx(1.0, abs=0.05)


def test_dataset_calibration_puts_the_full_data_optimum_at_one():
    problem = Problem(noise=0.3, num_pairs=64)
    images, texts = make_datasets(problem, 3, torch.Generator().manual_seed(1))
    kappa = calibrate_kappa(images, texts, start=population_kappa(problem))
    thetas = torch.linspace(0.8, 1.2, 401, dtype=DTYPE)
    losses = torch.stack([full_data_loss(t * kappa, images, texts) for t in thetas])  # [grid, seeds]
    assert thetas[losses.argmin(0)].tolist() == pytest.approx([1.0] * 3, abs=1e-3)


def test_batch_schedule_is_a_permutation_per_epoch():
    schedule = batch_schedule(seeds=2, num_pairs=12, batch_size=4, steps=7, generator=torch.Generator().manual_seed(0))
    assert schedule.shape == (7, 2, 4)
    for seed in range(2):
        assert sorted(schedule[:3, seed].flatten().tolist()) == list(range(12))


def test_settle_step():
    traj = torch.tensor([[2.0, 1.2, 1.01, 0.99, 1.0], [2.0, 1.0, 1.3, 1.02, 1.0], [0.5, 0.6, 0.7, 0.8, 0.9]])
    assert settle_step(traj) == [2, 3, None]


def module_trajectory(method: Method, images, texts, kappa, theta0, schedule, lrs) -> torch.Tensor:
    """One seed's SGD on θ through the real loss modules (the reference for the vectorised simulator)."""
    num_pairs = images.shape[0]
    if method.kind == "infonce":
        loss = InfoNCELoss()
    else:
        loss = DecomposableLoss(
            num_samples=num_pairs, form=method.form, feature_dim=2,
            denominator="bank" if method.denominator == "oracle" else method.denominator,
            gamma=method.gamma, gamma_min=method.gamma_min, gamma_decay_visits=method.gamma_decay_visits,
            u_from=method.u_from, calibrate=method.calibrate, positive_weight="dataset",
        ).double()
    theta, out = theta0.clone(), [theta0.clone()]
    for step in range(schedule.shape[0]):
        index = schedule[step]
        if method.denominator == "oracle" and method.kind != "infonce":  # every pair in the bank from step 0
            loss.bank_image.copy_(images)
            loss.bank_text.copy_(texts)
            loss.visits.clamp_(min=1)
        theta = theta.detach().requires_grad_()
        inputs = ContrastiveInputs(images[index], texts[index], 1.0 / (theta * kappa), sample_index=index)
        (grad,) = torch.autograd.grad(loss(inputs).loss, theta)
        theta = (theta.detach() - lrs[step] * grad).clamp(min=1e-3)
        out.append(theta.clone())
    return torch.stack(out)


def test_vectorised_simulator_matches_the_loss_modules_step_for_step():
    methods = (
        Method("infonce", "infonce"),
        Method("bank", "decomposable"),
        Method("uncalibrated", "decomposable", calibrate="none"),
        Method("oracle", "decomposable", denominator="oracle"),
        Method("running", "decomposable", denominator="running", gamma_decay_visits=3),
        Method("absolute_previous", "decomposable", form="absolute", denominator="running", gamma=0.3,
               gamma_min=0.3, gamma_decay_visits=0, u_from="previous", calibrate="none"),
        Method("absolute_updated", "decomposable", form="absolute", denominator="running", gamma=0.3,
               gamma_min=0.3, gamma_decay_visits=0, u_from="updated"),
    )
    problem = Problem(noise=0.3, num_pairs=16, batch_size=4)
    g = torch.Generator().manual_seed(3)
    images, texts = make_datasets(problem, 2, g)
    kappa = calibrate_kappa(images, texts, start=population_kappa(problem))
    theta0 = torch.tensor([0.6, 1.8], dtype=DTYPE)
    schedule = batch_schedule(2, 16, 4, steps=30, generator=g)
    lrs = cosine_lr(0.05, 30)
    stacked = simulate(StackedRuns(methods, images, texts, kappa), theta0, schedule, lrs, torch.Generator().manual_seed(0))
    for k, method in enumerate(methods):
        for seed in range(2):
            reference = module_trajectory(method, images[seed], texts[seed], kappa[seed], theta0[seed], schedule[:, seed], lrs)
            torch.testing.assert_close(stacked[k * 2 + seed], reference, rtol=1e-10, atol=1e-12, msg=f"{method.name}, seed {seed}")


def test_quick_command_writes_json_and_figure(tmp_path):
    out = tmp_path / "gb"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.gradient_bias", "--out", str(out), "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "within" in result.stdout and "infonce" in result.stdout
    assert (out / "gradient_bias.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "gradient_bias.json").read_text())
    assert set(data["noise_levels"]) == {"low", "heavy"}
    assert data["noise_levels"]["heavy"]["problem"]["noise"] > data["noise_levels"]["low"]["problem"]["noise"]
    seeds = data["config"]["seeds"]
    assert seeds == 10
    for level in data["noise_levels"].values():
        assert level["closed_form"]["argmin_exact_population_loss_grid"] == pytest.approx(1.0, abs=1e-3)
        assert {"infonce", "decomposable"} <= set(level["methods"])
        for method in level["methods"].values():
            assert len(method["final_theta"]) == seeds and 0 <= method["within_tolerance"] <= seeds
            assert len(method["trajectories"]) == seeds
            assert len(method["trajectories"][0]) == len(method["trajectory_steps"])
            assert method["final_std"] >= 0 and math.isfinite(method["final_mean"])
    assert isinstance(data["conclusion"]["summary"], str) and data["conclusion"]["claim_holds"]
