"""Latent-structure regularizers trained end to end: each at its shipped default, several seeds.

    python -m experiments.regularizers_full_model --out results/regularizers_full_model   # 4 x 3 runs
    python -m experiments.regularizers_full_model --out DIR --from-json DIR/runs.jsonl    # table + plot again
    python -m experiments.regularizers_full_model --out DIR --quick                       # tiny smoke run

The frozen-feature sweep (:mod:`experiments.regularizers`) cannot show a regularizer
keeping private information: with frozen encoders a linear probe recovers what the
frozen feature holds whatever the loss asks of the heads. Here the encoders train. The
protocol is :mod:`experiments.information_gap`'s (the small preset at 98 px on the
information-gap demo data, in-batch ITC only, 80 steps of 32, the momentum teacher as the
"augmented" view), with each regularizer exactly as ``configs/structure/<name>.yaml``
ships it, and no regularizer as the baseline, per seed.

Per run: ITC R@1 (mean of both directions), linear probes of the image-private pattern on
the image embedding and the text-private material on the text embedding, the shared
attributes on both, the latent geometry, and SNLI-VE / NLVR2 accuracy of a logistic
regression on the two ITC embeddings and their products (the frozen-feature protocol's
downstream score, on encoders that trained; no task fine-tuning). Each finished run is
appended to ``runs.jsonl`` (an interrupted run resumes); ``summary.json``,
``summary.md`` and ``regularizers_full_model.png`` are rewritten at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import torch
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from albef_struct.analysis import SplitEmbeddings, attribute_labels, embed_split  # noqa: E402
from albef_struct.data import ALBEFTokenizer  # noqa: E402
from albef_struct.data.text import pre_caption  # noqa: E402
from albef_struct.metrics.geometry import geometry_report  # noqa: E402
from albef_struct.metrics.probe import linear_probe_accuracy  # noqa: E402
from albef_struct.models import ALBEF  # noqa: E402
from experiments.common import RunSpec, ensure_demo_data, train_and_test  # noqa: E402
from experiments.structure_features import VE_LABELS, _stem  # noqa: E402

STRUCTURE_CONFIGS = Path(__file__).resolve().parents[1] / "configs/structure"
REGULARIZERS = ("feature_separation", "brownian_bridge", "geometric_consistency")
#: metric -> probe attribute, for the probes kept per run (feature set: attribute key)
PROBES = {"probe_pattern": ("image", "first_pattern"), "text_probe_material": ("text", "first_material"),
          "image_probe_shape": ("image", "first_shape"), "text_probe_shape": ("text", "first_shape"),
          "image_probe_colour": ("image", "first_colour"), "text_probe_colour": ("text", "first_colour")}
#: metrics a regularizer may improve (issue 19's second claim)
CLAIM_METRICS = ("probe_pattern", "text_probe_material", "ve_acc", "ve_entail_vs_contra", "nlvr_acc")
TABLE_METRICS = ("r1", "probe_pattern", "text_probe_material", "ve_acc", "ve_entail_vs_contra", "nlvr_acc",
                 "matched_cosine", "modality_gap")


def shipped_structure(name: str) -> list[dict[str, Any]]:
    """The ``structure`` list of ``configs/structure/<name>.yaml`` (its weights and arguments)."""
    if name == "none":
        return []
    path = STRUCTURE_CONFIGS / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["model"]["init_args"]["structure"]


@torch.no_grad()
def encode_texts(model: ALBEF, tokenizer: ALBEFTokenizer, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Normalised ITC text embeddings ``[N, E]``."""
    feats = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], max_length=40, padding="longest", truncation=True)
        feats.append(model.encode_text(batch["input_ids"], batch["attention_mask"]).feat)
    return torch.cat(feats)


