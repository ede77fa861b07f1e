"""`make bench-gpu`: ALBEF-base pretraining in bf16 on one GPU, in about five minutes.

    python -m benchmarks.gpu --out results/bench                            # one CUDA GPU
    python -m benchmarks.gpu --device cpu --size tiny --steps 2 --out DIR   # the benchmark's own check, on a CPU

Measured in one process: the peak bf16 matmul rate of the device (8192^3 GEMMs on a GPU),
then a full pretraining step of ALBEF-base at 256 px (ITC with the 65,536 queue + ITM with
hard negatives + MLM, momentum distillation, AdamW; bf16 autocast, SDPA attention) timed
over ``--steps`` after ``--warmup``, its FLOPs counted by ``torch.utils.flop_counter`` and
MFU = achieved FLOP/s over the measured matmul peak; peak memory (``max_memory_allocated``
on a GPU, peak RSS on a CPU); and the retrieval evaluation's ITM re-ranking throughput
(image-text pairs per second, bf16) on a synthetic encoded gallery. Writes ``bench_gpu.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from albef_struct.metrics.report import format_table, write_json
from benchmarks.measure import gemm_peak
from benchmarks.worker import run_rerank_row, run_step_row

DEFAULTS = {"cuda": {"size": "base", "batch": 64, "gemm": 8192, "images": 1000, "k_test": 128},
            "cpu": {"size": "tiny", "batch": 8, "gemm": 1024, "images": 16, "k_test": 4}}


def run(out: Path, device: str, size: str | None = None, batch: int | None = None, steps: int = 10,
        warmup: int = 3, rerank_images: int | None = None, k_test: int | None = None) -> dict[str, Any]:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu: no CUDA device here. Run it on a GPU machine, or check the benchmark itself "
                         "on this CPU with: python -m benchmarks.gpu --device cpu --size tiny --steps 2")
    defaults = DEFAULTS[device]
    size, batch = size or defaults["size"], batch or defaults["batch"]
    start = time.perf_counter()
    peak = gemm_peak(n=defaults["gemm"], dtype=torch.bfloat16, reps=10, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = run_step_row({"workload": "pretrain", "size": size, "batch": batch, "variant": "fast_bf16", "device": device,
                         "warmup": warmup, "steps": steps, "flops": True})
    rerank = run_rerank_row({"size": size, "n_images": rerank_images or defaults["images"], "texts_per_image": 5,
                             "k_test": k_test or defaults["k_test"], "device": device, "precision": "bf16"})
    peak_memory_mb = step.get("cuda_max_allocated_mb", step["peak_rss_mb"])
    payload = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "size": size, "note": step["note"], "batch": step["batch"],
        "img_size": step["img_size"], "precision": "bf16",
        "pretrain_samples_per_s": step["samples_per_s"], "median_step_s": step["median_step_s"],
        "peak_memory_mb": peak_memory_mb, "memory_kind": "max_memory_allocated" if device == "cuda" else "peak RSS",
        "flops_per_step": step["flops_per_step"], "achieved_tflops": step["achieved_flops"] / 1e12,
        "matmul_peak_tflops_bf16": peak["best_flops"] / 1e12, "mfu": step["achieved_flops"] / peak["best_flops"],
        "rerank_pairs_per_s": rerank["pairs_per_s"], "rerank_images": rerank["n_images"],
        "rerank_texts": rerank["n_texts"], "k_test": rerank["k_test"], "seconds": time.perf_counter() - start,
        "step_row": step, "rerank_row": rerank,
    }
    write_json(out / "bench_gpu.json", payload)
    print(format_table(["device", "model", "batch", "samples/s", "peak MB", "TFLOP/s", "matmul peak", "MFU",
                        "re-rank pairs/s"],
                       [[payload["device"], size, payload["batch"], payload["pretrain_samples_per_s"], peak_memory_mb,
                         payload["achieved_tflops"], payload["matmul_peak_tflops_bf16"], payload["mfu"],
                         payload["rerank_pairs_per_s"]]]))
    print(f"written to {out / 'bench_gpu.json'} ({payload['seconds']:.0f} s)")
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--device", choices=sorted(DEFAULTS), default="cuda")
    parser.add_argument("--size", choices=["tiny", "small", "base"], help="default: base on a GPU, tiny on a CPU")
    parser.add_argument("--batch", type=int, help="default: 64 on a GPU (ALBEF's per-GPU batch), 8 on a CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.out, args.device, args.size, args.batch, args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
