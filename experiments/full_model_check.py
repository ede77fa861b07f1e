"""The batch-size finding confirmed on the full model: pretraining end to end, not frozen features.

    python -m experiments.full_model_check --out results/full_model_check [--epochs 10] [--seeds 1]

The frozen-feature protocol (experiments/batch_size.py) trains projection heads only.
Here the whole small preset (DINOv2 ViT-S/14 + MiniLM, 46M parameters) trains with the
contrastive loss alone (ITM and MLM off) on the first ``--subset`` demo pairs, for the
same number of **epochs** per run: the decomposable loss (defaults) at batch 8 against
in-batch InfoNCE at batch 8 and 16. Zero-shot ITC retrieval on the 300 test images.
Writes ``full_model_check.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from experiments.common import RunSpec, ensure_demo_data, train_and_test, write_results

CELLS = (("decomposable", 8), ("infonce", 8), ("infonce", 16))


def run(out: Path, data: Path, epochs: int, seeds: int, subset: int, image_res: int) -> dict:
    results: dict = {"epochs": epochs, "seeds": seeds, "subset": subset, "image_res": image_res, "runs": []}
    for loss, batch in CELLS:
        for seed in range(seeds):
            steps = epochs * (subset // batch)
            spec = RunSpec(name=f"{loss}_b{batch}_s{seed}", data_dir=str(data), steps=steps, batch_size=batch,
                           contrastive=loss, itm_weight=0.0, mlm_weight=0.0, seed=seed, num_workers=1,
                           preset="small", image_res=image_res, train_subset=subset, warmup_steps=min(20, steps),
                           k_test=1)
            metrics, _ = train_and_test(spec, out / "runs")
            r1 = (metrics["itc_txt_r1"] + metrics["itc_img_r1"]) / 2
            results["runs"].append({"loss": loss, "batch": batch, "seed": seed, "steps": steps, "r1": r1,
                                    "metrics": metrics})
            print(f"{loss:<14} batch {batch:>3} seed {seed}: R@1 {r1:6.2f} ({metrics['train_seconds']:.0f}s)", flush=True)
    results["rows"] = []
    for loss, batch in CELLS:
        values = [r["r1"] for r in results["runs"] if r["loss"] == loss and r["batch"] == batch]
        results["rows"].append({"loss": loss, "batch": batch, "r1_mean": statistics.fmean(values),
                                "r1_std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/full_model_check"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--subset", type=int, default=256, help="train on the first N pairs, so each recurs every epoch")
    parser.add_argument("--image-res", type=int, default=56)
    args = parser.parse_args(argv)
    ensure_demo_data(args.data)
    start = time.perf_counter()
    results = run(args.out, args.data, args.epochs, args.seeds, args.subset, args.image_res)
    results["seconds"] = time.perf_counter() - start
    path = write_results(args.out, "full_model_check", results)
    for row in results["rows"]:
        print(f"{row['loss']:<14} batch {row['batch']:>3}: R@1 {row['r1_mean']:.2f} ± {row['r1_std']:.2f} "
              f"({row['seeds']} seeds, {args.epochs} epochs of {args.subset} pairs)")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
