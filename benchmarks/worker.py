"""One benchmark row in a fresh process: ``python -m benchmarks.worker '<json spec>'``.

The last line of stdout is a JSON object with the row's measurements, so the
runner can start one process per configuration and peaks never leak between rows.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "


def run_step_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Time a training step; peak RSS, FLOPs per step and optionally a profile."""
    import torch

    from benchmarks import measure
    from benchmarks.sizes import SIZES
    from benchmarks.workloads import VARIANTS, parameter_count, pretrain_workload, task_workload, with_batch

    size = SIZES[spec["size"]]
    if spec.get("batch"):
        size = with_batch(size, spec["batch"])
    variant = VARIANTS[spec.get("variant", "fast")]
    torch.manual_seed(0)
    rss_start = measure.current_rss_mb()
    if spec["workload"] == "pretrain":
        work = pretrain_workload(
            size, variant, contrastive=spec.get("contrastive", "infonce_queue"), objective=spec.get("objective", "full"),
            queue_size=spec.get("queue_size", 65536), device=spec.get("device", "cpu"),
        )
    else:
        work = task_workload(spec["workload"], size, variant)
    rss_built = measure.current_rss_mb()
    cuda = torch.cuda.is_available() and spec.get("device") == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warmup = measure.time_steps(work.step, spec.get("warmup", 2), sync)
    times = measure.time_steps(work.step, spec.get("steps", 3), sync)
    out: dict[str, Any] = {
        **spec,
        "variant_flags": variant.describe(),
        "batch": work.batch_size,
        "note": size.note,
        "img_size": size.vision.img_size,
        "text_len": size.text_len,
        "params": parameter_count(work.module),
        "info": work.info,
        "warmup_s": warmup,
        "step_s": times,
        "median_step_s": measure.median(times),
        "samples_per_s": work.batch_size / measure.median(times),
        "rss_start_mb": rss_start,
        "rss_model_mb": rss_built,
        "peak_rss_mb": measure.peak_rss_mb(),
    }
    out["peak_step_extra_mb"] = out["peak_rss_mb"] - rss_built
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif spec.get("heap_steps"):  # after the RSS reading and the timing: the sampler slows the steps
        out["peak_heap_mb"] = measure.peak_heap_mb(work.step, spec["heap_steps"])
    if spec.get("flops", True):
        if variant.compile:  # count on the eager graph: the same math, and FlopCounterMode sees no compiled kernels
            for name in ("visual_encoder", "text_encoder", "fusion_encoder"):
                for owner in (work.module.model, getattr(getattr(work.module, "teacher", None), "model", None)):
                    if owner is not None and hasattr(owner, name):
                        getattr(owner, name)._compiled_call_impl = None
        out["flops_per_step"] = measure.count_flops(work.step)
        out["achieved_flops"] = out["flops_per_step"] / out["median_step_s"]
    if spec.get("profile"):
        out["profile_top_ops"] = measure.top_ops(work.step, spec.get("profile_ops", 15))
    return out


