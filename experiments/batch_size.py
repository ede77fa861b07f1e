"""Batch size vs zero-shot retrieval: the decomposable loss against in-batch InfoNCE, SigLIP and ALBEF's ITC.

    python -m experiments.batch_size --out results/batch_size [--epochs 10] [--seeds 3] [--jobs 2]
    python -m experiments.batch_size --quick --out DIR      # same code path, 2 seeds x 2 epochs, < 10 min

The claim tested (the NeurIPS 2022 paper, via the seed article): the decomposable loss
at a small batch does what in-batch InfoNCE needs a larger batch for. Protocol
(:mod:`experiments.frozen_features`): the small preset's encoders are frozen and their
features of the demo data cached once (3,000 training images x 5 captions = 15,000
pairs); each run trains fresh projection heads (384 -> 256, learnable temperature) with
one contrastive loss for a fixed number of **epochs** (equal samples seen), AdamW at
1e-3 with 5 % warm-up and a cosine, then measures zero-shot retrieval on the 300 test
images (1,500 captions) by ITC cosine and linear probes of the image embedding on the
first object's shape and colour. Every (loss, batch) cell runs ``--seeds`` seeds
(different head initialisations and batch orders); the tables give mean ± std.

Rows: the decomposable loss (defaults) at B in {8, 16, 32, 64}; in-batch InfoNCE at
B to 256 (so 2B and 4B are there); SigLIP and ALBEF's queued ITC (queue 4,096, EMA
teacher, distillation) at the same B as the decomposable loss; the earlier or
switched-off parts of the decomposable loss at B = 32 (no batch calibration, the
running estimate instead of the bank, the earlier absolute surrogate); and, for equal
**steps**, InfoNCE at 2B trained 2x the epochs. Writes ``summary.json`` (``rows``:
loss, batch, epochs, seeds, r1_mean, r1_std and more), ``batch_size.json`` (every run)
and ``batch_size.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

#: run name -> (registered contrastive loss, its arguments, label)
LOSSES: dict[str, tuple[str, dict[str, Any], str]] = {
    "decomposable": ("decomposable", {}, "decomposable (defaults: bank, relative, batch-calibrated)"),
    "infonce": ("infonce", {}, "in-batch InfoNCE"),
    "siglip": ("siglip", {}, "SigLIP"),
    "infonce_queue": ("infonce_queue", {}, "ALBEF ITC (queue 4096 + distillation)"),
    "decomposable_uncalibrated": ("decomposable", {"calibrate": "none"}, "decomposable, u not calibrated"),
    "decomposable_running": ("decomposable", {"denominator": "running"},
                             "decomposable, running estimate (FastCLIP schedule)"),
    "decomposable_absolute": ("decomposable", {"form": "absolute", "denominator": "running", "gamma": 0.1,
                                               "gamma_min": 0.1, "gamma_decay_visits": 0, "u_from": "previous",
                                               "calibrate": "none"},
                              "decomposable, earlier default (absolute, γ = 0.1, previous u)"),
}
SMALL_BATCHES = (8, 16, 32, 64)
#: the rows that run a loss at its shipped defaults (the others switch a part of the decomposable loss off)
DEFAULTS = ("decomposable", "infonce", "siglip", "infonce_queue")
CHANCE_R1 = 100 / 300  # one of 300 test images


def plan(epochs: float, quick: bool) -> list[tuple[str, int, float]]:
    """The ``(loss, batch, epochs)`` cells of the protocol (``quick``: a subset of the same cells)."""
    if quick:
        return [("decomposable", 8, epochs), ("decomposable", 16, epochs), ("infonce", 8, epochs),
                ("infonce", 16, epochs), ("infonce", 32, epochs), ("siglip", 8, epochs), ("infonce_queue", 8, epochs)]
    cells = [("decomposable", b, epochs) for b in SMALL_BATCHES]
    cells += [("infonce", b, epochs) for b in (*SMALL_BATCHES, 128, 256)]
    cells += [(loss, b, epochs) for loss in ("siglip", "infonce_queue") for b in SMALL_BATCHES]
    cells += [(loss, 32, epochs) for loss in ("decomposable_uncalibrated", "decomposable_running",
                                              "decomposable_absolute")]
    cells += [("infonce", 2 * b, 2 * epochs) for b in (8, 16, 32)]  # equal steps with decomposable(b)
    return cells


def run_cell(cache: str, loss_name: str, batch: int, epochs: float, seed: int) -> dict[str, Any]:
    """One training run (in a worker process, one thread)."""
    import torch

    from albef_struct.losses.contrastive import build_contrastive_loss
    from experiments.frozen_features import FrozenFeatures, train_heads

    torch.set_num_threads(1)
    features = FrozenFeatures.load(Path(cache))
    registered, args, _ = LOSSES[loss_name]
    queue = {"queue_size": 4096} if registered == "infonce_queue" else {}
    metrics = train_heads(features, build_contrastive_loss(registered, **args), batch, epochs, seed, **queue)
    return {"loss": loss_name, "batch": batch, "epochs": epochs, "seed": seed, **metrics}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (loss, batch, epochs): mean and std over seeds of each metric."""
    cells: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["loss"], run["batch"], run["epochs"]), []).append(run)
    rows = []
    for (loss, batch, epochs), group in cells.items():
        row: dict[str, Any] = {"loss": loss, "batch": batch, "epochs": epochs, "seeds": len(group),
                               "steps": group[0]["steps"]}
        for key in ("r1", "i2t_r1", "t2i_r1", "probe_shape", "probe_colour", "train_infonce", "temp"):
            scale = 100.0 if key.startswith("probe_") else 1.0  # probe accuracies come as fractions
            values = [scale * run[key] for run in group if key in run]
            if values:
                row[f"{key}_mean"] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["r1_min"] = min(run["r1"] for run in group)
        row["step_saved_bytes"] = group[0].get("step_saved_bytes")
        row["seconds_per_epoch"] = statistics.fmean(run["seconds_per_epoch"] for run in group)
        rows.append(row)
    return rows


