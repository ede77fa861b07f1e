"""The fine-tuned downstream experiment of the regularizers: overlays, summary, and a quick end-to-end run."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments import regularizers_downstream as rd


def _row(name: str, seed: int, ve: float, evc: float, nlvr: float) -> dict:
    return {"name": name, "seed": seed, "result": {"ve_acc": ve, "ve_entail_vs_contra": evc, "nlvr_acc": nlvr},
            "blind": {"ve_acc": 60.0, "ve_entail_vs_contra": 52.0, "nlvr_acc": 54.0}}


def test_summary_means_stds_blind_and_gains() -> None:
    rows = [_row("none", 0, 60, 50, 50), _row("none", 1, 62, 52, 52),
            _row("feature_separation", 0, 64, 56, 51), _row("feature_separation", 1, 66, 58, 51)]
    summary = rd.summarise(rows)
    base = summary["table"]["none"]["metrics"]["ve_acc"]
    assert base["mean"] == 61 and base["std"] == pytest.approx(2 ** 0.5)
    assert summary["blind"] == {"ve_acc": 60.0, "ve_entail_vs_contra": 52.0, "nlvr_acc": 54.0}
    assert summary["gains_in_baseline_std"]["feature_separation"]["ve_acc"] == pytest.approx(4 / 2 ** 0.5)
    assert summary["gains_in_baseline_std"]["feature_separation"]["nlvr_acc"] == pytest.approx(0.0)
    table = rd.markdown(summary)
    assert "| feature_separation | 2 | 65.0 ± 1.4 | 57.0 ± 1.4 | 51.0 ± 0.0 |" in table
    assert "| blind (text only) | | 60.0 | 52.0 | 54.0 |" in table


def test_overlay_sets_the_stage_length_folder_weights_and_data(tmp_path) -> None:
    path = rd.overlay(tmp_path / "ve", 3, 150, tmp_path / "last.ckpt", {"embed_dim": 16}, {"image_root": "d"}, "ve")
    values = yaml.safe_load(path.read_text())
    assert values["seed_everything"] == 3 and values["trainer"]["limit_train_batches"] == 150
    assert values["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(tmp_path / "ve" / "checkpoints")
    init_args = values["model"]["init_args"]
    assert init_args["init_from"] == str(tmp_path / "last.ckpt") and init_args["distill"] is False
    assert init_args["optim"] == {"freeze": ["visual_encoder"]} and values["data"]["init_args"]["image_root"] == "d"
    assert "distill" not in yaml.safe_load(rd.overlay(tmp_path / "ta", 3, 40, tmp_path / "x", {}, {}, "ta")
                                           .read_text())["model"]["init_args"]  # text assignment has no such option


@pytest.mark.slow
def test_quick_run_fine_tunes_both_tasks_from_a_feature_separation_pretraining(tmp_path) -> None:
    out = tmp_path / "out"
    assert rd.main(["--quick", "--out", str(out), "--data", str(tmp_path / "data"),
                    "--names", "feature_separation"]) == 0
    row = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert row["name"] == "feature_separation" and set(row["result"]) >= set(rd.METRICS)
    assert all(0 <= row["result"][m] <= 100 and row["blind"][m] is not None for m in rd.METRICS)
    assert not list(out.rglob("*.ckpt"))  # checkpoints are removed unless --keep-checkpoints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"]["feature_separation"]["seeds"] == [0]
    # a second call finds the finished run and trains nothing
    assert rd.main(["--quick", "--out", str(out), "--data", str(tmp_path / "data"),
                    "--names", "feature_separation"]) == 0
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1