def run_rerank_row(spec: dict[str, Any]) -> dict[str, Any]:
    """ITM re-ranking throughput on a synthetic encoded gallery."""
    import torch
    import torch.nn.functional as F

    from albef_struct.lit.retrieval_eval import EncodedGallery, rerank
    from albef_struct.models import ALBEF
    from benchmarks import measure
    from benchmarks.sizes import SIZES, text_batch
    from benchmarks.workloads import autocast

    size = SIZES[spec["size"]]
    device = spec.get("device", "cpu")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ALBEF(size.arch(attention=spec.get("attention", "sdpa"))).eval().to(device)
    n_img = spec["n_images"]
    n_txt = n_img * spec.get("texts_per_image", 1)
    tokens = 1 + (size.vision.img_size // size.vision.patch_size) ** 2
    texts = text_batch(n_txt, size.text_len, g)
    gallery = EncodedGallery(
        image_embeds=torch.randn(n_img, tokens, size.vision.width, generator=g).to(device),
        image_feats=F.normalize(torch.randn(n_img, 256, generator=g), dim=-1).to(device),
        text_embeds=torch.randn(n_txt, size.text_len, size.text.hidden, generator=g).to(device),
        text_masks=texts["attention_mask"].to(device),
        text_feats=F.normalize(torch.randn(n_txt, 256, generator=g), dim=-1).to(device),
        txt2img=(torch.arange(n_txt) // spec.get("texts_per_image", 1)).to(device),
    )
    k = spec["k_test"]
    start = time.perf_counter()
    sims = gallery.image_feats @ gallery.text_feats.T
    sims.topk(k, dim=1)
    sims.T.topk(k, dim=1)
    sync()
    itc_s = time.perf_counter() - start
    precision = spec.get("precision", "fp32")

    def rerank_all():
        with autocast(precision):
            return rerank(model, gallery, k, spec.get("batch_size", 128))

    times = measure.time_steps(rerank_all, spec.get("repeats", 1), sync)
    pairs = (n_img + n_txt) * k
    return {
        **spec,
        "n_texts": n_txt,
        "image_tokens": tokens,
        "pairs": pairs,
        "rerank_s": times,
        "median_rerank_s": measure.median(times),
        "pairs_per_s": pairs / measure.median(times),
        "itc_topk_s": itc_s,
        "peak_rss_mb": measure.peak_rss_mb(),
    }


def run_ab_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Pretraining variants built side by side and stepped in turn (A, B, C, A, B, C, ...).

    Interleaving cancels slow drifts in the machine's load, so the per-round
    time ratios are a steadier speedup estimate than separate processes give.
    The first variant is the reference. Peak memory is not per-variant here.
    """
    import statistics

    import torch

    from benchmarks import measure
    from benchmarks.sizes import SIZES
    from benchmarks.workloads import VARIANTS, pretrain_workload, reference_loss

    size = SIZES[spec["size"]]
    names = spec["variants"]
    works = {}
    for name in names:
        torch.manual_seed(0)
        works[name] = pretrain_workload(size, VARIANTS[name])
    losses = {name: reference_loss(works[name]) for name in names}  # same weights and draws: must agree
    warmup = {name: measure.time_steps(works[name].step, spec.get("warmup", 1)) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(spec.get("rounds", 3)):
        for name in names:
            times[name] += measure.time_steps(works[name].step, 1)
    counted: dict[str, int] = {}
    if spec.get("flops"):  # model FLOPs depend only on the plain/fast math, not on precision or compile
        for name in names:
            math = "plain" if name.startswith("plain") else "fast"
            if math not in counted and not VARIANTS[name].compile:
                counted[math] = measure.count_flops(works[name].step)
    reference = names[0]
    variants = {}
    for name in names:
        ratios = [r / t for r, t in zip(times[reference], times[name])]
        variants[name] = {
            "flags": VARIANTS[name].describe(),
            "warmup_s": warmup[name],
            "step_s": times[name],
            "median_step_s": measure.median(times[name]),
            "samples_per_s": size.batch / measure.median(times[name]),
            "speedup_vs_reference": statistics.median(ratios),
            "speedup_per_round": ratios,
            "reference_loss": losses[name],
        }
        if losses[name] is not None and losses[reference] is not None:
            variants[name]["loss_rel_diff_vs_reference"] = abs(losses[name] - losses[reference]) / abs(losses[reference])
        flops = counted.get("plain" if name.startswith("plain") else "fast")
        if flops is not None:
            variants[name]["flops_per_step"] = flops
    return {**spec, "batch": size.batch, "reference": reference, "results": variants}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    threads = spec.get("threads")
    if threads:
        import torch

        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        runner = {"rerank": run_rerank_row, "ab": run_ab_row}.get(spec.get("kind", "step"), run_step_row)
        result = runner(spec)
    except Exception as exc:  # reported as a row, so one failing configuration does not stop the run
        result = {**spec, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
