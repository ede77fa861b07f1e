"""What ``benchmarks.run`` measures, in priority order (rows past the time budget are skipped)."""

from __future__ import annotations

from typing import Any

from benchmarks.against_plain import reference_variant

Row = dict[str, Any]

# Rough wall-clock cost of a row (seconds, incl. the ~4 s process start), as measured with one
# thread on the shared 2-core machine (a cold inductor cache makes compile rows slower);
# the runner skips a row whose estimate no longer fits the remaining budget.
COST = {"tiny": 15, "small": 30, "base": 60, "compile_tiny": 150, "compile_small": 400}


def step_row(workload: str, size: str, variant: str = "fast", **extra: Any) -> Row:
    steps = {"tiny": (2, 3), "small": (1, 3), "base": (1, 2)}[size]
    row: Row = {"kind": "step", "workload": workload, "size": size, "variant": variant, "warmup": steps[0], "steps": steps[1]}
    row["flops"] = variant in ("fast", "plain") or workload != "pretrain"
    row["cost"] = COST[f"compile_{size}"] if "compile" in variant else COST[size]
    row.update(extra)
    return row


def rerank_row(size: str, n_images: int, k_test: int, **extra: Any) -> Row:
    return {"kind": "rerank", "size": size, "n_images": n_images, "k_test": k_test, "texts_per_image": 1,
            "batch_size": 256, "cost": 8 + 3 * k_test * n_images // 1000, **extra}


def memory_row(contrastive: str, batch: int, size: str = "tiny") -> Row:
    """Contrastive-only step (ITM/MLM off); the decomposable loss needs no queue, so it gets none."""
    queue = 65536 if contrastive == "infonce_queue" else 1
    return step_row("pretrain", size, "fast", contrastive=contrastive, objective="contrastive", batch=batch,
                    queue_size=queue, warmup=1, steps=2, flops=False, group="memory")


def ab_row(size: str, variants: list[str], rounds: int = 3, cost: int | None = None, flops: bool = False) -> Row:
    """Variants stepped in turn in one process; the first is the reference of the speedups."""
    per_step = {"tiny": 3, "small": 8, "base": 40}[size]
    estimate = 10 + per_step * len(variants) * (rounds + 1)
    return {"kind": "ab", "workload": "pretrain", "size": size, "variants": variants, "rounds": rounds, "warmup": 1,
            "flops": flops, "cost": cost or estimate}


TINY_AB = ["plain", "fast", "fast_bf16", "fast_eager", "fast_ckpt", "fast_fused_adamw", "plain_bf16"]
SMALL_AB = ["plain", "fast", "fast_bf16", "fast_eager", "fast_ckpt"]


AGAINST_PLAIN = ["plain", "fast", "fast_torch_dropout", "fast_fused_adamw", "fast_recompute_gelu", "fast_fused_adamw_recompute_gelu",
                 "fast_fused_adamw_recompute_gelu_ckpt_fusion", "fast_fused_adamw_recompute_gelu_ckpt_vision", "fast_ckpt",
                 "plain_bf16", "fast_bf16", "fast_bf16_eager", "fast_bf16_eager_fused", "fast_bf16_eager_fused_torch_dropout",
                 "fast_bf16_eager_fused_recompute_gelu",
                 "fast_bf16_eager_fused_recompute_gelu_ckpt_fusion", "fast_bf16_ckpt"]


def against_plain_plan(size: str = "small", warmup: int = 2, steps: int = 8, heap_steps: int = 2,
                       variants: list[str] | None = None) -> list[Row]:
    """Issue 24's comparison: every variant in its own process and profiled (the profile runs after
    the timed steps and the memory readings), the plain paths being the references. Eight timed steps:
    with three, two runs of the same row on this shared 2-core machine differed by up to 20 %. After
    the timing, ``heap_steps`` more steps under a heap sampler (``measure.peak_heap_mb``). ``variants``
    keeps those (and the plain path of each one's precision), in the plan's order."""
    cost = COST[size] + 3 * (warmup + steps + heap_steps)
    chosen = AGAINST_PLAIN
    if variants:
        wanted = set(variants) | {reference_variant(v) for v in variants}
        chosen = [v for v in AGAINST_PLAIN if v in wanted]
    return [step_row("pretrain", size, v, profile=True, warmup=warmup, steps=steps, heap_steps=heap_steps, cost=cost)
            for v in chosen]


def full_plan(compile_small: bool = False) -> list[Row]:
    rows = [
        ab_row("small", SMALL_AB, rounds=2, flops=True, cost=100),
        step_row("pretrain", "small", "fast", profile=True),
        step_row("pretrain", "small", "plain"),
        ab_row("tiny", TINY_AB, flops=True),
        *(step_row("pretrain", "tiny", v) for v in ("plain", "fast")),
        *(step_row(task, "tiny") for task in ("retrieval", "ve", "nlvr", "vqa")),
        rerank_row("tiny", 1000, 4),
        rerank_row("tiny", 5000, 4),
        *(memory_row(loss, b) for loss in ("infonce_queue", "decomposable") for b in (8, 32, 128)),
        ab_row("tiny", ["fast", "fast_compile"], cost=COST["compile_tiny"]),
        step_row("pretrain", "base", "fast"),
        *(step_row("pretrain", size, v) for size in ("small", "tiny") for v in ("fast_ckpt", "fast_bf16")),
        *(step_row(task, "small") for task in ("retrieval", "ve", "nlvr", "vqa")),
        step_row("pretrain", "base", "fast_bf16"),
        ab_row("tiny", ["fast_bf16", "fast_bf16_compile"], cost=COST["compile_tiny"]),
        step_row("retrieval", "base"),
        step_row("ve", "base"),
    ]
    if compile_small:
        rows.insert(4, ab_row("small", ["fast", "fast_compile"], cost=COST["compile_small"]))
    return rows


def quick_plan() -> list[Row]:
    """Tiny configuration only; the profile is of the tiny step."""
    return [
        ab_row("tiny", ["plain", "fast", "fast_bf16"], rounds=2, flops=True),
        step_row("pretrain", "tiny", "fast", warmup=1, steps=2, profile=True),
        *(step_row(task, "tiny", warmup=1, steps=1) for task in ("retrieval", "ve")),
        rerank_row("tiny", 1000, 4),
        *(memory_row(loss, 16) for loss in ("infonce_queue", "decomposable")),
    ]