def downstream_scores(model: ALBEF, tokenizer: ALBEFTokenizer, data: Path,
                      splits: dict[str, SplitEmbeddings]) -> dict[str, float]:
    """SNLI-VE (3-way and entailment vs contradiction) and NLVR2 accuracy of a linear classifier on
    ``[image embeddings, text embedding, their products]``, fit on train, scored on test."""
    image_row = {_stem(name): (split, i) for split, emb in splits.items() for i, name in enumerate(emb.images)}
    out: dict[str, float] = {}
    for task in ("ve", "nlvr"):
        xs, ys = {}, {}
        for split in ("train", "test"):
            records = json.loads((data / f"{task}_{split}.json").read_text())
            images = [[r["image"]] if task == "ve" else list(r["images"]) for r in records]
            views = []
            for k in range(len(images[0])):
                rows = [image_row[_stem(row[k])] for row in images]
                views.append(torch.stack([splits[s].image_feats[i] for s, i in rows]))
            text = encode_texts(model, tokenizer, [pre_caption(r["sentence"], 40) for r in records])
            xs[split] = torch.cat([*views, text, *(v * text for v in views)], dim=1)
            ys[split] = torch.tensor([VE_LABELS.index(r["label"]) if task == "ve" else int(str(r["label"]) == "True")
                                      for r in records])
        out[f"{task}_acc"] = 100 * linear_probe_accuracy(xs["train"], ys["train"], xs["test"], ys["test"])
        if task == "ve":
            neutral = VE_LABELS.index("neutral")
            keep = {s: ys[s] != neutral for s in xs}
            out["ve_entail_vs_contra"] = 100 * linear_probe_accuracy(
                xs["train"][keep["train"]], ys["train"][keep["train"]], xs["test"][keep["test"]], ys["test"][keep["test"]])
    return out


def evaluate(model: ALBEF, data: Path, max_images: int | None = None) -> dict[str, float]:
    """Probes, geometry and downstream scores of a trained model's ITC embeddings (percent for accuracies)."""
    model = model.eval()
    tokenizer = ALBEFTokenizer()
    splits = {"train": embed_split(model, data / "pretrain.json", data, tokenizer, max_images=max_images),
              "test": embed_split(model, data / "retrieval_test.json", data, tokenizer, max_images=max_images)}
    labels = {"train": attribute_labels(data / "attributes_train.json", splits["train"].images),
              "test": attribute_labels(data / "attributes_test.json", splits["test"].images)}
    features = {s: {"image": e.image_feats, "text": e.caption_mean()} for s, e in splits.items()}
    out: dict[str, float] = {}
    for metric, (side, attribute) in PROBES.items():
        out[metric] = 100 * linear_probe_accuracy(features["train"][side], labels["train"][attribute],
                                                  features["test"][side], labels["test"][attribute])
    test = splits["test"]
    out.update(geometry_report(test.image_feats[test.txt2img], test.text_feats))
    out.update(downstream_scores(model, tokenizer, data, splits))
    return out


def run_one(name: str, seed: int, data: Path, out: Path, steps: int, preset: str, image_res: int,
            max_images: int | None, num_workers: int) -> dict[str, Any]:
    spec = RunSpec(name=f"{name}_seed{seed}", data_dir=str(data), steps=steps, preset=preset, image_res=image_res,
                   structure=shipped_structure(name), contrastive="infonce", itm_weight=0.0, mlm_weight=0.0,
                   warmup_steps=min(10, steps), k_test=1, seed=seed, num_workers=num_workers)
    start = time.perf_counter()
    retrieval, module = train_and_test(spec, out / "runs")
    result = {"r1": (retrieval["itc_txt_r1"] + retrieval["itc_img_r1"]) / 2,
              "r1_i2t": retrieval["itc_txt_r1"], "r1_t2i": retrieval["itc_img_r1"],
              **evaluate(module.model, data, max_images)}
    result["seconds"] = time.perf_counter() - start
    return {"name": name, "seed": seed, "structure": spec.structure, "steps": steps, "image_res": image_res,
            "result": result}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The finished runs of a ``runs.jsonl``; a missing or unreadable file is refused by name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such runs file; run the experiment first (without --from-json)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg}); delete the line to rerun that run") from err
    return rows


