"""Latent-structure regularizers on frozen features: weight sweep, term ablation, augmented view.

    python -m experiments.regularizers --out results/regularizers            # the full grid
    python -m experiments.regularizers --out results/regularizers --quick    # 2 epochs, 1 seed, 2 weights
    python -m experiments.regularizers --out results/regularizers --from-json results/regularizers/runs.jsonl

Protocol (:mod:`experiments.structure_features`): the small preset's frozen encoders on
the information-gap demo data; linear projection heads trained with in-batch InfoNCE
(batch 32) plus one regularizer at a weight, for ``--epochs`` epochs, per seed. Every run
records zero-shot retrieval R@1, the probes (pattern on the image embedding, material on
the text embedding; shape and colour on both), the latent geometry, the downstream
SNLI-VE/NLVR2 accuracy of a linear classifier on the embeddings, and the gradient norm
of InfoNCE and of each weighted regularizer term on the shared heads at steps 0 and 100.

Each finished run is appended to ``runs.jsonl`` at once, so an interrupted sweep resumes
where it stopped; ``summary.json`` (mean and std per configuration, and per claim
whether it holds) and ``regularizers.png`` (metric vs weight, error bars) are rewritten
at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from albef_struct.losses.contrastive import build_contrastive_loss  # noqa: E402
from albef_struct.structure import StructureLosses  # noqa: E402
from experiments.frozen_features import Regularization, train_heads  # noqa: E402
from experiments.structure_features import load_structure_features, structure_metrics  # noqa: E402

REGULARIZERS = ("feature_separation", "brownian_bridge", "geometric_consistency")
WEIGHTS = (0.01, 0.1, 1.0, 10.0)
#: the second-view comparison runs at the two middle weights only (CPU budget)
SECOND_VIEW_WEIGHTS = (0.1, 1.0)
GC_TERMS = ("cross_symmetry", "intra_match", "aug_match", "paired_match")
#: geometric consistency with cross_symmetry and aug_match off (the terms that widen the modality gap)
GC_ALIGNED_ARGS = {"cross_symmetry_weight": 0.0, "aug_match_weight": 0.0}
GC_ALIGNED_WEIGHTS = (0.01, 0.1, 1.0)
#: the metrics summarised (name -> higher is better)
METRICS = {"r1": True, "probe_pattern": True, "text_probe_material": True, "ve_acc": True,
           "ve_entail_vs_contra": True, "nlvr_acc": True, "matched_cosine": True, "modality_gap": False,
           "alignment": False, "uniformity": False, "private_probe_pattern": True, "private_probe_material": True,
           "concat_probe_pattern": True, "concat_probe_material": True}


def run_key(config: dict[str, Any]) -> str:
    """A stable name for one (configuration, seed)."""
    return json.dumps(config, sort_keys=True)


def grid(weights: tuple[float, ...], seeds: tuple[int, ...], ablate: bool, views: bool) -> list[dict[str, Any]]:
    """Every run of the experiment: baseline, each regularizer x weight, GC term ablation, the second view."""
    configs: list[dict[str, Any]] = [{"group": "baseline", "name": "none", "weight": 0.0, "view": "teacher"}]
    for name in REGULARIZERS:
        configs += [{"group": "sweep", "name": name, "weight": w, "view": "teacher"} for w in weights]
    if ablate:  # geometric consistency one term at a time, at weight 1
        configs += [{"group": "gc_terms", "name": "geometric_consistency", "weight": 1.0, "view": "teacher",
                     "args": {f"{t}_weight": float(t == term) for t in GC_TERMS}, "term": term} for term in GC_TERMS]
    if ablate:  # geometric consistency without the two terms the ablation finds pulling the modalities apart
        configs += [{"group": "gc_aligned", "name": "geometric_consistency", "weight": w, "view": "teacher",
                     "args": dict(GC_ALIGNED_ARGS)} for w in GC_ALIGNED_WEIGHTS]
    if views:  # the augmented view from a second image view and another caption, not the EMA teacher
        configs += [{"group": "second_view", "name": name, "weight": w, "view": "second_view"}
                    for name in ("brownian_bridge", "geometric_consistency") for w in weights
                    if w in SECOND_VIEW_WEIGHTS]
    return [{**c, "seed": s} for c in configs for s in seeds]


def run_one(config: dict[str, Any], features, extras, epochs: float, batch_size: int) -> dict[str, Any]:
    specs = [] if config["name"] == "none" else [{"name": config["name"], "weight": config["weight"],
                                                   "args": config.get("args", {})}]
    regularization = Regularization(StructureLosses(specs), view=config["view"]) if specs else None
    result = train_heads(features, build_contrastive_loss("infonce"), batch_size, epochs, config["seed"],
                         regularization=regularization, evaluate=lambda h, d: structure_metrics(h, d, extras))
    return {"config": config, "result": result}


def sweep(out: Path, configs: list[dict[str, Any]], data: Path, epochs: float, batch_size: int) -> list[dict]:
    """Run every configuration not yet in ``out/runs.jsonl``; return all rows."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    rows = read_rows(log) if log.is_file() else []
    done = {run_key(r["config"]) for r in rows}
    todo = [c for c in configs if run_key(c) not in done]
    if not todo:
        return rows
    features, extras = load_structure_features(data)
    for i, config in enumerate(todo, 1):
        start = time.perf_counter()
        row = run_one(config, features, extras, epochs, batch_size)
        row["config"] = config
        rows.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        r = row["result"]
        print(f"[{i}/{len(todo)}] {label(config):<46} seed {config['seed']}: R@1 {r['r1']:5.1f}  "
              f"pattern {r['probe_pattern']:.3f}  material {r['text_probe_material']:.3f}  VE {r['ve_acc']:.3f}  "
              f"NLVR {r['nlvr_acc']:.3f}  cos {r['matched_cosine']:.3f}  ({time.perf_counter() - start:.0f}s)",
              flush=True)
    return rows


