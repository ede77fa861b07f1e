"""The regularizers' downstream effect, fine-tuned: issue 19's Table 4 in miniature.

    python -m experiments.regularizers_downstream --out results/regularizers_downstream                 # 4 x 3 seeds
    python -m experiments.regularizers_downstream --out DIR --names none feature_separation --seeds 0   # a pilot
    python -m experiments.regularizers_downstream --out DIR --quick                                     # tiny smoke run

Each pretraining is :mod:`experiments.regularizers_full_model`'s (the information-gap
protocol: the small preset at 98 px, in-batch ITC, 80 steps of 32, each regularizer as
``configs/structure/<name>.yaml`` ships it), kept as a checkpoint. From it, SNLI-VE and
NLVR2 (text assignment first, as ALBEF does) are fine-tuned with the demo recipes
(``configs/demo/ve.yaml``, ``nlvr_pretrain.yaml``, ``nlvr.yaml``: ALBEF's learning rate, the
fresh head at 50x) for ``--ve-steps`` / ``--ta-steps`` / ``--nlvr-steps`` steps on the
information-gap data, the image encoder frozen during fine-tuning (what pretraining left
in it is what is compared), no EMA teacher, then tested. Each task runs in its own
``albef-struct`` process, as a user would run it. Per run: test accuracy, SNLI-VE on
entailment vs contradiction, and each task's blind (text-only) baseline. Finished runs are
appended to ``runs.jsonl`` (an interrupted experiment resumes); ``summary.json`` and
``summary.md`` are rewritten at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from experiments.common import RunSpec, ensure_demo_data, experiment_arch, train_and_test
from experiments.regularizers_full_model import REGULARIZERS, run_grid, seed_table, shipped_structure

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/demo"
#: result name -> (metric key in the task's test JSON, label)
METRICS = {"ve_acc": ("ve_test", "acc"), "ve_entail_vs_contra": ("ve_test", "acc_entail_vs_contra"),
           "nlvr_acc": ("nlvr_test", "acc")}


def pretrain(name: str, seed: int, data: Path, out: Path, steps: int, preset: str, image_res: int,
             num_workers: int) -> tuple[Path, dict[str, Any]]:
    """The regularizer's pretraining, kept as ``<run>/last.ckpt``; returns it and the task arch to fine-tune."""
    spec = RunSpec(name=f"{name}_seed{seed}", data_dir=str(data), steps=steps, preset=preset, image_res=image_res,
                   structure=shipped_structure(name), contrastive="infonce", itm_weight=0.0, mlm_weight=0.0,
                   warmup_steps=min(10, steps), k_test=1, seed=seed, num_workers=num_workers, keep_checkpoint=True)
    train_and_test(spec, out)
    arch, _ = experiment_arch(preset, image_res)
    task_arch = replace(arch, private_heads=False).without_weight_sources().to_dict()
    return out / spec.name / "last.ckpt", task_arch


