"""`make demo`'s closing table and the demo task configs it runs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from albef_struct.demo_summary import ROWS, collect, format_table, main
from albef_struct.models import ALBEFConfig
from tests.conftest import REPO

TASK_CONFIGS = ["retrieval", "ve", "vqa", "nlvr_pretrain", "nlvr", "grounding"]


def write_result(path: Path, metrics: dict, chance: dict, mtime: float | None = None, blind: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": metrics, "chance": chance, **({"blind": blind} if blind else {})}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def fill_runs(root: Path) -> None:
    retrieval = {"itc_txt_r1": 80.0, "itc_img_r1": 60.0, "txt_r1": 30.0, "img_r1": 5.0}
    chance = {"txt_r1": 0.33, "img_r1": 0.33}
    write_result(root / "pretrain_small/lightning_logs/version_0/retrieval_test.json", retrieval, chance)
    write_result(root / "retrieval/lightning_logs/version_0/retrieval_test.json", retrieval, chance)
    write_result(root / "ve/lightning_logs/version_0/ve_test.json", {"acc": 66.7, "acc_entail_vs_contra": 50.0},
                 {"acc": 33.3, "acc_entail_vs_contra": 50.0}, blind={"acc": 68.3, "acc_entail_vs_contra": 52.5})
    write_result(root / "vqa/lightning_logs/version_0/vqa_test.json", {"acc": 43.9}, {"acc": 12.9}, blind={"acc": 47.3})
    write_result(root / "grounding/lightning_logs/version_0/grounding_test.json", {"acc": 43.5}, {"acc": 34.7},
                 blind={"acc": 36.0})


def test_table_reads_each_stage_and_judges_it_against_chance(tmp_path, capsys):
    fill_runs(tmp_path)
    write_result(tmp_path / "nlvr/lightning_logs/version_0/nlvr_test.json", {"acc": 50.0}, {"acc": 50.0})
    assert main(["--runs", str(tmp_path), "--pretrain-run", str(tmp_path / "pretrain_small")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) == len(ROWS)
    by_metric = {(r["stage"], row.metric): r for r, row in zip(summary, ROWS)}
    assert by_metric[("VQA", "acc")]["value"] == 43.9 and by_metric[("VQA", "acc")]["above_chance"]
    assert by_metric[("NLVR2", "acc")]["above_chance"] is False  # equal to chance is not above it
    assert by_metric[("SNLI-VE", "acc_entail_vs_contra")]["above_chance"] is False
    assert by_metric[("SNLI-VE", "acc")]["above_chance"] is True
    out = capsys.readouterr().out
    assert "NLVR2" in out and "NO" in out and "43.9" in out


def test_each_row_is_judged_against_its_blind_baseline_and_drawn(tmp_path, capsys):
    fill_runs(tmp_path)
    write_result(tmp_path / "nlvr/lightning_logs/version_0/nlvr_test.json", {"acc": 73.7}, {"acc": 50.0},
                 blind={"acc": 54.3})
    assert main(["--runs", str(tmp_path), "--pretrain-run", str(tmp_path / "pretrain_small")]) == 0
    rows = {(r["stage"], row.metric): r for r, row in zip(json.loads((tmp_path / "summary.json").read_text()), ROWS)}
    vqa = rows[("VQA", "acc")]
    assert (vqa["blind"], vqa["above_chance"], vqa["above_blind"]) == (47.3, True, False)  # above chance, not blind
    assert rows[("NLVR2", "acc")]["above_blind"] is True
    assert rows[("SNLI-VE", "acc")]["above_blind"] is False and rows[("SNLI-VE", "acc")]["blind"] == 68.3
    grounding = rows[("grounding", "acc")]
    assert (grounding["chance"], grounding["blind"], grounding["above_blind"]) == (34.7, 36.0, True)  # the centre box
    retrieval = rows[("zero-shot retrieval", "itc_txt_r1")]
    assert retrieval["blind"] == retrieval["chance"] == 0.33  # nothing ranks images without them
    table = capsys.readouterr().out
    assert "beats blind" in table and "yes (+19.4)" in table
    png = tmp_path / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_missing_stage_is_reported_and_fails(tmp_path, capsys):
    fill_runs(tmp_path)  # no NLVR2 results
    assert main(["--runs", str(tmp_path), "--pretrain-run", str(tmp_path / "pretrain_small")]) == 1
    assert "missing results" in capsys.readouterr().err
    nlvr = [r for r in collect(tmp_path, tmp_path / "pretrain_small") if r.stage == "NLVR2"]
    assert nlvr[0].value is None and nlvr[0].above_chance is None
    assert "missing" in format_table(nlvr)


def test_newest_result_of_a_run_wins(tmp_path):
    fill_runs(tmp_path)
    write_result(tmp_path / "nlvr/lightning_logs/version_3/nlvr_test.json", {"acc": 55.0}, {"acc": 50.0}, mtime=2e9)
    write_result(tmp_path / "nlvr/lightning_logs/version_9/nlvr_test.json", {"acc": 51.0}, {"acc": 50.0}, mtime=1e9)
    nlvr = [r for r in collect(tmp_path, tmp_path / "pretrain_small") if r.stage == "NLVR2"]
    assert nlvr[0].value == 55.0 and "version_3" in nlvr[0].source


def test_unreadable_results_file_is_named(tmp_path):
    fill_runs(tmp_path)
    broken = tmp_path / "nlvr/lightning_logs/version_0/nlvr_test.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"metrics": {"acc": 5')  # truncated
    with pytest.raises(ValueError, match=r"nlvr_test\.json is not valid JSON .*re-run"):
        collect(tmp_path, tmp_path / "pretrain_small")
    broken.write_text('{"acc": 50.0}')
    with pytest.raises(ValueError, match=r"nlvr_test\.json has no 'metrics' object"):
        collect(tmp_path, tmp_path / "pretrain_small")


# --- the demo task configs start from the pretraining make demo runs -------------------------------------
def parsed_model_args(*configs: str) -> dict:
    """``model.init_args`` as the CLI parses ``--config`` files (sub-config paths resolved, overlays merged)."""
    import contextlib
    import io

    from albef_struct.cli import main as cli_main

    args = ["fit"] + [arg for config in configs for arg in ("--config", str(REPO / config))] + ["--print_config"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 0
    return yaml.safe_load(printed.getvalue())["model"]["init_args"]


def comparable(arch: dict) -> ALBEFConfig:
    """The fields that decide which weights fit (heads differ per task; weight sources and dropout do not matter)."""
    config = ALBEFConfig.from_dict(arch)
    text = replace(config.text, hidden_dropout=0.0, attention_dropout=0.0)
    return replace(config.without_weight_sources(), text=text, mlm_head=False, itm_head=False, projections=False,
                   answer_decoder_layers=0)


@pytest.mark.parametrize("task", TASK_CONFIGS)
def test_task_configs_match_their_pretraining(task):
    config = yaml.safe_load((REPO / f"configs/demo/{task}.yaml").read_text())
    small = yaml.safe_load((REPO / "configs/demo/pretrain_small.yaml").read_text())
    # said once: the task and its pretraining name the same architecture file
    assert config["model"]["init_args"]["arch"] == small["model"]["init_args"]["arch"] == "../model/small_arch.yaml"
    assert "image_res" not in config["data"]["init_args"]  # the data takes the model's size (CLI link)
    expected_init = ("runs/demo/nlvr_pretrain/checkpoints/last.ckpt" if task == "nlvr"
                     else small["trainer"]["default_root_dir"] + "/checkpoints/last.ckpt")
    assert config["model"]["init_args"]["init_from"] == expected_init

    task_args = parsed_model_args(f"configs/demo/{task}.yaml")
    assert comparable(task_args["arch"]) == comparable(parsed_model_args("configs/demo/pretrain_small.yaml")["arch"])
    assert comparable(task_args["arch"]).vision.img_size == 98
    tiny_task = parsed_model_args(f"configs/demo/{task}.yaml", "configs/demo/tiny_task.yaml")["arch"]
    tiny = parsed_model_args("configs/demo/pretrain.yaml")["arch"]
    assert comparable(tiny_task) == comparable(tiny) and tiny["vision"]["timm_model"] is None