def run_grid(runs_file: Path, seeds: list[int], names: list[str], run: Callable[[str, int], dict[str, Any]],
             describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Every (seed, name) run not yet in ``runs_file``, each appended to it as it ends (an interrupted grid resumes)."""
    rows = read_rows(runs_file) if runs_file.is_file() else []
    done = {(r["name"], r["seed"]) for r in rows}
    for seed in seeds:
        for name in names:
            if (name, seed) in done:
                continue
            row = run(name, seed)
            with runs_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{name:<22} seed {seed}  {describe(row['result'])}", flush=True)
    return rows


def seed_table(rows: list[dict[str, Any]], metrics: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per run name: its seeds and the mean/std over them of each result metric (``metrics``: these only)."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(row["name"], {"seeds": [], "metrics": {}})
        entry["seeds"].append(row["seed"])
        for metric, value in row["result"].items():
            if metrics is None or metric in metrics:
                entry["metrics"].setdefault(metric, []).append(value)
    for entry in table.values():
        entry["metrics"] = {m: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                            for m, v in entry["metrics"].items()}
    return table


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std per regularizer and, against the baseline, issue 19's three claims."""
    table = seed_table(rows)
    return {"table": table, "claims": claims(table)}


def claims(table: dict[str, Any]) -> dict[str, Any]:
    base = table.get("none")
    if base is None or len(base["seeds"]) < 2:
        return {"undetermined": "the claims need the baseline ('none') at two seeds or more"}
    b = base["metrics"]
    out: dict[str, Any] = {}
    for name in REGULARIZERS:
        if name not in table:
            continue
        m = table[name]["metrics"]
        gains = {k: (m[k]["mean"] - b[k]["mean"]) / max(b[k]["std"], 1e-3) for k in CLAIM_METRICS}
        best = max(gains, key=gains.get)
        entry = {"r1_delta": m["r1"]["mean"] - b["r1"]["mean"], "r1_base_std": b["r1"]["std"],
                 "keeps_r1": m["r1"]["mean"] >= b["r1"]["mean"] - b["r1"]["std"],
                 "gains_in_std": gains, "largest_gain": best, "improves_2std": gains[best] >= 2.0}
        if name == "geometric_consistency":
            ratio = m["matched_cosine"]["mean"] / b["matched_cosine"]["mean"]
            entry.update(matched_cosine_ratio=ratio, keeps_matched_cosine=abs(ratio - 1.0) <= 0.2)
        out[name] = entry
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| regularizer (shipped) | seeds | " + " | ".join(TABLE_METRICS) + " |",
             "|---" * (len(TABLE_METRICS) + 2) + "|"]
    for name, entry in summary["table"].items():
        cells = []
        for metric in TABLE_METRICS:
            s = entry["metrics"][metric]
            digits = 3 if metric in ("matched_cosine", "modality_gap") else 1
            cells.append(f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    names = list(summary["table"])
    panels = ("r1", "probe_pattern", "text_probe_material", "ve_entail_vs_contra", "nlvr_acc", "matched_cosine")
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.6))
    for ax, metric in zip(axes, panels):
        stats = [summary["table"][n]["metrics"][metric] for n in names]
        ax.bar(range(len(names)), [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=3,
               color=["tab:gray" if n == "none" else "tab:red" for n in names])
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=6)
        ax.set_title(metric, fontsize=8)
    fig.suptitle("regularizers at their shipped weights, encoders trained (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finish(out: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plot(summary, out / "regularizers_full_model.png")
    print(markdown(summary))
    print(json.dumps(summary["claims"], indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/regularizers_full_model"))
    parser.add_argument("--data", type=Path, default=Path("data/demo_infogap"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--names", nargs="+", default=["none", *REGULARIZERS], choices=["none", *REGULARIZERS])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--image-res", type=int, default=98)
    parser.add_argument("--from-json", type=Path, help="summarise an earlier runs.jsonl instead of training")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 steps, 1 seed, tiny data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        finish(args.out, read_rows(args.from_json))
        return 0
    preset, max_images, workers = "small", None, 1
    if args.quick:
        preset, max_images, workers, args.steps, args.image_res, args.seeds = "tiny", None, 0, 2, 64, [0]
        ensure_demo_data(args.data, info_gap=True, n_train=32, n_val=16, n_test=16)
    else:
        ensure_demo_data(args.data, info_gap=True)
    rows = run_grid(
        args.out / "runs.jsonl", args.seeds, args.names,
        lambda name, seed: run_one(name, seed, args.data, args.out, args.steps, preset, args.image_res, max_images, workers),
        lambda r: (f"R@1 {r['r1']:.1f}  pattern {r['probe_pattern']:.1f}  material {r['text_probe_material']:.1f}  "
                   f"VE e-v-c {r['ve_entail_vs_contra']:.1f}  {r['seconds']:.0f} s"))
    finish(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
