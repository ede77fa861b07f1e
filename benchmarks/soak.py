"""Fault-injection soak: a tiny ``albef-struct fit`` killed with SIGKILL at random moments, resumed each time.

    python -m benchmarks.soak --out results/soak [--kills 20] [--seed 0]

A tiny model on tiny generated demo data (64 pairs, batch 8, 32 px) saves ``last.ckpt``
after every step. One uninterrupted run gives the reference. Then a run is started,
killed with SIGKILL a random time after it completes a new step (every third kill as
soon as ``last.ckpt.tmp`` appears: inside a checkpoint write), and resumed with
``--ckpt_path last``, ``--kills`` times; a last resume runs to the end. After every kill
``last.ckpt`` must load (``weights_only``); at the end the weights, EMA teacher, queue,
optimizer and schedule must equal the reference's (one thread, deterministic mode:
rtol 1e-6, atol 1e-7). Three faults are injected once each: a second ``fit`` into the
live run's folder (refused by the lock), a full disk at a save (ENOSPC: the run stops
with one message, the previous ``last.ckpt`` intact) and an unusable output folder
(refused before the first step). Prints the counts, writes ``soak.json``; exit status 1
if any check fails. Each process start costs a few seconds of imports: about 3 min for
20 kills on 2 cores.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_lightning.callbacks import Callback

from albef_struct.errors import DEBUG_ENV

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH: dict[str, Any] = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
    "embed_dim": 16,
    "mlm_head": True,
}
START_TIMEOUT = 180  # seconds for a run to reach its next step; a hang fails the soak instead of blocking


class Progress(Callback):
    """Appends each completed optimizer step to a file (the soak watches it to time its kills)."""

    def __init__(self, path: str, disk_full_at: int = -1, hold_at: int = -1) -> None:
        self.path, self.disk_full_at, self.hold_at = path, disk_full_at, hold_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else float("nan")
        with open(self.path, "a") as handle:  # step, loss and samples: where a resumed run departs, if it does
            handle.write(f"{trainer.global_step},{loss:.9g},{sum(batch['index'].tolist())}\n")
        if trainer.global_step == self.disk_full_at:  # the save after this step finds the disk full
            def no_space(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            torch.save = no_space
        if trainer.global_step == self.hold_at:  # stay alive (and hold the folder's lock) until killed
            time.sleep(START_TIMEOUT)


def write_config(run: Path, data: Path, steps: int, progress: Path, disk_full_at: int = -1, hold_at: int = -1,
                 folder: Path | None = None) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": steps, "max_epochs": 100, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "deterministic": True, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(run),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(folder or run / "ckpt"), "every_n_train_steps": 1, "save_last": True,
                               "save_top_k": 0}},
                {"class_path": "benchmarks.soak.Progress",
                 "init_args": {"path": str(progress), "disk_full_at": disk_full_at, "hold_at": hold_at}},
            ],
        },
        "model": {"class_path": "albef_struct.lit.PretrainModule",
                  "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-3, "warmup_steps": 2, "cosine": "step"},
                                "queue_size": 64, "k_test": 4}},
        "data": {"class_path": "albef_struct.data.PretrainDataModule",
                 "init_args": {"train_files": [str(data / "pretrain.json")], "image_root": str(data),
                               "image_res": 32, "batch_size": 8, "num_workers": 0, "hflip": False}},
    }
    path = run / f"config_{disk_full_at}_{hold_at}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "albef_struct.cli", "fit", "--config", str(config),
            *(["--ckpt_path", "last"] if resume else [])]


def environment() -> dict[str, str]:
    """One thread, offline, and the user's view of errors (no debug tracebacks: the soak checks the message)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop(DEBUG_ENV, None)
    return env


def steps_done(progress: Path) -> int:
    return len(progress.read_text().split()) if progress.exists() else 0


