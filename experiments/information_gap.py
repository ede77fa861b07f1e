"""Information gap: does exact alignment lose modality-private information, and do the regularizers keep it?

    python -m experiments.information_gap --out results/information_gap [--steps 80] [--quick]

The demo data in information-gap mode draws an image-private attribute (a pattern:
solid/striped/dotted, never mentioned in text) and mentions a text-private one (a
material: wooden/metal/glass, never drawn); shape, colour, size and position are
shared. The pretrained small preset (DINOv2 ViT-S/14 at 98 px + MiniLM,
configs/model/small.yaml) is trained with in-batch ITC (ITM and MLM off: the claim is
about what alignment does to the contrastive embeddings) without a regularizer, with
each of the three, and with all three; "augmented" features are the momentum encoder's
(the default). For every run: linear-probe accuracy of
the image-only, text-only and concatenated ITC embeddings on each attribute (probes
fit on train-split embeddings, scored on the test split), the latent geometry, and
zero-shot retrieval. Writes ``information_gap.json`` and ``information_gap.png``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from albef_struct.analysis import analyze  # noqa: E402
from experiments.common import RunSpec, ensure_demo_data, train_and_test, write_results  # noqa: E402

REGULARIZERS: dict[str, list[dict]] = {
    "none": [],
    "feature_separation": [{"name": "feature_separation"}],
    "brownian_bridge": [{"name": "brownian_bridge", "args": {"t": 0.25}}],
    "geometric_consistency": [{"name": "geometric_consistency"}],
    "all_three": [{"name": "feature_separation"}, {"name": "brownian_bridge"}, {"name": "geometric_consistency"}],
}
ATTRIBUTE_KINDS = {
    "image-private": ["first_pattern"],
    "text-private": ["first_material"],
    "shared": ["first_shape", "first_colour", "first_size", "first_position"],
}


def run(out: Path, data: Path, steps: int, max_images: int | None, names: list[str], num_workers: int = 1,
        preset: str = "small", image_res: int = 98) -> dict:
    results: dict = {"steps": steps, "preset": preset, "image_res": image_res, "runs": {}}
    for name in names:
        spec = RunSpec(name=name, data_dir=str(data), steps=steps, preset=preset, image_res=image_res,
                       structure=REGULARIZERS[name], contrastive="infonce", itm_weight=0.0, mlm_weight=0.0,
                       warmup_steps=min(10, steps), k_test=1, num_workers=num_workers)
        metrics, module = train_and_test(spec, out / "runs")
        analysis = analyze(
            module.model.eval(), data / "retrieval_test.json", data, out / "runs" / name,
            probe_train=data / "pretrain.json", probe_train_attributes=data / "attributes_train.json",
            attributes=data / "attributes_test.json", max_images=max_images,
        )
        kinds = {
            kind: {fs: sum(analysis["probes"][fs][a] for a in attrs) / len(attrs) for fs in ("image", "text", "concat")}
            for kind, attrs in ATTRIBUTE_KINDS.items()
        }
        results["runs"][name] = {"spec": asdict(spec), "retrieval": metrics, "geometry": analysis["geometry"],
                                 "probes": analysis["probes"], "probe_by_kind": kinds}
        print(f"{name:<22} image-private(image) {kinds['image-private']['image']:.3f}  "
              f"text-private(text) {kinds['text-private']['text']:.3f}  shared(concat) {kinds['shared']['concat']:.3f}  "
              f"gap {analysis['geometry']['modality_gap']:.3f}", flush=True)
    results["conclusion"] = conclude(results["runs"])
    return results


def conclude(runs: dict) -> str:
    """What the probes say about private information with vs without the regularizers."""
    base = runs["none"]["probe_by_kind"]
    lines = []
    for name, run_ in runs.items():
        if name == "none":
            continue
        kinds = run_["probe_by_kind"]
        d_img = kinds["image-private"]["image"] - base["image-private"]["image"]
        d_txt = kinds["text-private"]["text"] - base["text-private"]["text"]
        lines.append(f"{name}: image-private {d_img:+.3f}, text-private {d_txt:+.3f} vs no regularizer")
    return "; ".join(lines)


def plot(results: dict, path: Path) -> None:
    names = list(results["runs"])  # "none" first
    panels = [("image-private", "image"), ("text-private", "text"), ("shared", "concat")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, (kind, features) in zip(axes, panels):
        values = [results["runs"][n]["probe_by_kind"][kind][features] for n in names]
        ax.bar(range(len(names)), values, color=["tab:gray"] + ["tab:red"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_title(f"{kind} attributes, {features} probe")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("linear-probe accuracy (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/information_gap"))
    parser.add_argument("--data", type=Path, default=Path("data/demo_infogap"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--image-res", type=int, default=98)
    parser.add_argument("--preset", choices=("small", "tiny"), default="small")
    parser.add_argument("--quick", action="store_true", help="tiny preset, no regularizer vs all three, 2 steps, tiny data")
    args = parser.parse_args(argv)
    max_images, names, workers = None, list(REGULARIZERS), 1
    if args.quick:
        args.steps, max_images, names, workers, args.preset, args.image_res = 2, 16, ["none", "all_three"], 0, "tiny", 64
        ensure_demo_data(args.data, info_gap=True, n_train=32, n_val=16, n_test=16)
    else:
        ensure_demo_data(args.data, info_gap=True)
    start = time.perf_counter()
    results = run(args.out, args.data, args.steps, max_images, names, workers, args.preset, args.image_res)
    results["seconds"] = time.perf_counter() - start
    plot(results, args.out / "information_gap.png")
    path = write_results(args.out, "information_gap", results)
    print(f"\n{results['conclusion']}\nwritten to {path} and {args.out / 'information_gap.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
