"""Each pretraining variant against the plain path of its own precision (issue 24's speed target).

The ``plain`` path computes what the original ALBEF code computes, as it computes it (eager
attention, separate ITM fusion calls, the vocabulary projection at every token), so
``plain`` / ``plain_bf16`` stand in for the original in fp32 / bf16 autocast. For every other
variant the table gives its speed-up and peak-memory ratio over that reference and, from the
variant's profile, the share of the step spent in matrix products (``aten::mm``, ``addmm``,
``bmm``). That share bounds what a faster implementation of the same arithmetic can reach: a
step ``target`` times faster than the reference leaves ``reference / target - matmul time``
for everything else, which the last column compares with what everything else takes now.
"""

from __future__ import annotations

from typing import Any

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
SPEED_TARGET = 1.5
MEMORY_TARGET = 0.8


def reference_variant(variant: str) -> str:
    """The plain path of the variant's precision."""
    return "plain_bf16" if "bf16" in variant else "plain"


def matmul_share(profile_top_ops: list[dict[str, Any]]) -> float:
    """Fraction of a profiled step's self CPU time in matrix products."""
    return sum(op["self_cpu_pct"] for op in profile_top_ops if op["op"] in MATMUL_OPS) / 100.0


def compare_to_plain(rows: list[dict[str, Any]], target: float = SPEED_TARGET) -> list[dict[str, Any]]:
    """One entry per timed pretraining row whose reference (same size, same precision) was timed too."""
    timed = [r for r in rows if r.get("workload") == "pretrain" and "median_step_s" in r and not r.get("group")]
    refs = {(r["size"], r["variant"]): r for r in timed}
    out = []
    for r in timed:
        ref = refs.get((r["size"], reference_variant(r["variant"])))
        if ref is None:
            continue
        entry: dict[str, Any] = {
            "size": r["size"], "variant": r["variant"], "reference": ref["variant"],
            "step_s": r["median_step_s"], "reference_step_s": ref["median_step_s"],
            "speedup": ref["median_step_s"] / r["median_step_s"],
            "peak_rss_mb": r["peak_rss_mb"], "memory_ratio": r["peak_rss_mb"] / ref["peak_rss_mb"],
        }
        if r.get("peak_heap_mb") and ref.get("peak_heap_mb"):
            entry.update(peak_heap_mb=r["peak_heap_mb"], heap_ratio=r["peak_heap_mb"] / ref["peak_heap_mb"])
        if r.get("profile_top_ops"):
            share = matmul_share(r["profile_top_ops"])
            matmul_s = share * r["median_step_s"]
            entry.update(matmul_share=share, matmul_s=matmul_s, other_s=r["median_step_s"] - matmul_s,
                         other_s_allowed_at_target=ref["median_step_s"] / target - matmul_s)
        entry["meets_target"] = entry["speedup"] >= target and entry["memory_ratio"] <= MEMORY_TARGET
        if "heap_ratio" in entry:
            entry["meets_target_by_heap"] = entry["speedup"] >= target and entry["heap_ratio"] <= MEMORY_TARGET
        out.append(entry)
    return out


def comparison_table(entries: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple]]:
    """Header and rows for ``format_table``."""
    header = ("size", "variant", "vs", "step s", "speedup", "peak RSS MB", "memory ratio", "peak heap MB", "heap ratio",
              "matmul %", "other s", f"other s allowed at {SPEED_TARGET}x")
    rows = []
    for e in entries:
        rows.append((
            e["size"], e["variant"], e["reference"], f"{e['step_s']:.2f}", f"{e['speedup']:.2f}x",
            f"{e['peak_rss_mb']:.0f}", f"{e['memory_ratio']:.2f}",
            f"{e['peak_heap_mb']:.0f}" if "peak_heap_mb" in e else "", f"{e['heap_ratio']:.2f}" if "heap_ratio" in e else "",
            f"{100 * e['matmul_share']:.1f}" if "matmul_share" in e else "",
            f"{e['other_s']:.2f}" if "other_s" in e else "",
            f"{e['other_s_allowed_at_target']:.2f}" if "other_s_allowed_at_target" in e else "",
        ))
    return header, rows