def find(rows: list[dict[str, Any]], loss: str, batch: int, epochs: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["loss"] == loss and r["batch"] == batch and r["epochs"] == epochs), None)


def verdicts(rows: list[dict[str, Any]], epochs: float) -> list[dict[str, Any]]:
    """The issue's targets, checked from the numbers. σ is the pooled std of the two rows compared."""
    out = []
    for batch in SMALL_BATCHES:
        dec = find(rows, "decomposable", batch, epochs)
        if dec is None:
            continue
        for other_batch, margin in ((batch, 2.0), (2 * batch, -1.0)):
            ref = find(rows, "infonce", other_batch, epochs)
            if ref is None:
                continue
            sigma = math.sqrt((dec["r1_std"] ** 2 + ref["r1_std"] ** 2) / 2)
            need = ref["r1_mean"] + margin * sigma
            out.append({
                "claim": f"decomposable({batch}) >= infonce({other_batch}) {'+ 2σ' if margin > 0 else '- σ'}",
                "decomposable": dec["r1_mean"], "infonce": ref["r1_mean"], "sigma": sigma, "needed": need,
                "holds": dec["r1_mean"] >= need,
            })
    collapsed = [f"{r['loss']}@{r['batch']}" for r in rows if r["r1_min"] < 2 * CHANCE_R1 and r["loss"] in DEFAULTS]
    variants = [f"{r['loss']}@{r['batch']}" for r in rows if r["r1_min"] < 2 * CHANCE_R1 and r["loss"] not in DEFAULTS]
    out.append({"claim": "no run of a loss at its defaults ends at chance (R@1 < 2x chance)", "collapsed": collapsed,
                "holds": not collapsed, "variants_at_chance": variants})
    return out