def overlay(run_dir: Path, seed: int, steps: int, init_from: Path, arch: dict[str, Any], data: dict[str, Any],
            stage: str) -> Path:
    """A config overlay for one fine-tuning stage: its length, folder, checkpoint, architecture and data."""
    values = {
        "seed_everything": seed,
        "trainer": {"max_epochs": 1, "limit_train_batches": steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "default_root_dir": str(run_dir),
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run_dir / "checkpoints"), "enable_version_counter": False,
                                                 "save_weights_only": True, "save_last": True, "save_top_k": 0,
                                                 "monitor": None}}]},
        "model": {"init_args": {"arch": arch, "init_from": str(init_from), "optim": {"freeze": ["visual_encoder"]},
                                **({"distill": False} if stage != "ta" else {})}},  # text assignment has no teacher option
        "data": {"init_args": {**data, "num_workers": 0}},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "overlay.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def cli(*args: str) -> None:
    """One ``albef-struct`` command in its own process; its output is kept beside the run on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "albef_struct.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"albef-struct {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def newest_result(run_dir: Path, result_name: str) -> dict[str, Any]:
    found = sorted(run_dir.rglob(f"{result_name}.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{run_dir}: the test wrote no {result_name}.json")
    return json.loads(found[-1].read_text())


def finetune(task: str, init_from: Path, arch: dict[str, Any], data: Path, run_dir: Path, seed: int,
             steps: dict[str, int]) -> dict[str, Any]:
    """Fine-tune ``task`` (``ve`` or ``nlvr``, the latter after its text-assignment stage) and test it."""
    files = {"image_root": str(data), "train_file": str(data / f"{task}_train.json"),
             "val_file": str(data / f"{task}_dev.json"), "test_file": str(data / f"{task}_test.json")}
    if task == "nlvr":
        ta_dir = run_dir / "nlvr_pretrain"
        cli("fit", "--config", str(CONFIGS / "nlvr_pretrain.yaml"), "--config",
            str(overlay(ta_dir, seed, steps["ta"], init_from, arch, {"image_root": str(data),
                                                                     "train_files": [str(data / "pretrain.json")]}, "ta")))
        init_from = ta_dir / "checkpoints" / "last.ckpt"
    task_dir = run_dir / task
    config = overlay(task_dir, seed, steps[task], init_from, arch, files, task)
    cli("fit", "--config", str(CONFIGS / f"{task}.yaml"), "--config", str(config))
    cli("test", "--config", str(CONFIGS / f"{task}.yaml"), "--config", str(config),
        "--ckpt_path", str(task_dir / "checkpoints" / "last.ckpt"))
    return newest_result(task_dir, f"{task}_test")


def run_one(name: str, seed: int, data: Path, out: Path, pretrain_steps: int, steps: dict[str, int], preset: str,
            image_res: int, num_workers: int, keep_checkpoints: bool) -> dict[str, Any]:
    start = time.perf_counter()
    ckpt, arch = pretrain(name, seed, data, out / "runs", pretrain_steps, preset, image_res, num_workers)
    results = {task: finetune(task, ckpt, arch, data, out / "runs" / f"{name}_seed{seed}", seed, steps)
               for task in ("ve", "nlvr")}
    if not keep_checkpoints:
        ckpt.unlink()
        for folder in (out / "runs" / f"{name}_seed{seed}").glob("*/checkpoints"):
            shutil.rmtree(folder)
    row: dict[str, Any] = {"name": name, "seed": seed, "pretrain_steps": pretrain_steps, "steps": steps,
                           "result": {}, "blind": {}}
    for metric, (result_name, key) in METRICS.items():
        payload = results[result_name.removesuffix("_test")]
        row["result"][metric] = payload["metrics"][key]
        row["blind"][metric] = (payload.get("blind") or {}).get(key)
    row["result"]["seconds"] = time.perf_counter() - start
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std per regularizer, the blind baselines, and each metric's gain over the baseline in its stds."""
    table = seed_table(rows, METRICS)
    blind = {m: statistics.fmean(r["blind"][m] for r in rows if r["blind"].get(m) is not None) for m in METRICS
             if any(r["blind"].get(m) is not None for r in rows)}
    base = table.get("none")
    gains = {}
    if base is not None and len(base["seeds"]) > 1:
        for name, entry in table.items():
            if name != "none":
                gains[name] = {m: (entry["metrics"][m]["mean"] - base["metrics"][m]["mean"])
                               / max(base["metrics"][m]["std"], 1e-3) for m in METRICS}
    return {"table": table, "blind": blind, "gains_in_baseline_std": gains}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| pretraining | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for name, entry in summary["table"].items():
        cells = [f"{entry['metrics'][m]['mean']:.1f} ± {entry['metrics'][m]['std']:.1f}" for m in METRICS]
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines.append("| blind (text only) | | " + " | ".join(f"{summary['blind'].get(m, float('nan')):.1f}"
                                                     for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/regularizers_downstream"))
    parser.add_argument("--data", type=Path, default=Path("data/demo_infogap"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--names", nargs="+", default=["none", *REGULARIZERS], choices=["none", *REGULARIZERS])
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--ve-steps", type=int, default=150)
    parser.add_argument("--ta-steps", type=int, default=40)
    parser.add_argument("--nlvr-steps", type=int, default=150)
    parser.add_argument("--image-res", type=int, default=98)
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints (~1 GB each)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 steps per stage, 1 seed, tiny data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    preset, workers = "small", 1
    steps = {"ve": args.ve_steps, "ta": args.ta_steps, "nlvr": args.nlvr_steps}
    if args.quick:
        preset, workers, args.pretrain_steps, args.image_res, args.seeds = "tiny", 0, 2, 64, [0]
        steps = {"ve": 2, "ta": 2, "nlvr": 2}
        ensure_demo_data(args.data, info_gap=True, n_train=32, n_val=16, n_test=16)
    else:
        ensure_demo_data(args.data, info_gap=True)
    rows = run_grid(
        args.out / "runs.jsonl", args.seeds, args.names,
        lambda name, seed: run_one(name, seed, args.data, args.out, args.pretrain_steps, steps, preset, args.image_res,
                                   workers, args.keep_checkpoints),
        lambda r: (f"VE {r['ve_acc']:.1f}  VE e-v-c {r['ve_entail_vs_contra']:.1f}  NLVR2 {r['nlvr_acc']:.1f}  "
                   f"{r['seconds']:.0f} s"))
    summary = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
