"""Per-rank memory of DDP against FSDP (``FullyShardedStrategy``) on the same pretraining steps.

    python -m benchmarks.sharding [--size small] [--ranks 2] [--steps 4] [--out results/bench]

Each strategy runs in its own pair of CPU processes (gloo; Lightning starts the second rank),
so each rank's peak resident memory (``ru_maxrss``) is its own. Every rank trains ALBEF's whole
objective (queue ITC, ITM with hard negatives, MLM, EMA teacher) on a synthetic batch of the size's
shape and reports what it holds after the last step: parameter, gradient and Adam-state bytes
(its local shards under FSDP) and its peak RSS. Prints a table and writes ``sharding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albef_struct.metrics.report import format_table, write_json
from benchmarks.measure import median, peak_rss_mb
from benchmarks.sizes import SIZES, pretrain_batch

RESULT_PREFIX = "SHARDING_RESULT "
STRATEGIES = ("ddp", "fsdp")


def local_bytes(tensors) -> int:
    """Bytes this rank stores for ``tensors`` (its shard of a sharded one)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def held_by_rank(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """MiB of parameters (student and teacher), gradients and optimizer state on this rank."""
    mib = 2**20
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    buffers = [b for _, b in module.named_buffers()]
    return {
        "parameters_mib": local_bytes(module.parameters()) / mib,
        "gradients_mib": local_bytes(p.grad for p in module.parameters()) / mib,
        "optimizer_mib": local_bytes(states) / mib,
        "buffers_mib": local_bytes(buffers) / mib,  # queues: whole on every rank under both strategies
    }


def run_rank(size_name: str, strategy_name: str, ranks: int, steps: int) -> None:
    """One rank of one strategy: fit ``steps`` steps, then print this rank's measurements (rank 0: all ranks')."""
    import pytorch_lightning as pl
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from albef_struct.lit.pretrain import PretrainModule
    from albef_struct.lit.sharding import FullyShardedStrategy

    size = SIZES[size_name]
    torch.manual_seed(0)
    module = PretrainModule(arch=size.arch(mlm_head=True), queue_size=65536, contrastive="infonce_queue",
                            itm_weight=1.0, mlm_weight=1.0)
    batch = pretrain_batch(size)
    loader = DataLoader([batch] * steps, batch_size=None)
    strategy = (FullyShardedStrategy(process_group_backend="gloo") if strategy_name == "fsdp"
                else pl.strategies.DDPStrategy(process_group_backend="gloo", broadcast_buffers=False))
    step_times: list[float] = []

    class Measure(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step_times.append(time.perf_counter() - self.start)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.gradients = held_by_rank(pl_module, optimizer)["gradients_mib"]

    measure = Measure()
    trainer = pl.Trainer(accelerator="cpu", devices=ranks, strategy=strategy, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[measure])
    trainer.fit(module, loader)
    held = held_by_rank(module, trainer.optimizers[0])
    held["gradients_mib"] = measure.gradients  # at the optimizer step (Lightning zeroes them afterwards)
    row = {"rank": trainer.global_rank, **held, "peak_rss_mib": peak_rss_mb(),
           "step_s_median": median(step_times[1:])}  # the first step warms up
    rows: list[Any] = [None] * ranks
    dist.all_gather_object(rows, row)
    if trainer.global_rank == 0:
        print(RESULT_PREFIX + json.dumps(rows), flush=True)


def measure_strategy(size_name: str, strategy: str, ranks: int, steps: int) -> list[dict[str, float]]:
    """Start one strategy's job (rank 0 here, the rest started by Lightning) and read its per-rank rows."""
    command = [sys.executable, "-m", "benchmarks.sharding", "--rank-job", strategy, "--size", size_name,
               "--ranks", str(ranks), "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{strategy} job failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--rank-job", choices=STRATEGIES, help=argparse.SUPPRESS)  # internal: one strategy's ranks
    args = parser.parse_args(argv)
    if args.rank_job:
        run_rank(args.size, args.rank_job, args.ranks, args.steps)
        return 0
    results = {s: measure_strategy(args.size, s, args.ranks, args.steps) for s in STRATEGIES}
    headers = ("strategy", "rank", "parameters MiB", "gradients MiB", "Adam state MiB", "buffers MiB",
               "peak RSS MiB", "step s (median)")
    keys = ("parameters_mib", "gradients_mib", "optimizer_mib", "buffers_mib", "peak_rss_mib", "step_s_median")
    rows = [(s, r["rank"], *(float(r[k]) for k in keys)) for s in STRATEGIES for r in results[s]]
    print(f"{SIZES[args.size].note}, batch {SIZES[args.size].batch} per rank, {args.ranks} CPU processes (gloo), "
          f"1 thread each, {args.steps} steps of ITC (queue) + ITM + MLM with the EMA teacher")
    print(format_table(headers, rows, float_format="{:.1f}"))
    path = write_json(Path(args.out) / "sharding.json", {
        "size": args.size, "note": SIZES[args.size].note, "batch_per_rank": SIZES[args.size].batch,
        "ranks": args.ranks, "steps": args.steps, "threads_per_rank": 1, "results": results,
    })
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