def plot(rows: list[dict[str, Any]], epochs: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"decomposable": "tab:red", "infonce": "tab:blue", "siglip": "tab:purple", "infonce_queue": "tab:green",
              "decomposable_uncalibrated": "tab:orange", "decomposable_running": "tab:brown",
              "decomposable_absolute": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss, (_, _, label) in LOSSES.items():
        series = sorted((r for r in rows if r["loss"] == loss and r["epochs"] == epochs), key=lambda r: r["batch"])
        if series:
            ax.errorbar([r["batch"] for r in series], [r["r1_mean"] for r in series],
                        yerr=[r["r1_std"] for r in series], fmt="o-", capsize=3, color=colors[loss], label=label)
    steps = sorted((r for r in rows if r["loss"] == "infonce" and r["epochs"] == 2 * epochs), key=lambda r: r["batch"])
    if steps:
        ax.errorbar([r["batch"] for r in steps], [r["r1_mean"] for r in steps], yerr=[r["r1_std"] for r in steps],
                    fmt="s--", capsize=3, color="tab:cyan", label=f"in-batch InfoNCE, {2 * epochs:g} epochs (equal steps at B/2)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("zero-shot R@1, mean of both directions (%)")
    ax.set_title(f"Frozen small-preset features, 15,000 demo pairs, {epochs:g} epochs, mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"\n{'loss':<28}{'batch':>6}{'epochs':>7}{'R@1 mean±std':>16}{'i2t':>7}{'t2i':>7}{'shape':>7}{'colour':>7}{'temp':>7}")
    for r in sorted(rows, key=lambda r: (r["loss"], r["epochs"], r["batch"])):
        print(f"{r['loss']:<28}{r['batch']:>6}{r['epochs']:>7g}{r['r1_mean']:>9.2f}±{r['r1_std']:<6.2f}"
              f"{r['i2t_r1_mean']:>7.1f}{r['t2i_r1_mean']:>7.1f}{r.get('probe_shape_mean', float('nan')):>7.1f}"
              f"{r.get('probe_colour_mean', float('nan')):>7.1f}{r['temp_mean']:>7.3f}")
    for check in checks:
        detail = (f": {check['decomposable']:.2f} vs needed {check['needed']:.2f}" if "needed" in check else
                  f": {check['collapsed'] or 'none'} (variants at chance: {check['variants_at_chance'] or 'none'})")
        print(("HOLDS    " if check["holds"] else "DOES NOT HOLD ") + check["claim"] + detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/batch_size"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--cache", type=Path, default=None, help="feature cache (default: next to the data)")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel, 1 thread each")
    parser.add_argument("--quick", action="store_true", help="2 seeds x 2 epochs over a subset of the cells (< 10 min)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-summarise the runs of an earlier batch_size.json instead of training")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        earlier = read_earlier_runs(args.from_json)
        write_outputs(args.out, earlier["runs"], earlier["epochs"], earlier["seeds"], earlier["quick"],
                      earlier["seconds"], earlier["cache"])
        return 0
    if args.quick:
        args.epochs, args.seeds = 2.0, 2
    from experiments.common import ensure_demo_data
    from experiments.frozen_features import cache_features, default_cache_path

    ensure_demo_data(args.data)
    cache = cache_features(args.data, args.cache or default_cache_path(args.data))
    cells = plan(args.epochs, args.quick)
    start = time.perf_counter()
    jobs = [(str(cache), loss, batch, epochs, seed) for loss, batch, epochs in cells for seed in range(args.seeds)]
    jobs.sort(key=lambda job: job[3] / job[2] * (3 if job[1].startswith("decomposable") else 1), reverse=True)
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(run_cell, *zip(*jobs)):
            runs.append(run)
            print(f"{run['loss']:<28} batch {run['batch']:>4} epochs {run['epochs']:>4g} seed {run['seed']}: "
                  f"R@1 {run['r1']:6.2f} ({run['train_seconds']:.0f}s)", flush=True)
    write_outputs(args.out, runs, args.epochs, args.seeds, args.quick, time.perf_counter() - start, str(cache))
    return 0


def read_earlier_runs(path: Path) -> dict[str, Any]:
    """A ``batch_size.json`` written by this command; SystemExit naming the file and what is wrong otherwise."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--from-json {path}: cannot read it as JSON ({err}); pass the batch_size.json of a run") from err
    missing = [key for key in ("runs", "epochs", "seeds", "quick", "seconds", "cache") if key not in earlier]
    if missing:
        raise SystemExit(f"--from-json {path}: missing {missing}; pass a batch_size.json (summary.json has no runs)")
    return earlier


def write_outputs(out: Path, runs: list[dict[str, Any]], epochs: float, seeds: int, quick: bool, seconds: float,
                  cache: str) -> None:
    """``summary.json``, ``batch_size.json`` (with every run), the figure and the printed table."""
    rows = summarize(runs)
    checks = verdicts(rows, epochs)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rows": rows, "verdicts": checks, "epochs": epochs, "seeds": seeds, "quick": quick,
               "seconds": seconds, "cache": cache}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "batch_size.json").write_text(json.dumps({"runs": runs, **summary}, indent=1) + "\n")
    plot(rows, epochs, out / "batch_size.png")
    print_table(rows, checks)
    print(f"\n{len(runs)} runs in {seconds:.0f}s; written to {out}/summary.json and batch_size.png")


if __name__ == "__main__":
    raise SystemExit(main())