def read_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON run record ({err.msg}); delete the line to rerun that run")
    return rows


def label(config: dict[str, Any]) -> str:
    if config["name"] == "none":
        return "none"
    extra = f" [{config['term']} only]" if "term" in config else ""
    if config.get("group") == "gc_aligned":
        extra = " [intra_match + paired_match]"
    view = " (second view)" if config["view"] == "second_view" else ""
    return f"{config['name']} w={config['weight']:g}{extra}{view}"


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean/std per configuration, the best weight per regularizer, and the claims of issue 19."""
    groups: dict[str, list[dict]] = {}
    configs: dict[str, dict] = {}
    for row in rows:
        config = {k: v for k, v in row["config"].items() if k != "seed"}
        groups.setdefault(label(config), []).append(row["result"])
        configs[label(config)] = config
    table = {}
    for name, results in groups.items():
        stats = {}
        for metric in METRICS:
            values = [r[metric] for r in results if metric in r]
            if values:
                stats[metric] = {"mean": statistics.fmean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
        grads = [r["grad_norms"] for r in results if "grad_norms" in r]
        if grads:
            stats["grad_share"] = gradient_shares(grads)
        table[name] = {"config": configs[name], "seeds": len(results), "metrics": stats}
    return {"table": table, "claims": claims(table)}


def gradient_shares(grads: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per recorded step, each regularizer term's gradient norm relative to InfoNCE's, averaged over seeds."""
    out: dict[str, dict[str, float]] = {}
    for step in grads[0]:
        ratios: dict[str, list[float]] = {}
        for g in grads:
            if step in g:
                for term, norm in g[step].items():
                    if term != "contrastive":
                        ratios.setdefault(term, []).append(norm / max(g[step]["contrastive"], 1e-12))
        out[step] = {term: statistics.fmean(v) for term, v in ratios.items()}
    return out


def best_weight(table: dict[str, Any], name: str, group: str = "sweep") -> str | None:
    """The configuration of ``name`` in ``group`` whose ITC R@1 is highest among those that
    keep R@1 within one baseline std, ranked by its best probe/downstream gain in baseline stds."""
    base = table.get("none")
    candidates = [k for k, v in table.items() if v["config"]["name"] == name and v["config"]["group"] == group]
    if base is None or not candidates:
        return None

    def score(key: str) -> tuple[bool, float]:
        m = table[key]["metrics"]
        ok = m["r1"]["mean"] >= base["metrics"]["r1"]["mean"] - base["metrics"]["r1"]["std"]
        if not ok:  # none keeps retrieval: the one that loses least
            return False, m["r1"]["mean"]
        return True, max(gain_in_std(m, base["metrics"], metric) for metric in CLAIM_METRICS)

    return max(candidates, key=score)


CLAIM_METRICS = ("probe_pattern", "text_probe_material", "ve_acc", "ve_entail_vs_contra", "nlvr_acc",
                 "concat_probe_pattern", "concat_probe_material")


def gain_in_std(m: dict, base: dict, metric: str) -> float:
    """(mean − baseline mean) / baseline std; −inf when either lacks the metric."""
    if metric not in m or metric not in base:
        return -math.inf
    return (m[metric]["mean"] - base[metric]["mean"]) / max(base[metric]["std"], 1e-3)


