"""Exact mid-epoch resume with the shipped YAML configs (demo pretraining, the decomposable loss, a task).

Each case runs ``albef-struct fit`` on the shipped config with an overlay that only
points it at tiny generated data (16 images, 96 px), sets batch 4 (pretraining: 4 steps
per epoch), 10 steps and one thread, and replaces the callbacks by a checkpoint every 2
steps plus a step recorder (as a user adding ``every_n_train_steps`` would). The run is
killed with SIGKILL after step 7 (inside an epoch; last checkpoint: step 6) and
resumed with ``--ckpt_path last``: steps 7-10 must see the same samples with the same
losses as the uninterrupted run (rtol 1e-6) and end in the same state, with 0 and with 2
DataLoader workers. ``max_epochs`` stays set as shipped: that is what broke resuming
before (see ``ALBEFLitBase.on_train_start``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from albef_struct.data_prep.demo_data import generate
from tests.test_reliability_resume import RUN_TIMEOUT, STEPS, check_same_as_uninterrupted, load, read_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILL_AFTER = 7  # of STEPS = 10, as in test_reliability_resume
CASES = {
    "demo_pretrain": ["configs/demo/pretrain.yaml"],
    "decomposable": ["configs/demo/pretrain.yaml", "configs/structure/decomposable.yaml"],
    "retrieval_task": ["configs/demo/retrieval.yaml", "configs/demo/tiny_task.yaml"],
}


def run_environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo96")
    generate(out, seed=0, image_size=96, n_train=16, n_val=4, n_test=4)
    return out


def overlay(run_dir: Path, data: Path, case: str, workers: int, recorder: dict) -> Path:
    data_args = {"image_root": str(data), "batch_size": 4, "num_workers": workers, "val_file": None,
                 "test_file": None}
    if case == "retrieval_task":
        data_args["train_file"] = str(data / "retrieval_train.json")
    else:
        data_args["train_files"] = [str(data / "pretrain.json")]
    config = {
        "trainer": {
            "max_steps": STEPS, "max_epochs": 3, "limit_val_batches": 0, "deterministic": True, "logger": False,
            "enable_progress_bar": False, "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run_dir / "ckpt"), "every_n_train_steps": 2, "save_last": True,
                               "save_top_k": 0}},
                {"class_path": "tests.test_reliability_resume.StepRecorder", "init_args": recorder},
            ],
        },
        "data": {"init_args": data_args},
    }
    if case == "retrieval_task":
        config["model"] = {"init_args": {"init_from": None}}
    path = run_dir / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(run_dir: Path, data: Path, case: str, workers: int, recorder: dict, *extra: str):
    """``albef-struct fit`` with the shipped configs, then the overlay (which wins)."""
    command = [sys.executable, "-m", "albef_struct.cli", "fit"]
    for config in (*(REPO / name for name in CASES[case]), overlay(run_dir, data, case, workers, recorder)):
        command += ["--config", str(config)]
    return subprocess.run([*command, *extra], cwd=REPO, env=run_environment(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_shipped_config_resumes_exactly_mid_epoch(tmp_path, tiny_data, case, workers):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir()
    killed_dir.mkdir()
    full = fit(full_dir, tiny_data, case, workers, {"out": str(full_dir / "steps.jsonl")})
    assert full.returncode == 0, full.stderr[-3000:]
    killed = fit(killed_dir, tiny_data, case, workers, {"out": str(killed_dir / "killed.jsonl"), "kill_after": KILL_AFTER})
    assert killed.returncode != 0
    assert load(killed_dir / "ckpt" / "last.ckpt")["global_step"] == KILL_AFTER - 1
    resumed = fit(killed_dir, tiny_data, case, workers, {"out": str(killed_dir / "resumed.jsonl")}, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    check_same_as_uninterrupted(read_steps(full_dir / "steps.jsonl"), read_steps(killed_dir / "resumed.jsonl"),
                                full_dir, killed_dir, kill_after=KILL_AFTER)
