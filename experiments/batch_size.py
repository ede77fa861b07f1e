"""Batch size vs zero-shot retrieval for in-batch InfoNCE, ALBEF's queued ITC and the decomposable loss.

    python -m experiments.batch_size --out results/batch_size [--steps 400] [--seeds 1] [--quick]

The claim tested (the NeurIPS 2022 paper, via the seed article): at a fixed number of
steps, the decomposable loss at a small batch matches InfoNCE at a batch 4-8x larger.
Every run pretrains the small experiment architecture on the demo data with the
contrastive loss alone (ITM and MLM off, so the comparison is about the contrastive
objective), then measures zero-shot retrieval on the held-out test split by ITC
similarity (mean of image->text and text->image R@1). Writes ``batch_size.json`` and
``batch_size.png``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.common import RunSpec, ensure_demo_data, train_and_test, write_results  # noqa: E402

LOSSES = {
    "infonce": ("in-batch InfoNCE (no queue)", "tab:blue"),
    "infonce_queue": ("ALBEF ITC (queue 256 + distillation)", "tab:green"),
    "decomposable": ("decomposable (defaults: γ = 0.1, previous u)", "tab:red"),
    "decomposable_sogclr": ("decomposable, SogCLR's order (γ = 0.9, updated u)", "tab:orange"),
}
DEFAULT_LOSSES = ("infonce", "infonce_queue", "decomposable")
#: run name -> (contrastive loss, its arguments)
CONTRASTIVE = {
    "infonce": ("infonce", {}),
    "infonce_queue": ("infonce_queue", {}),
    "decomposable": ("decomposable", {}),
    "decomposable_sogclr": ("decomposable", {"gamma": 0.9, "u_from": "updated"}),
}
BATCH_SIZES = (8, 16, 32, 64, 128)


def run(out: Path, data: Path, steps: int, seeds: int, batch_sizes: tuple[int, ...], num_workers: int = 1,
        preset: str = "small", image_res: int = 56, train_subset: int | None = 256,
        losses: tuple[str, ...] = DEFAULT_LOSSES) -> dict:
    results: dict = {"steps": steps, "seeds": seeds, "batch_sizes": list(batch_sizes), "preset": preset,
                     "image_res": image_res, "train_subset": train_subset, "losses": list(losses), "runs": []}
    for loss in losses:
        contrastive, contrastive_args = CONTRASTIVE[loss]
        for batch in batch_sizes:
            for seed in range(seeds):
                spec = RunSpec(
                    name=f"{loss}_b{batch}_s{seed}", data_dir=str(data), steps=steps, batch_size=batch,
                    contrastive=contrastive, contrastive_args=contrastive_args, itm_weight=0.0, mlm_weight=0.0, seed=seed, num_workers=num_workers,
                    preset=preset, image_res=image_res, train_subset=train_subset, warmup_steps=min(10, steps),
                    k_test=1,  # ITM is off, so its re-ranking is not measured; ITC recall is
                )
                metrics, _ = train_and_test(spec, out / "runs")
                r1 = (metrics["itc_txt_r1"] + metrics["itc_img_r1"]) / 2
                results["runs"].append({"loss": loss, "batch_size": batch, "seed": seed, "r1": r1,
                                        "metrics": metrics, "spec": asdict(spec)})
                print(f"{loss:<14} batch {batch:>4} seed {seed}: R@1 {r1:6.2f}%  ({metrics['train_seconds']:.0f}s)", flush=True)
    results["summary"] = summarize(results)
    results["conclusion"] = conclude(results["summary"], batch_sizes)
    return results


def summarize(results: dict) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, list[float]]] = {}
    for run_ in results["runs"]:
        table.setdefault(run_["loss"], {}).setdefault(run_["batch_size"], []).append(run_["r1"])
    return {loss: {b: sum(v) / len(v) for b, v in by_batch.items()} for loss, by_batch in table.items()}


def conclude(summary: dict[str, dict[int, float]], batch_sizes: tuple[int, ...]) -> str:
    """Whether each decomposable variant at batch b reaches in-batch InfoNCE at 4b or 8b, from the numbers."""
    reference = summary.get("infonce", {})
    lines = []
    for variant in (name for name in summary if name.startswith("decomposable")):
        for b in batch_sizes:
            for factor in (4, 8):
                big = b * factor
                if big in reference and b in summary[variant]:
                    dec, ref = summary[variant][b], reference[big]
                    verdict = "matches or beats" if dec >= ref else "falls short of"
                    lines.append(f"{variant}@{b} ({dec:.1f}%) {verdict} infonce@{big} ({ref:.1f}%)")
    return "; ".join(lines) or "in-batch InfoNCE 4x or 8x larger was not run beside it, so the claim was not tested"


def plot(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss, by_batch in results["summary"].items():
        label, color = LOSSES[loss]
        xs = sorted(by_batch)
        ax.plot(xs, [by_batch[x] for x in xs], "o-", color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("zero-shot R@1, mean of both directions (%)")
    ax.set_title(f"Demo data ({results['train_subset']} pairs), {results['steps']} steps, contrastive loss only",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/batch_size"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=256, help="train on the first N pairs (0: all)")
    parser.add_argument("--image-res", type=int, default=56)
    parser.add_argument("--preset", choices=("small", "tiny"), default="small")
    parser.add_argument("--losses", nargs="+", choices=tuple(LOSSES), default=list(DEFAULT_LOSSES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument("--quick", action="store_true", help="tiny preset, batch 4 only, 2 steps, tiny data (a smoke test)")
    args = parser.parse_args(argv)
    batch_sizes, workers = tuple(args.batch_sizes), 1
    if args.quick:
        args.steps, batch_sizes, workers, args.preset, args.image_res, args.train_subset = 2, (4,), 0, "tiny", 64, 16
        ensure_demo_data(args.data, n_train=32, n_val=16, n_test=16)
    else:
        ensure_demo_data(args.data)
    start = time.perf_counter()
    results = run(args.out, args.data, args.steps, args.seeds, batch_sizes, workers,
                  args.preset, args.image_res, args.train_subset or None, tuple(args.losses))
    results["seconds"] = time.perf_counter() - start
    plot(results, args.out / "batch_size.png")
    path = write_results(args.out, "batch_size", results)
    print("\nR@1 (%) by batch size")
    print("loss            " + "".join(f"{b:>8}" for b in batch_sizes))
    for loss in args.losses:
        print(f"{loss:<16}" + "".join(f"{results['summary'][loss][b]:>8.2f}" for b in batch_sizes))
    print(f"\n{results['conclusion']}\nwritten to {path} and {args.out / 'batch_size.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