def last_records(progress: Path) -> dict[int, str]:
    """The last record written for each step (a resumed run writes a step again)."""
    records = {}
    for line in progress.read_text().split():
        step, rest = line.split(",", 1)
        records[int(step)] = rest
    return records


def first_departure(reference: Path, resumed: Path) -> int | None:
    """The first step whose loss or samples differ between the two progress files (None: none)."""
    ref, res = last_records(reference), last_records(resumed)
    return next((step for step in sorted(ref) if res.get(step) != ref[step]), None)


def written_since(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime >= moment
    except FileNotFoundError:
        return False


def loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure to read counts as unreadable
        return False


def same_state(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, float]:
    """Whether two checkpoints hold the same training state; the largest absolute difference."""
    worst, same = 0.0, True
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        if flat_a.keys() != flat_b.keys():
            return False, float("inf")
        for name, value in flat_a.items():
            other = flat_b[name]
            if value.is_floating_point():
                worst = max(worst, float((value.double() - other.double()).abs().max()) if value.numel() else 0.0)
                same &= torch.allclose(value.double(), other.double(), rtol=1e-6, atol=1e-7)
            else:
                same &= torch.equal(value, other)
    return same and a["global_step"] == b["global_step"], worst


def _tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _tensors(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in _tensors(item, f"{prefix}.{i}").items()}
    if isinstance(value, (int, float)):
        return {prefix: torch.tensor(value)}
    return {}


def kill_after_next_step(command: list[str], progress: Path, delay: float, log: Path,
                         in_write: Path | None = None) -> tuple[bool, int]:
    """Start a run, SIGKILL it ``delay`` s after it completes a new step (or, with ``in_write``, as soon
    as that file exists: inside a checkpoint write); ``(killed?, exit status)``."""
    before, started = steps_done(progress), time.time()
    with open(log, "a") as out:
        process = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=out, stderr=out)
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None and steps_done(progress) <= before:
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"no step within {START_TIMEOUT}s: {command}")
        time.sleep(0.01)
    if in_write is not None:  # a write of this run: the file appears again after the step (a kill leaves one behind)
        deadline = time.monotonic() + max(delay, 1.0) * 4
        while process.poll() is None and not written_since(in_write, started) and time.monotonic() < deadline:
            time.sleep(0.0005)
    else:
        time.sleep(delay)
    if process.poll() is not None:
        return False, process.returncode
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True, process.returncode


