"""Speed and memory benchmarks (``make bench``): training steps, fast paths, re-ranking, memory.

    python -m benchmarks.run [--quick | --against-plain] [--out results/bench] [--threads N] [--budget S]

Every configuration runs in a fresh subprocess (``benchmarks.worker``) so its peak
memory (``ru_maxrss``) is its own. The peak matmul rate (fp32 and bf16 GEMMs) is
measured in this process at the start and the end, with the workers' thread
count, and model-FLOPs utilisation (MFU) is achieved FLOP/s over that peak.
Rows run in priority order; a row whose estimated cost no longer fits the time
budget is skipped and listed, so the whole run stays inside ``--budget``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from albef_struct.lit.cpu_precision import has_native_bf16
from albef_struct.metrics.report import format_table, write_json
from benchmarks import plan
from benchmarks.against_plain import compare_to_plain, comparison_table
from benchmarks.measure import gemm_peak
from benchmarks.sizes import SIZES
from benchmarks.worker import RESULT_PREFIX

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configuration only (about 2 minutes)")
    parser.add_argument("--out", default="results/bench", help="folder for the JSON files")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (0: all cores, or 1 when other processes already load the CPU)")
    parser.add_argument("--budget", type=float, default=0, help="seconds for the whole run (default 570, quick 240)")
    parser.add_argument("--compile-small", action="store_true",
                        help="also time torch.compile on the small configuration (minutes of compilation)")
    parser.add_argument("--against-plain", action="store_true",
                        help="only issue 24's comparison: each small pretraining variant, profiled, against the plain "
                             "path of its precision (about 7 minutes; against_plain.json)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="with --against-plain: only these variants (their plain references are added), e.g. "
                             "fast_fused_adamw; the names are those of benchmarks/plan.py AGAINST_PLAIN")
    args = parser.parse_args(argv)
    if args.variants and not args.against_plain:
        parser.error("--variants selects rows of --against-plain; add --against-plain")
    unknown = sorted(set(args.variants or ()) - set(plan.AGAINST_PLAIN))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(plan.AGAINST_PLAIN)}")
    return args


def choose_threads(requested: int) -> tuple[int, str]:
    """Worker thread count and why: OpenMP barriers stall badly when cores are shared."""
    cores = os.cpu_count() or 1
    if requested > 0:
        return requested, "requested"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load > 0.5 * cores:
        return 1, f"1 of {cores}: load average {load:.1f} from other processes (pass --threads {cores} on an idle machine)"
    return cores, f"all {cores} cores (load average {load:.1f})"


def run_worker(row: dict[str, Any], threads: int, timeout: float) -> dict[str, Any]:
    spec = {k: v for k, v in row.items() if k != "cost"} | {"threads": threads}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s (budget)", "wall_s": time.perf_counter() - start}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {**spec, "error": f"worker exited {proc.returncode} without a result: {tail}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["wall_s"] = time.perf_counter() - start
    return result


#: why bf16 rows are skipped on a CPU without bf16 instructions (measured on an AVX2-only AMD EPYC, 2 threads:
#: the small plain bf16 step did not finish 12 steps in 548 s, where fp32 takes 3.1 s a step)
EMULATED_BF16 = ("this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 autocast is emulated and "
                 "over 10x slower than fp32; albef_struct.lit.cpu_precision keeps fp32 here")


def skip_reason(row: dict[str, Any], native_bf16: bool | None = None) -> str | None:
    """Why ``row`` cannot run here, or None. ``native_bf16`` defaults to what this CPU has."""
    variants = row.get("variants") or [row.get("variant", "")]
    if any("bf16" in v for v in variants) and not (has_native_bf16() if native_bf16 is None else native_bf16):
        return EMULATED_BF16
    if row["kind"] == "step" and row["workload"] != "pretrain":
        from benchmarks.workloads import task_missing

        return task_missing(row["workload"])
    return None


def label(row: dict[str, Any]) -> str:
    if row["kind"] == "ab":
        return f"interleaved {row['size']} {'/'.join(row['variants'])}"
    if row["kind"] == "rerank":
        return f"rerank {row['size']} {row['n_images']} images k={row['k_test']}"
    extra = f" {row['contrastive']} b={row['batch']}" if row.get("group") == "memory" else ""
    return f"{row['workload']} {row['size']} {row['variant']}{extra}"


def add_mfu(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """MFU = model FLOPs per step / step time / peak GEMM rate of the same precision.

    Variants that change no math (bf16, checkpointing, compile, fused AdamW) use the
    FLOPs counted on the ``fast`` row; recomputation is not counted as model FLOPs.
    """
    counted = {(r["workload"], r["size"], r.get("variant")): r["flops_per_step"] for r in rows if "flops_per_step" in r}
    for r in rows:
        if "median_step_s" not in r:
            continue
        flops = r.get("flops_per_step")
        if flops is None and r.get("group") != "memory":
            base = "plain" if r["variant"].startswith("plain") else "fast"
            flops = counted.get((r["workload"], r["size"], base))
            if flops is not None:
                r["flops_per_step"] = flops
                r["flops_from"] = base
        if flops is None:
            continue
        r["achieved_flops"] = flops / r["median_step_s"]
        precision = r.get("variant_flags", {}).get("precision", "fp32")
        r["mfu"] = r["achieved_flops"] / peaks[precision]


def add_ab_mfu(abs_: list[dict[str, Any]], steps: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """MFU of interleaved rows, from the FLOPs counted on the separate-process rows."""
    counted = {(r["size"], r["variant"]): r["flops_per_step"] for r in steps
               if r.get("workload") == "pretrain" and "flops_per_step" in r and not r.get("group")}
    for row in abs_:
        for name, v in row.get("results", {}).items():
            flops = v.get("flops_per_step") or counted.get((row["size"], "plain" if name.startswith("plain") else "fast"))
            if flops is not None:
                v["flops_per_step"] = flops
                v["achieved_flops"] = flops / v["median_step_s"]
                v["mfu"] = v["achieved_flops"] / peaks[v["flags"]["precision"]]


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pretraining variant's step-time speedup over the plain path of the same size."""
    plain = {r["size"]: r["median_step_s"] for r in rows
             if r.get("workload") == "pretrain" and r.get("variant") == "plain" and "median_step_s" in r and not r.get("group")}
    out = []
    for r in rows:
        if r.get("workload") == "pretrain" and not r.get("group") and "median_step_s" in r and r["size"] in plain:
            out.append({"size": r["size"], "variant": r["variant"], "speedup_vs_plain": plain[r["size"]] / r["median_step_s"]})
    return out


