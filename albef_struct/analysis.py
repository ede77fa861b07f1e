"""``albef-struct analyze``: latent geometry, linear probes and a 2-D picture of a checkpoint's embeddings."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from albef_struct.data import ALBEFTokenizer, RetrievalEvalDataset, test_transform
from albef_struct.data.collate import RetrievalImageCollate, RetrievalTextCollate
from albef_struct.lit.checkpoints import load_model
from albef_struct.metrics.geometry import geometry_report, plot_embeddings
from albef_struct.metrics.probe import probe_report
from albef_struct.metrics.report import format_table, write_json
from albef_struct.models import ALBEF


@dataclass
class SplitEmbeddings:
    """Normalised ITC embeddings of one split: one per image, one per caption."""

    images: list[str]  # image path of each row of image_feats (as written in the JSON)
    image_feats: torch.Tensor  # [N, E]
    text_feats: torch.Tensor  # [M, E]
    txt2img: torch.Tensor  # [M]

    def caption_mean(self) -> torch.Tensor:
        """Per image, the normalised mean of its captions' features ``[N, E]``."""
        sums = torch.zeros_like(self.image_feats).index_add_(0, self.txt2img, self.text_feats)
        return F.normalize(sums, dim=-1)


@torch.no_grad()
def embed_split(
    model: ALBEF,
    annotation: str | Path,
    image_root: str | Path | None,
    tokenizer: ALBEFTokenizer,
    batch_size: int = 64,
    max_images: int | None = None,
) -> SplitEmbeddings:
    """Encode every image and caption of a ``{image, caption: [...]}`` JSON file."""
    dataset = RetrievalEvalDataset(str(annotation), image_root, test_transform(model.config.vision.img_size))
    n_images = len(dataset) if max_images is None else min(max_images, len(dataset))
    image_feats = [
        model.encode_image(batch["image"]).feat
        for batch in DataLoader(torch.utils.data.Subset(dataset, range(n_images)), batch_size, collate_fn=RetrievalImageCollate())
    ]
    texts = dataset.text_dataset()
    keep = [j for j in range(len(texts)) if dataset.txt2img[j] < n_images]
    text_feats = [
        model.encode_text(batch["input_ids"], batch["attention_mask"]).feat
        for batch in DataLoader(torch.utils.data.Subset(texts, keep), batch_size, collate_fn=RetrievalTextCollate(tokenizer))
    ]
    return SplitEmbeddings(
        images=[rec["image"] for rec in dataset.records[:n_images]],
        image_feats=torch.cat(image_feats),
        text_feats=torch.cat(text_feats),
        txt2img=torch.tensor([dataset.txt2img[j] for j in keep]),
    )


def attribute_labels(path: str | Path, images: Sequence[str]) -> dict[str, torch.Tensor]:
    """Integer labels per image for every scalar attribute in an ``attributes_*.json`` file."""
    records = {rec["image"]: rec for rec in json.loads(Path(path).read_text())}
    missing = [image for image in images if image not in records]
    if missing:
        raise ValueError(f"{path} has no attributes for {len(missing)} image(s), e.g. {missing[0]!r}")
    keys = [k for k, v in records[images[0]].items() if k != "image" and isinstance(v, (str, int))]
    labels = {}
    for key in keys:
        values = [records[image][key] for image in images]
        vocabulary = {v: i for i, v in enumerate(sorted(set(map(str, values))))}
        labels[key] = torch.tensor([vocabulary[str(v)] for v in values])
    return labels


def probe_features(split: SplitEmbeddings) -> dict[str, torch.Tensor]:
    """The feature sets probed: image-only, text-only (mean of captions) and both concatenated."""
    text = split.caption_mean()
    return {"image": split.image_feats, "text": text, "concat": torch.cat([split.image_feats, text], dim=1)}


def analyze(
    model: ALBEF,
    data: str | Path,
    image_root: str | Path | None,
    out: str | Path,
    probe_train: str | Path | None = None,
    probe_train_attributes: str | Path | None = None,
    attributes: str | Path | None = None,
    max_images: int | None = None,
) -> dict:
    """Geometry of ``data``'s embeddings (+ linear probes on attributes when given); writes JSON + PNG."""
    out = Path(out)
    tokenizer = ALBEFTokenizer()
    split = embed_split(model, data, image_root, tokenizer, max_images=max_images)
    paired_images = split.image_feats[split.txt2img]
    result: dict = {"geometry": geometry_report(paired_images, split.text_feats), "data": str(data)}
    out.mkdir(parents=True, exist_ok=True)
    plot_embeddings(paired_images, split.text_feats, out / "embeddings.png")
    if probe_train and probe_train_attributes and attributes:
        train = embed_split(model, probe_train, image_root, tokenizer, max_images=max_images)
        train_labels = attribute_labels(probe_train_attributes, train.images)
        test_labels = attribute_labels(attributes, split.images)
        features = {k: (probe_features(train)[k], probe_features(split)[k]) for k in ("image", "text", "concat")}
        labels = {k: (train_labels[k], test_labels[k]) for k in test_labels if k in train_labels}
        result["probes"] = probe_report(features, labels)
    write_json(out / "analysis.json", result)
    return result


def print_analysis(result: dict) -> None:
    print(format_table(("measure", "value"), [(k, float(v)) for k, v in result["geometry"].items()], "{:.4f}"))
    if "probes" in result:
        attributes = sorted(next(iter(result["probes"].values())))
        rows = [(attr, *(result["probes"][fs][attr] for fs in ("image", "text", "concat"))) for attr in attributes]
        print()
        print(format_table(("attribute", "image probe", "text probe", "concat probe"), rows, "{:.3f}"))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="albef-struct analyze",
        description="Latent-geometry metrics (modality gap, alignment, uniformity, matched cosine), linear "
        "probes of image/text/concatenated embeddings on attributes, and a 2-D picture of the embeddings.",
    )
    parser.add_argument("--ckpt", required=True, help="a checkpoint of this project")
    parser.add_argument("--data", required=True, help="JSON list of {image, caption: [...]} (e.g. retrieval_test.json)")
    parser.add_argument("--image-root", default=None, help="folder the JSON's image paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (analysis.json, embeddings.png)")
    parser.add_argument("--attributes", help="attributes JSON of --data's images (demo: attributes_test.json)")
    parser.add_argument("--probe-train", help="JSON of {image, caption: [...]} to fit the probes on (demo: pretrain.json)")
    parser.add_argument("--probe-train-attributes", help="attributes JSON of --probe-train's images")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images of each file")
    args = parser.parse_args(argv)
    probe_args = (args.attributes, args.probe_train, args.probe_train_attributes)
    if any(probe_args) and not all(probe_args):
        parser.error("linear probes need --attributes, --probe-train and --probe-train-attributes together")
    result = analyze(
        load_model(args.ckpt),
        args.data,
        args.image_root,
        args.out,
        args.probe_train,
        args.probe_train_attributes,
        args.attributes,
        args.max_images,
    )
    print_analysis(result)
    print(f"\nwritten to {Path(args.out) / 'analysis.json'} and {Path(args.out) / 'embeddings.png'}")
    return 0
