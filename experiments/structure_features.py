"""Frozen features and metrics for the latent-structure regularizer experiments.

Extends the frozen-feature protocol (:mod:`experiments.frozen_features`) to the
information-gap demo data (``albef_struct.data_prep.demo_data --info-gap``: a drawn-only *pattern*
and a caption-only *material* per object, besides the shared shape and colour):

* probe labels for shape, colour, pattern (image-private) and material (text-private);
* a second, train-transform view of every training image and, per caption, another
  caption of the same image, so a regularizer's "augmented" view can be a real second
  view instead of the EMA teacher;
* the text features of the demo SNLI-VE hypotheses and NLVR2 statements, so the
  projected embeddings can be scored on the two downstream tasks without fine-tuning
  an encoder (:func:`downstream_accuracy`: logistic regression on the embeddings and
  their products).

:func:`structure_metrics` is the ``evaluate`` callback of ``train_heads``: retrieval
comes from ``evaluate_heads``; this adds the text-side probes, the private-head probes,
the latent geometry and the downstream scores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from albef_struct.metrics.geometry import alignment, matched_cosine, modality_gap, uniformity
from albef_struct.metrics.probe import linear_probe_accuracy
from experiments.frozen_features import (
    ENCODE_BATCH,
    FrozenFeatures,
    ProjectionHeads,
    _encode_images,
    _encode_texts,
    _frozen_encoders,
    cache_features,
    demo_splits,
)

#: probe name -> attribute key in ``attributes_{split}.json``; which side may know it
STRUCTURE_ATTRIBUTES = {"shape": "first_shape", "colour": "first_colour",
                        "pattern": "first_pattern", "material": "first_material"}
IMAGE_PRIVATE, TEXT_PRIVATE = "pattern", "material"
VE_LABELS = ("entailment", "neutral", "contradiction")
EXTRAS_VERSION = 1


def structure_cache_paths(data_dir: Path, image_res: int = 98) -> tuple[Path, Path]:
    """The base frozen-feature cache and the extras cache of ``data_dir``."""
    data_dir = Path(data_dir)
    return (data_dir / f"frozen_features_structure_r{image_res}.pt",
            data_dir / f"frozen_features_structure_extras_r{image_res}.pt")


def load_structure_features(data_dir: Path, image_res: int = 98, max_tokens: int = 40,
                            ) -> tuple[FrozenFeatures, dict[str, Any]]:
    """Encode (once, cached beside the data) and return the features and the extras.

    The returned :class:`FrozenFeatures` carries ``train_image_aug`` and ``pair_sibling``;
    the extras dict holds ``text_probe_rows`` (per split, the text row of each image's first
    caption, which names every object's material) and ``downstream`` (per task and split:
    ``image_rows [n, k]``, ``text [n, D]``, ``label [n]``).
    """
    data_dir = Path(data_dir)
    base_path, extras_path = structure_cache_paths(data_dir, image_res)
    cache_features(data_dir, base_path, image_res, max_tokens, attributes=STRUCTURE_ATTRIBUTES)
    features = FrozenFeatures.load(base_path)
    key = {"version": EXTRAS_VERSION, "base": features.meta.get("manifest_sha256"), "image_res": image_res,
           "max_tokens": max_tokens}
    extras = torch.load(extras_path, map_location="cpu", weights_only=True) if extras_path.is_file() else None
    if extras is None or extras.get("key") != key:
        start = time.perf_counter()
        extras = {"key": key, **_encode_extras(data_dir, image_res, max_tokens)}
        tmp = extras_path.with_suffix(".tmp")
        torch.save(extras, tmp)
        tmp.replace(extras_path)
        print(f"structure extras: encoded in {time.perf_counter() - start:.0f}s -> {extras_path}", flush=True)
    features.train_image_aug = extras["train_image_aug"]
    features.pair_sibling = extras["pair_sibling"]
    return features, extras


def _encode_extras(data_dir: Path, image_res: int, max_tokens: int) -> dict[str, Any]:
    from albef_struct.data.text import pre_caption

    dm, train, test, train_rows = demo_splits(data_dir, image_res, max_tokens, train_transform=True)
    # pair rows in the order frozen_features enumerates them: record by record, caption by caption
    pairs_of_image: list[list[int]] = [[] for _ in train_rows]
    num_pairs = 0
    for rec, img in enumerate(train.image_idx):
        caption = train.records[rec]["caption"]
        for _ in [caption] if isinstance(caption, str) else caption:
            pairs_of_image[img].append(num_pairs)
            num_pairs += 1
    sibling = torch.empty(num_pairs, dtype=torch.long)
    for pairs in pairs_of_image:
        for i, pair in enumerate(pairs):
            sibling[pair] = pairs[(i + 1) % len(pairs)]
    model = _frozen_encoders(image_res)
    device = torch.device("cpu")
    augmented = _encode_images(model, lambda i: train.transformed(train.load_raw(train_rows[i]), train_rows[i], 1),
                               len(train_rows), device, ENCODE_BATCH)
    test_first = [test.img2txt[i][0] for i in range(len(test.records))]
    image_row = {_stem(train.records[r]["image"]): i for i, r in enumerate(train_rows)}
    image_row.update({_stem(r["image"]): i for i, r in enumerate(test.records)})
    tokenize = lambda texts: dm.tokenizer(texts, max_length=max_tokens, padding="longest", truncation=True)  # noqa: E731
    downstream: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for task, split_files in (("ve", {"train": "ve_train.json", "test": "ve_test.json"}),
                              ("nlvr", {"train": "nlvr_train.json", "test": "nlvr_test.json"})):
        downstream[task] = {}
        for split, name in split_files.items():
            records = json.loads((data_dir / name).read_text())
            images = [[r["image"]] if task == "ve" else list(r["images"]) for r in records]
            labels = [VE_LABELS.index(r["label"]) if task == "ve" else int(str(r["label"]) == "True") for r in records]
            downstream[task][split] = {
                "image_rows": torch.tensor([[image_row[_stem(i)] for i in row] for row in images], dtype=torch.long),
                "text": _encode_texts(model, tokenize, [pre_caption(r["sentence"], dm.max_words) for r in records],
                                      device, ENCODE_BATCH),
                "label": torch.tensor(labels, dtype=torch.long),
            }
    return {
        "train_image_aug": augmented,
        "pair_sibling": sibling,
        "text_probe_rows": {"train": torch.tensor([p[0] for p in pairs_of_image], dtype=torch.long),
                            "test": torch.tensor(test_first, dtype=torch.long)},
        "downstream": downstream,
    }


def _stem(path: str) -> str:
    """``images/train/train_000001.jpg`` and ``images/train/train_000001`` name one image."""
    return str(Path(path).with_suffix("")) if Path(path).suffix in (".jpg", ".jpeg", ".png") else path


# ------------------------------------------------------------------------------ metrics

@torch.no_grad()
def structure_metrics(heads: ProjectionHeads, data: FrozenFeatures, extras: dict[str, Any]) -> dict[str, float]:
    """Text-side and private probes, latent geometry and downstream scores of trained heads."""
    heads.eval()
    out: dict[str, float] = {}
    rows = extras["text_probe_rows"]
    train_text = heads.embed_text(data.train_text[rows["train"]])
    test_text_all = heads.embed_text(data.test_text)
    test_text = test_text_all[rows["test"]]
    for name in (TEXT_PRIVATE, "shape", "colour"):
        out[f"text_probe_{name}"] = linear_probe_accuracy(train_text, data.train_labels[name], test_text,
                                                          data.test_labels[name])
    test_image = heads.embed_image(data.test_image)
    paired_image = test_image[data.test_txt2img]
    out.update(modality_gap=modality_gap(paired_image, test_text_all),
               alignment=alignment(paired_image, test_text_all),
               uniformity=(uniformity(test_image) + uniformity(test_text_all)) / 2,
               matched_cosine=matched_cosine(paired_image, test_text_all))
    if heads.image_private_head is not None:
        train_image = heads.embed_image(data.train_image)
        image_p, text_p = heads.private(data.train_image, data.train_text[rows["train"]])
        test_image_p, test_text_p = heads.private(data.test_image, data.test_text[rows["test"]])
        out["private_probe_pattern"] = linear_probe_accuracy(image_p, data.train_labels[IMAGE_PRIVATE], test_image_p,
                                                             data.test_labels[IMAGE_PRIVATE])
        out["private_probe_material"] = linear_probe_accuracy(text_p, data.train_labels[TEXT_PRIVATE], test_text_p,
                                                              data.test_labels[TEXT_PRIVATE])
        out["concat_probe_pattern"] = linear_probe_accuracy(
            torch.cat([train_image, image_p], 1), data.train_labels[IMAGE_PRIVATE],
            torch.cat([test_image, test_image_p], 1), data.test_labels[IMAGE_PRIVATE])
        out["concat_probe_material"] = linear_probe_accuracy(
            torch.cat([train_text, text_p], 1), data.train_labels[TEXT_PRIVATE],
            torch.cat([test_text, test_text_p], 1), data.test_labels[TEXT_PRIVATE])
    out.update(downstream_accuracy(heads, data, extras["downstream"]))
    return out


def pair_features(heads: ProjectionHeads, data: FrozenFeatures, split: str, task: dict[str, torch.Tensor],
                  ) -> torch.Tensor:
    """``[z_V1..z_Vk, z_T, z_V1*z_T, ..]``: the embeddings of a task example and their products."""
    images = data.train_image if split == "train" else data.test_image
    text = heads.embed_text(task["text"].to(images.device))
    views = [heads.embed_image(images[task["image_rows"][:, k].to(images.device)])
             for k in range(task["image_rows"].shape[1])]
    return torch.cat([*views, text, *(v * text for v in views)], dim=1)


@torch.no_grad()
def downstream_accuracy(heads: ProjectionHeads, data: FrozenFeatures,
                        downstream: dict[str, dict[str, dict[str, torch.Tensor]]]) -> dict[str, float]:
    """SNLI-VE (3-way, and entailment vs contradiction) and NLVR2 accuracy of a linear classifier.

    The classifier is multinomial logistic regression on :func:`pair_features`, fit on the
    train split and scored on the test split: what the two projected embeddings hold about
    the task, with no encoder fine-tuned.
    """
    out = {}
    for task, splits in downstream.items():
        train_x, test_x = (pair_features(heads, data, s, splits[s]) for s in ("train", "test"))
        train_y, test_y = splits["train"]["label"], splits["test"]["label"]
        out[f"{task}_acc"] = linear_probe_accuracy(train_x, train_y, test_x, test_y)
        if task == "ve":
            neutral = VE_LABELS.index("neutral")
            keep_train, keep_test = train_y != neutral, test_y != neutral
            out["ve_entail_vs_contra"] = linear_probe_accuracy(train_x[keep_train], train_y[keep_train],
                                                               test_x[keep_test], test_y[keep_test])
    return out
