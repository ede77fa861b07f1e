"""The batch-size experiment: its cells, its summary and verdicts on known numbers, one real run."""

from __future__ import annotations

import json

import pytest

from experiments.batch_size import LOSSES, main, plan, run_cell, summarize, verdicts
from tests.test_frozen_features import synthetic_features


def fake_run(loss: str, batch: int, seed: int, r1: float, epochs: float = 10.0) -> dict:
    return {"loss": loss, "batch": batch, "epochs": epochs, "seed": seed, "r1": r1, "i2t_r1": r1 + 5, "t2i_r1": r1 - 5,
            "probe_shape": 0.5, "train_infonce": 3.0, "temp": 0.05, "steps": 10, "step_saved_bytes": 100 * batch,
            "seconds_per_epoch": 1.0}


def test_the_full_plan_has_every_comparison_the_claim_needs():
    cells = set(plan(10.0, quick=False))
    for b in (8, 16, 32, 64):
        assert {("decomposable", b, 10.0), ("infonce", b, 10.0), ("siglip", b, 10.0), ("infonce_queue", b, 10.0)} <= cells
        assert ("infonce", 2 * b, 10.0) in cells and ("infonce", 4 * b, 10.0) in cells  # 2B and 4B at equal epochs
    for b in (8, 16, 32):
        assert ("infonce", 2 * b, 20.0) in cells  # equal steps
    assert all(loss in LOSSES for loss, _, _ in cells)
    assert set(plan(2.0, quick=True)) < set(plan(2.0, quick=False)) | {("infonce", 32, 2.0)}


def test_summary_and_verdicts_on_known_numbers():
    runs = [fake_run("decomposable", 8, s, r) for s, r in enumerate((70.0, 71.0, 72.0))]
    runs += [fake_run("infonce", 8, s, r) for s, r in enumerate((64.0, 65.0, 66.0))]
    runs += [fake_run("infonce", 16, s, r) for s, r in enumerate((72.0, 73.0, 74.0))]
    runs += [fake_run("siglip", 8, s, r) for s, r in enumerate((0.2, 30.0, 31.0))]
    rows = summarize(runs)
    dec = next(r for r in rows if r["loss"] == "decomposable")
    assert dec["r1_mean"] == pytest.approx(71.0) and dec["r1_std"] == pytest.approx(1.0) and dec["seeds"] == 3
    assert dec["probe_shape_mean"] == pytest.approx(50.0)  # fractions reported in percent
    checks = {c["claim"]: c for c in verdicts(rows, 10.0)}
    beats = checks["decomposable(8) >= infonce(8) + 2σ"]
    assert beats["holds"] and beats["needed"] == pytest.approx(67.0)
    matches = checks["decomposable(8) >= infonce(16) - σ"]
    assert not matches["holds"] and matches["needed"] == pytest.approx(72.0)
    collapse = checks["no run of a loss at its defaults ends at chance (R@1 < 2x chance)"]
    assert not collapse["holds"] and collapse["collapsed"] == ["siglip@8"]
    variant = verdicts(summarize([fake_run("decomposable_absolute", 32, 0, 0.5)]), 10.0)[-1]
    assert variant["holds"] and variant["variants_at_chance"] == ["decomposable_absolute@32"]


def test_run_cell_trains_the_default_decomposable_loss_on_a_cache(tmp_path):
    cache = tmp_path / "features.pt"
    synthetic_features(n_train=32, n_test=16).save(cache)
    run = run_cell(str(cache), "decomposable", 8, 2.0, 0)
    assert run["loss"] == "decomposable" and run["batch"] == 8 and run["steps"] == 2 * (64 // 8)
    assert 0.0 <= run["r1"] <= 100.0 and run["step_saved_bytes"] > 0


def test_quick_command_end_to_end_on_a_synthetic_cache(tmp_path, monkeypatch):
    """``--quick`` through ``main`` (every cell of the quick plan, 2 seeds), on synthetic cached features."""
    cache = tmp_path / "features.pt"
    synthetic_features(n_train=32, n_test=16).save(cache)
    monkeypatch.setattr("experiments.common.ensure_demo_data", lambda path: path)
    monkeypatch.setattr("experiments.frozen_features.cache_features", lambda data, target: cache)
    out = tmp_path / "out"
    assert main(["--quick", "--out", str(out), "--jobs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] and summary["seeds"] == 2 and summary["epochs"] == 2.0
    assert {(r["loss"], r["batch"]) for r in summary["rows"]} == {(loss, b) for loss, b, _ in plan(2.0, quick=True)}
    for row in summary["rows"]:
        assert {"loss", "batch", "epochs", "seeds", "r1_mean", "r1_std"} <= set(row) and row["seeds"] == 2
    assert (out / "batch_size.png").stat().st_size > 1000


def test_from_json_refuses_a_file_without_runs(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match=r"summary.json: missing \['runs'"):
        main(["--from-json", str(summary), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="cannot read it as JSON"):
        main(["--from-json", str(tmp_path / "none.json"), "--out", str(tmp_path / "out")])
