"""Tiny on-disk ALBEF datasets for the data-package tests (images are a few pixels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def make_image(path: Path, color: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (24, 20),
               fmt: str = "JPEG") -> Path:
    """A solid-colour image at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def make_asymmetric_image(size: int = 32) -> Image.Image:
    """Left half black, right half white."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, size // 2 :] = 255
    return Image.fromarray(arr)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def make_images(root: Path, n: int, prefix: str = "img") -> list[str]:
    """``n`` distinct solid-colour JPEGs under ``root``; returns their paths relative to root."""
    names = []
    for i in range(n):
        name = f"{prefix}{i}.jpg"
        make_image(root / name, COLORS[i % len(COLORS)])
        names.append(name)
    return names


def pretrain_files(tmp: Path, n_images: int = 4) -> dict[str, Any]:
    """A pretraining JSON (list captions on even images), plus a retrieval-eval JSON."""
    root = tmp / "images"
    names = make_images(root, n_images)
    train = [
        {"image": name, "caption": [f"Caption A of image {i}.", f"caption B of image {i}", f"caption C {i}"]
         if i % 2 == 0 else f"the only caption of image {i}"}
        for i, name in enumerate(names)
    ]
    evals = [{"image": name, "caption": [f"eval caption {i} one", f"eval caption {i} two"]} for i, name in enumerate(names)]
    return {
        "root": str(root),
        "train": write_json(tmp / "ann" / "pretrain.json", train),
        "eval": write_json(tmp / "ann" / "eval.json", evals),
        "names": names,
    }


def retrieval_train_file(tmp: Path, n_images: int = 3, captions_per_image: int = 2) -> dict[str, Any]:
    root = tmp / "images"
    names = make_images(root, n_images)
    recs = [{"image": name, "caption": f"a picture number {i} variant {k}", "image_id": f"id-{i}"}
            for k in range(captions_per_image) for i, name in enumerate(names)]
    return {"root": str(root), "train": write_json(tmp / "ann" / "re_train.json", recs), "names": names}


def vqa_files(tmp: Path) -> dict[str, Any]:
    root, vg = tmp / "coco", tmp / "vg"
    coco_names = make_images(root, 3)
    vg_names = make_images(vg, 2, prefix="vg")
    train = [
        {"dataset": "vqa", "image": coco_names[0], "question": "What colour is it?", "answer": ["red"] * 7 + ["dark red"] * 3},
        {"image": coco_names[1], "question": "Is there a shape?", "answer": ["yes"] * 10},
        {"dataset": "vg", "image": vg_names[0], "question": "How many circles?", "answer": "two"},
        {"dataset": "vg", "image": vg_names[1], "question": "What is left of the square?", "answer": "a small blue circle"},
    ]
    test = [
        {"image": coco_names[2], "question": "What shape?", "question_id": 7, "answer": ["circle"] * 9 + ["a circle"]},
        {"image": coco_names[0], "question": "What colour?", "question_id": 8, "answer": ["red"] * 10},
        {"image": coco_names[1], "question": "Any shape?", "question_id": 9, "answer": ["yes"] * 10},
    ]
    return {
        "root": str(root), "vg_root": str(vg),
        "train": write_json(tmp / "ann" / "vqa_train.json", train),
        "test": write_json(tmp / "ann" / "vqa_test.json", test),
        "answers": write_json(tmp / "ann" / "answer_list.json", ["red", "dark red", "yes", "no", "two", "circle"]),
    }


def nlvr_file(tmp: Path, n: int = 4) -> dict[str, Any]:
    root = tmp / "nlvr"
    names = make_images(root, n + 1)
    recs = [{"images": [names[i], names[i + 1]], "sentence": f"The left image has {i} circles.",
             "label": "True" if i % 2 == 0 else "False"} for i in range(n)]
    return {"root": str(root), "file": write_json(tmp / "ann" / "nlvr.json", recs)}


def ve_file(tmp: Path) -> dict[str, Any]:
    root = tmp / "flickr"
    make_images(root, 3, prefix="f")
    labels = ["entailment", "neutral", "contradiction"]
    recs = [{"image": f"f{i}", "sentence": f"There is a shape number {i}.", "label": labels[i]} for i in range(3)]
    return {"root": str(root), "file": write_json(tmp / "ann" / "ve.json", recs)}