def claims(table: dict[str, Any]) -> dict[str, Any]:
    """Issue 19's three done-when claims, per regularizer at its best weight."""
    base = table.get("none")
    out: dict[str, Any] = {}
    if base is None:
        return out
    b = base["metrics"]
    for name, group in [(n, "sweep") for n in REGULARIZERS] + [("geometric_consistency", "gc_aligned")]:
        key = best_weight(table, name, group)
        if key is None:
            continue
        m = table[key]["metrics"]
        gains = {metric: gain_in_std(m, b, metric) for metric in CLAIM_METRICS if metric in m}
        best_metric = max(gains, key=gains.get)
        entry = {
            "best": key, "weight": table[key]["config"]["weight"],
            "r1_delta": m["r1"]["mean"] - b["r1"]["mean"], "r1_base_std": b["r1"]["std"],
            "keeps_r1": m["r1"]["mean"] >= b["r1"]["mean"] - b["r1"]["std"],
            "largest_gain": best_metric, "largest_gain_in_std": gains[best_metric],
            "improves_2std": gains[best_metric] >= 2.0,
        }
        if name == "geometric_consistency":
            ratio = m["matched_cosine"]["mean"] / b["matched_cosine"]["mean"]
            entry["matched_cosine_ratio"] = ratio
            entry["keeps_matched_cosine"] = abs(ratio - 1.0) <= 0.2
        out[name if group == "sweep" else f"{name} ({group})"] = entry
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    table = summary["table"]
    base = table.get("none")
    panels = [("r1", "ITC R@1 (%)"), ("probe_pattern", "pattern probe, image emb."),
              ("text_probe_material", "material probe, text emb."), ("ve_acc", "SNLI-VE (linear)"),
              ("nlvr_acc", "NLVR2 (linear)"), ("matched_cosine", "matched-pair cosine")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (metric, title) in zip(axes.flat, panels):
        for name, colour in zip(REGULARIZERS, ("tab:blue", "tab:orange", "tab:green")):
            for group, style in (("sweep", "-o"), ("second_view", "--s")):
                keys = sorted((k for k, v in table.items() if v["config"]["name"] == name
                               and v["config"]["group"] == group), key=lambda k: table[k]["config"]["weight"])
                keys = [k for k in keys if metric in table[k]["metrics"]]
                if not keys:
                    continue
                xs = [table[k]["config"]["weight"] for k in keys]
                ms = [table[k]["metrics"][metric] for k in keys]
                ax.errorbar(xs, [m["mean"] for m in ms], [m["std"] for m in ms], fmt=style, color=colour,
                            capsize=3, label=name + (" (2nd view)" if group == "second_view" else ""))
        if base is not None and metric in base["metrics"]:
            mean, std = base["metrics"][metric]["mean"], base["metrics"][metric]["std"]
            ax.axhline(mean, color="black", lw=1, label="no regularizer")
            ax.axhspan(mean - std, mean + std, color="gray", alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("regularizer weight")
        ax.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, Any]) -> str:
    """The README table: mean ± std per configuration."""
    cols = ("r1", "probe_pattern", "text_probe_material", "ve_acc", "ve_entail_vs_contra", "nlvr_acc",
            "matched_cosine", "modality_gap")
    lines = ["| configuration | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, entry in summary["table"].items():
        cells = []
        for metric in cols:
            m = entry["metrics"].get(metric)
            scale = 1.0 if metric in ("r1", "matched_cosine", "modality_gap") else 100.0
            cells.append("–" if m is None else f"{scale * m['mean']:.{3 if scale == 1.0 and metric != 'r1' else 1}f}"
                         f" ± {scale * m['std']:.{3 if scale == 1.0 and metric != 'r1' else 1}f}")
        lines.append(f"| {name} | {entry['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/regularizers"))
    parser.add_argument("--data", type=Path, default=Path("data/demo_infogap"))
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--no-ablation", action="store_true", help="skip the geometric-consistency term ablation")
    parser.add_argument("--no-second-view", action="store_true", help="skip the second-view runs")
    parser.add_argument("--quick", action="store_true", help="1 seed, weights 0.1 and 1, 0.5 epochs, no extras")
    parser.add_argument("--from-json", type=Path, help="only summarise an existing runs.jsonl")
    args = parser.parse_args(argv)
    if args.from_json:
        if not args.from_json.is_file():
            raise SystemExit(f"--from-json {args.from_json}: no such file; pass the runs.jsonl a sweep wrote")
        rows = read_rows(args.from_json)
    else:
        if args.quick:
            args.seeds, args.weights, args.epochs = [0], [0.1, 1.0], 0.5
            args.no_ablation = args.no_second_view = True
        from experiments.common import ensure_demo_data

        ensure_demo_data(args.data, info_gap=True)
        configs = grid(tuple(args.weights), tuple(args.seeds), not args.no_ablation, not args.no_second_view)
        rows = sweep(args.out, configs, args.data, args.epochs, args.batch_size)
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, args.out / "regularizers.png")
    print(markdown(summary))
    print(json.dumps(summary["claims"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
