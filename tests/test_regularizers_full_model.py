"""The end-to-end regularizer experiment: shipped weights, seed summary, claims, resumable runs."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments import regularizers_full_model as rfm


def test_each_regularizer_runs_as_its_shipped_config_says() -> None:
    for name in rfm.REGULARIZERS:
        config = yaml.safe_load((rfm.STRUCTURE_CONFIGS / f"{name}.yaml").read_text())
        assert rfm.shipped_structure(name) == config["model"]["init_args"]["structure"]
    assert rfm.shipped_structure("none") == []
    assert rfm.shipped_structure("brownian_bridge")[0]["weight"] == 0.1


def _row(name: str, seed: int, **metrics: float) -> dict:
    base = {"r1": 60.0, "probe_pattern": 50.0, "text_probe_material": 70.0, "ve_acc": 70.0,
            "ve_entail_vs_contra": 60.0, "nlvr_acc": 50.0, "matched_cosine": 0.5, "modality_gap": 0.4}
    return {"name": name, "seed": seed, "result": {**base, **metrics}}


def test_claims_in_baseline_stds() -> None:
    rows = [_row("none", 0, r1=59.0), _row("none", 1, r1=61.0),  # r1 std 1.414
            _row("none", 2, r1=60.0, probe_pattern=52.0)]  # pattern 50, 50, 52: mean 50.67, std 1.155
    rows += [_row("feature_separation", s, r1=58.0, probe_pattern=54.0) for s in range(3)]
    rows += [_row("geometric_consistency", s, r1=60.0, matched_cosine=0.3) for s in range(3)]
    claims = rfm.summarise(rows)["claims"]
    fs = claims["feature_separation"]
    assert fs["r1_delta"] == pytest.approx(-2.0)
    assert not fs["keeps_r1"]  # 58 < 60 - 1.414
    assert fs["largest_gain"] == "probe_pattern"
    assert fs["gains_in_std"]["probe_pattern"] == pytest.approx((54 - 50.6667) / 1.1547, rel=1e-3)
    assert fs["improves_2std"]
    gc = claims["geometric_consistency"]
    assert gc["keeps_r1"] and not gc["improves_2std"]
    assert gc["matched_cosine_ratio"] == pytest.approx(0.6) and not gc["keeps_matched_cosine"]


def test_claims_need_two_baseline_seeds() -> None:
    claims = rfm.summarise([_row("none", 0), _row("feature_separation", 0, probe_pattern=90.0)])["claims"]
    assert list(claims) == ["undetermined"]


def test_a_corrupt_runs_file_is_refused_naming_the_line(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_row("none", 0)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"runs.jsonl, line 2"):
        rfm.read_rows(path)
    with pytest.raises(FileNotFoundError, match="run the experiment first"):
        rfm.read_rows(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_quick_run_writes_rows_summary_and_plot_and_resumes(tmp_path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    args = ["--quick", "--out", str(out), "--data", str(data), "--names", "none", "brownian_bridge"]
    assert rfm.main(args) == 0
    rows = rfm.read_rows(out / "runs.jsonl")
    assert [(r["name"], r["seed"]) for r in rows] == [("none", 0), ("brownian_bridge", 0)]
    result = rows[1]["result"]
    for metric in rfm.TABLE_METRICS:
        assert metric in result
    for accuracy in ("probe_pattern", "ve_acc", "ve_entail_vs_contra", "nlvr_acc"):
        assert 0.0 <= result[accuracy] <= 100.0
    assert rows[1]["structure"] == rfm.shipped_structure("brownian_bridge")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == {"none", "brownian_bridge"}
    assert (out / "regularizers_full_model.png").stat().st_size > 1000
    assert rfm.main(args) == 0  # every run is already in runs.jsonl: nothing retrains
    assert len(rfm.read_rows(out / "runs.jsonl")) == 2