def soak(out: Path, kills: int, seed: int) -> dict[str, Any]:
    from albef_struct.data_prep.demo_data import generate

    rng = random.Random(seed)
    data = out / "data"
    generate(data, seed=0, image_size=32, n_train=64, n_val=8, n_test=8)
    steps = 3 * kills + 12  # each run trains about one step before its kill; room to spare
    reference, killed = out / "reference", out / "killed"
    for run in (reference, killed):
        run.mkdir(parents=True, exist_ok=True)
        for stale in run.glob("**/*"):
            if stale.is_file():
                stale.unlink()
    start = time.perf_counter()
    done = subprocess.run(fit_command(write_config(reference, data, steps, reference / "progress"), False), cwd=REPO,
                          env=environment(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    step_seconds = min(0.5, (time.perf_counter() - start) / steps)  # an upper bound (it includes the start-up)

    config, progress, last = write_config(killed, data, steps, killed / "progress"), killed / "progress", killed / "ckpt" / "last.ckpt"
    result: dict[str, Any] = {"kills": 0, "kills_during_write": 0, "unreadable_last_ckpt": 0, "resumes": 0,
                              "steps": steps, "faults": {}}
    log = killed / "runs.log"
    while result["kills"] < kills:
        resume, started = last.exists(), time.time()
        target = last.parent / "last.ckpt.tmp" if result["kills"] % 3 == 2 else None  # every third kill: mid-write
        was_killed, _ = kill_after_next_step(fit_command(config, resume), progress, rng.uniform(0, step_seconds), log,
                                             target)
        result["resumes"] += int(resume)
        if not was_killed:
            break
        result["kills"] += 1
        result["kills_during_write"] += int(written_since(last.parent / "last.ckpt.tmp", started))
        result["unreadable_last_ckpt"] += int(last.exists() and not loads(last))
        if not result["faults"] and result["kills"] >= kills // 2 and loads(last):  # mid-run, with steps left
            result["faults"]["second_fit_refused"] = second_fit_is_refused(killed, data, steps, last, log)
            result["faults"]["disk_full"] = disk_full_stops_cleanly(killed, data, steps, last)
    final = subprocess.run(fit_command(config, True), cwd=REPO, env=environment(), capture_output=True, text=True,
                           timeout=600)
    result["final_exit_status"] = final.returncode
    result["final_matches_uninterrupted"], result["max_abs_diff"] = same_state(
        torch.load(reference / "ckpt" / "last.ckpt", weights_only=True), torch.load(last, weights_only=True))
    result["first_departing_step"] = first_departure(reference / "progress", progress)
    result["faults"]["unusable_folder_refused"] = unusable_folder_is_refused(out, data)
    result["seconds"] = time.perf_counter() - start
    result["passed"] = (result["kills"] == kills and result["unreadable_last_ckpt"] == 0 and final.returncode == 0
                        and result["final_matches_uninterrupted"] and len(result["faults"]) == 3
                        and all(result["faults"].values()))
    return result


def second_fit_is_refused(run: Path, data: Path, steps: int, last: Path, log: Path) -> bool:
    """While a run holds its folder (paused after a step), a second fit into it exits with the lock's message."""
    progress = run / "progress"
    hold = torch.load(last, weights_only=True)["global_step"] + 1
    before = steps_done(progress)
    config = write_config(run, data, steps, progress, hold_at=hold)
    with open(log, "a") as out:
        live = subprocess.Popen(fit_command(config, True), cwd=REPO, env=environment(), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while live.poll() is None and steps_done(progress) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        second = subprocess.run(fit_command(write_config(run, data, steps, progress), True), cwd=REPO,
                                env=environment(), capture_output=True, text=True, timeout=600)
        return live.poll() is None and second.returncode == 1 and "being written by another run" in second.stderr
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


def disk_full_stops_cleanly(run: Path, data: Path, steps: int, last: Path) -> bool:
    """ENOSPC at the next save: exit status 1, one message, the previous last.ckpt intact and loadable."""
    progress = run / "progress"
    before = torch.load(last, weights_only=True)["global_step"]
    config = write_config(run, data, steps, progress, disk_full_at=before + 1)
    result = subprocess.run(fit_command(config, True), cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=600)
    message = "the disk is full" in result.stderr and "Traceback" not in result.stderr
    intact = loads(last) and torch.load(last, weights_only=True)["global_step"] == before
    return result.returncode == 1 and message and intact and not (last.parent / "last.ckpt.tmp").exists()


def unusable_folder_is_refused(out: Path, data: Path) -> bool:
    blocker = out / "not_a_folder"
    blocker.write_text("a file where the checkpoint folder should go")
    run = out / "unusable"
    run.mkdir(exist_ok=True)
    progress = run / "progress"
    config = write_config(run, data, 4, progress, folder=blocker / "ckpt")
    result = subprocess.run(fit_command(config, False), cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=600)
    return result.returncode == 1 and "cannot be used" in result.stderr and steps_done(progress) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/soak"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = soak(args.out, args.kills, args.seed)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"kills survived: {result['kills']} ({result['kills_during_write']} during a checkpoint write), "
          f"resumes: {result['resumes']}, unreadable last.ckpt: {result['unreadable_last_ckpt']}, final state equal "
          f"to the uninterrupted run's: {result['final_matches_uninterrupted']} (max |diff| {result['max_abs_diff']:.2e}); "
          f"faults: {result['faults']}; {result['seconds']:.0f}s -> {'PASSED' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