def print_ab(abs_: list[dict]) -> None:
    rows = []
    for row in abs_:
        if "error" in row:
            rows.append((row["size"], "/".join(row["variants"]), "", "error", row["error"][:60], "", "", "", "", ""))
            continue
        for name, v in row["results"].items():
            rows.append((
                row["size"], name, row["batch"], f"{v['median_step_s']:.2f}", f"{v['samples_per_s']:.1f}",
                f"{v['speedup_vs_reference']:.2f}x vs {row['reference']}", f"{100 * v['mfu']:.1f}" if "mfu" in v else "",
                f"{v['warmup_s'][0]:.1f}",
                f"{v['reference_loss']:.4f}" if v.get("reference_loss") is not None else "-",
                f"{100 * v['loss_rel_diff_vs_reference']:.2f}" if "loss_rel_diff_vs_reference" in v else "-",
            ))
    print("\nPretraining variants stepped in turn in one process (median step; speedup = median of per-round ratios;")
    print("loss = the step's loss at the shared initial weights, dropout off, same MLM masks and negatives)")
    print(format_table(("size", "variant", "batch", "step s", "samples/s", "speedup", "MFU %", "first step s", "loss",
                        "loss diff %"), rows))


def print_tables(steps: list[dict], reranks: list[dict], memory: list[dict], skipped: list[dict], peaks: dict) -> None:
    rows = []
    for r in steps:
        if "error" in r:
            rows.append((r["workload"], r["size"], r.get("variant", ""), r.get("batch", ""), "error", r["error"][:60], "", "", "", ""))
            continue
        rows.append((
            r["workload"], r["size"], r["variant"], r["batch"], f"{r['median_step_s']:.2f}", f"{r['samples_per_s']:.1f}",
            f"{r['flops_per_step'] / 1e9:.1f}" if "flops_per_step" in r else "",
            f"{r['achieved_flops'] / 1e9:.1f}" if "achieved_flops" in r else "",
            f"{100 * r['mfu']:.1f}" if "mfu" in r else "", f"{r['peak_rss_mb']:.0f}",
        ))
    if rows:
        print("\nTraining steps (forward + backward + AdamW; median of the timed steps)")
        print(format_table(("workload", "size", "variant", "batch", "step s", "samples/s", "GFLOP/step", "GFLOP/s", "MFU %", "peak RSS MB"), rows))
    ups = speedups(steps)
    if ups:
        print("\nSpeedup over the plain path (fp32, eager, two ITM fusion calls, full-vocabulary MLM), separate processes")
        print(format_table(("size", "variant", "speedup"), [(u["size"], u["variant"], f"{u['speedup_vs_plain']:.2f}x") for u in ups]))
    if reranks:
        print("\nRetrieval evaluation: ITM re-ranking of each query's top k_test (both directions)")
        print(format_table(("size", "images", "texts", "k_test", "pairs", "rerank s", "pairs/s", "ITC+top-k s", "peak RSS MB"), [
            (r["size"], r["n_images"], r.get("n_texts", ""), r["k_test"], r.get("pairs", ""),
             f"{r['median_rerank_s']:.2f}" if "median_rerank_s" in r else r.get("error", "")[:40],
             f"{r['pairs_per_s']:.0f}" if "pairs_per_s" in r else "", f"{r.get('itc_topk_s', float('nan')):.3f}",
             f"{r.get('peak_rss_mb', float('nan')):.0f}") for r in reranks]))
    if memory:
        print("\nPeak memory vs batch size, contrastive-only step (ITM and MLM off; teacher forward kept)")
        print(format_table(("loss", "queue", "batch", "model MB", "peak RSS MB", "step extra MB", "step s"), [
            (r["contrastive"], r.get("queue_size", ""), r["batch"], f"{r.get('rss_model_mb', float('nan')):.0f}",
             f"{r.get('peak_rss_mb', float('nan')):.0f}", f"{r.get('peak_step_extra_mb', float('nan')):.0f}",
             f"{r.get('median_step_s', float('nan')):.2f}") for r in memory]))
    for r in steps:
        if r.get("profile_top_ops"):
            print(f"\nProfile of one {r['workload']} {r['size']} {r['variant']} step (top ops by self CPU time)")
            print(format_table(("op", "self CPU ms", "%", "calls"), [
                (o["op"][:50], f"{o['self_cpu_ms']:.1f}", f"{o['self_cpu_pct']:.1f}", o["calls"]) for o in r["profile_top_ops"]]))
    print("\nPeak GEMM rate (n^3 matmuls, n = 2048, for bf16 512 on a CPU without bf16 instructions; best of 5, "
          "start/end of the run): "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    if skipped:
        print("\nSkipped:")
        for s in skipped:
            print(f"  {s['row']}: {s['reason']}")


def measure_peaks() -> dict[str, dict[str, float]]:
    """fp32 and bf16 GEMM peaks; without bf16 instructions the bf16 one is measured at n = 512 (at 2048 its
    emulated products took minutes) and only shows how slow bf16 is there."""
    bf16_n = 2048 if has_native_bf16() else 512
    return {"fp32": gemm_peak(2048, torch.float32), "bf16": gemm_peak(bf16_n, torch.bfloat16)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    budget = args.budget or (240.0 if args.quick else 570.0)
    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    print(f"threads per worker: {why}; budget {budget:.0f} s; device: CPU ({platform.processor() or platform.machine()})")
    peaks_start = measure_peaks()
    if args.against_plain:
        rows = plan.against_plain_plan(variants=args.variants)
    else:
        rows = plan.quick_plan() if args.quick else plan.full_plan(compile_small=args.compile_small)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for row in rows:
        name = label(row)
        reason = skip_reason(row)
        if reason is None:
            remaining = budget - (time.perf_counter() - started) - 15.0  # keep time for the closing GEMM run
            if row["cost"] > remaining:
                reason = f"estimated {row['cost']} s does not fit the remaining budget ({max(0.0, remaining):.0f} s)"
        if reason:
            skipped.append({"row": name, "reason": reason})
            print(f"skip  {name}: {reason}", flush=True)
            continue
        result = run_worker(row, threads, timeout=max(30.0, budget - (time.perf_counter() - started) - 10.0))
        results.append(result)
        status = result.get("error", "")[:120] or (
            f"{result['median_step_s']:.2f} s/step" if "median_step_s" in result
            else f"{result['pairs_per_s']:.0f} pairs/s" if "pairs_per_s" in result
            else ", ".join(f"{k} {v['median_step_s']:.2f} s" for k, v in result.get("results", {}).items()))
        print(f"done  {name} ({result.get('wall_s', 0):.0f} s): {status}", flush=True)
    peaks_end = measure_peaks()
    peaks = {k: max(peaks_start[k]["best_flops"], peaks_end[k]["best_flops"]) for k in peaks_start}

    steps = [r for r in results if r.get("kind", "step") == "step" and r.get("group") != "memory"]
    memory = [r for r in results if r.get("group") == "memory"]
    reranks = [r for r in results if r.get("kind") == "rerank"]
    interleaved = [r for r in results if r.get("kind") == "ab"]
    add_mfu(steps, peaks)
    add_ab_mfu(interleaved, steps, peaks)
    if interleaved:  # format_table needs at least one row
        print_ab(interleaved)
    print_tables(steps, reranks, memory, skipped, peaks)
    against_plain = compare_to_plain(steps)
    if against_plain:
        print("\nAgainst the plain path (the original's computation) of the same precision, separate processes;"
              "\nmatmul % from each variant's profile; other s = the step's time outside matrix products")
        print(format_table(*comparison_table(against_plain)))

    out = Path(args.out)
    environment = {
        "torch": torch.__version__, "threads": threads, "threads_reason": why, "cpu_count": os.cpu_count(),
        "load_average_start": load_start, "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device": "cpu",
        "cuda_available": torch.cuda.is_available(), "quick": args.quick, "budget_s": budget,
        "elapsed_s": time.perf_counter() - started,
        "sizes": {k: {"note": s.note, "batch": s.batch, "img_size": s.vision.img_size, "text_len": s.text_len} for k, s in SIZES.items()},
    }
    write_json(out / "gemm_peak.json", {"start": peaks_start, "end": peaks_end, "peak_flops": peaks})
    write_json(out / "train_steps.json", {"environment": environment, "rows": steps, "speedup_vs_plain": speedups(steps)})
    write_json(out / "interleaved.json", {"environment": environment, "rows": interleaved})
    write_json(out / "rerank.json", {"environment": environment, "rows": reranks})
    write_json(out / "memory_vs_batch.json", {"environment": environment, "objective": "contrastive only (itm_weight=0, mlm_weight=0)", "rows": memory})
    profiles = [{k: r[k] for k in ("workload", "size", "variant", "batch", "median_step_s", "profile_top_ops")} for r in steps if r.get("profile_top_ops")]
    write_json(out / "profile.json", {"environment": environment, "profiles": profiles})
    write_json(out / "against_plain.json", {"environment": environment, "rows": against_plain})
    write_json(out / "summary.json", {"environment": environment, "skipped": skipped,
                                      "errors": [{"row": label(r), "error": r["error"]} for r in results if "error" in r]})
    print(f"\nJSON written to {out}/ (train_steps, interleaved, rerank, memory_vs_batch, profile, against_plain, gemm_peak, summary); "
          f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
