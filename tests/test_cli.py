"""The albef-struct CLI end to end on tiny generated data: fit 2 steps, test, resume, print_config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from albef_struct.cli import main
from albef_struct.lit.validation import ConfigError

pytestmark = pytest.mark.slow

TINY_MODEL = {
    "class_path": "albef_struct.lit.PretrainModule",
    "init_args": {
        "arch": {
            "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
            "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
            "embed_dim": 16,
            "mlm_head": True,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1, "cosine": "step"},
        "queue_size": 64,
        "k_test": 4,
    },
}


def write_config(tmp_path: Path, demo_dir: Path) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_val_batches": 1.0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
        "model": TINY_MODEL,
        "data": {
            "class_path": "albef_struct.data.PretrainDataModule",
            "init_args": {
                "train_files": [str(demo_dir / "pretrain.json")],
                "val_file": str(demo_dir / "retrieval_val.json"),
                "test_file": str(demo_dir / "retrieval_test.json"),
                "image_root": str(demo_dir),
                "batch_size": 16,
                "eval_batch_size": 8,
                "num_workers": 0,
                "hflip": False,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_checkpoint(tmp_path: Path) -> Path:
    found = sorted((tmp_path / "run").rglob("last.ckpt"))
    assert found, "fit wrote no last.ckpt"
    return found[-1]


def test_fit_two_steps_then_test_prints_and_writes_retrieval_metrics(tmp_path, demo_dir, capsys):
    config = write_config(tmp_path, demo_dir)
    assert main(["fit", "--config", str(config)]) == 0
    ckpt = last_checkpoint(tmp_path)
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)  # our checkpoints need no unpickling
    assert payload["global_step"] == 2
    assert int(payload["state_dict"]["queue.ptr"]) == 32  # two batches of 16 enqueued
    assert main(["test", "--config", str(config), "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "text->image" in out and "chance" in out
    results = sorted((tmp_path / "run").rglob("retrieval_test.json"))
    metrics = json.loads(results[-1].read_text())
    assert set(metrics["metrics"]) >= {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"}
    assert metrics["chance"]["img_r1"] == pytest.approx(100 / 8)
    assert all(0.0 <= v <= 100.0 for v in metrics["metrics"].values())
    assert metrics["k_test"] == 4
    # an evaluation setting asked for on the command line beats the checkpoint's (Lightning would use the run's)
    assert main(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--model.init_args.k_test", "2"]) == 0
    assert "model.init_args.k_test stays 2 as configured (the checkpoint's run had 4)" in capsys.readouterr().out
    newest = max((tmp_path / "run").rglob("retrieval_test.json"), key=lambda p: p.stat().st_mtime_ns)
    assert json.loads(newest.read_text())["k_test"] == 2


def test_test_after_fit_equals_a_separate_test_of_that_checkpoint(tmp_path, demo_dir, capsys):
    config = write_config(tmp_path, demo_dir)
    assert main(["fit", "--config", str(config), "--test_after_fit", "last"]) == 0
    assert "text->image" in capsys.readouterr().out
    (in_process,) = (tmp_path / "run").rglob("retrieval_test.json")
    assert main(["test", "--config", str(config), "--ckpt_path", str(last_checkpoint(tmp_path))]) == 0
    separate = max((tmp_path / "run").rglob("retrieval_test.json"), key=lambda p: p.stat().st_mtime_ns)
    assert separate != in_process
    assert json.loads(in_process.read_text())["metrics"] == json.loads(separate.read_text())["metrics"]
    with pytest.raises(ConfigError, match="--test_after_fit belongs to fit, not test: to test a checkpoint"):
        main(["test", "--config", str(config), "--test_after_fit", "last"])
    # the fit's ModelCheckpoint keeps no best checkpoint (save_top_k 0): refused before any step
    with pytest.raises(ConfigError, match="--test_after_fit best: no ModelCheckpoint in trainer.callbacks writes a best"):
        main(["fit", "--config", str(config), "--test_after_fit", "best", "--trainer.default_root_dir",
              str(tmp_path / "refused"), "--trainer.callbacks.init_args.save_top_k", "0"])
    assert not (tmp_path / "refused").exists()


def test_fit_resumes_from_a_checkpoint(tmp_path, demo_dir):
    config = write_config(tmp_path, demo_dir)
    assert main(["fit", "--config", str(config)]) == 0
    ckpt = last_checkpoint(tmp_path)
    first = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)]) == 0
    resumed = torch.load(last_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3
    assert int(resumed["state_dict"]["queue.ptr"]) == (int(first["state_dict"]["queue.ptr"]) + 16) % 64


def test_print_config_and_unknown_keys(tmp_path, demo_dir, capsys):
    config = write_config(tmp_path, demo_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["queue_size"] == 64
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--model.init_args.queue_sise", "64"])
    assert exit_info.value.code != 0
    assert "queue_sise" in capsys.readouterr().err


def test_ckpt_path_makes_init_from_unnecessary(tmp_path, demo_dir, capsys):
    first = tmp_path / "first"
    first.mkdir()
    assert main(["fit", "--config", str(write_config(first, demo_dir))]) == 0
    source = last_checkpoint(first)
    second = tmp_path / "second"
    second.mkdir()
    config = write_config(second, demo_dir)
    assert main(["fit", "--config", str(config), "--model.init_args.init_from", str(source)]) == 0
    source.unlink()  # the run's starting weights are gone; its own checkpoint must suffice
    ckpt = last_checkpoint(second)
    assert main(["test", "--config", str(config), "--model.init_args.init_from", str(source), "--ckpt_path", str(ckpt)]) == 0
    assert "not loading init_from" in capsys.readouterr().out


def test_keep_requested_settings_puts_back_what_was_asked_but_not_the_architecture():
    from jsonargparse import Namespace

    from albef_struct.cli import keep_requested_settings

    def model(class_path: str = "albef_struct.lit.PretrainModule", **init_args) -> Namespace:
        return Namespace(class_path=class_path, init_args=Namespace(**init_args))

    asked = model(k_test=16, rerank_batch_size=128, arch=Namespace(embed_dim=32), init_from="a.ckpt")
    merged = model(k_test=8, rerank_batch_size=64, arch=Namespace(embed_dim=16), init_from="b.ckpt")
    lines = keep_requested_settings(asked, merged)
    assert lines == ["--ckpt_path given: model.init_args.k_test stays 16 as configured (the checkpoint's run had 8)"]
    assert merged.init_args.k_test == 16  # asked for: other than the default 256
    assert merged.init_args.rerank_batch_size == 64  # the default: not asked for, the run's value stays
    assert merged.init_args.arch == Namespace(embed_dim=16) and merged.init_args.init_from == "b.ckpt"
    other = model("albef_struct.tasks.retrieval.RetrievalModule", k_test=8)
    assert keep_requested_settings(asked, other) == [] and other.init_args.k_test == 8
