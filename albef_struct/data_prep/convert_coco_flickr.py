"""Convert Karpathy's COCO / Flickr30k split files to ALBEF's retrieval JSON files.

    python -m albef_struct.data_prep.convert_coco_flickr --karpathy dataset_coco.json --dataset coco --out data/coco
    python -m albef_struct.data_prep.convert_coco_flickr --karpathy dataset_flickr30k.json --dataset flickr30k --out data/flickr

Input: ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}], "imgid",
"cocoid"?}, ...]}``. Written under ``--out`` (``<name>`` defaults to the dataset):

- ``<name>_train.json``: ``{"image", "caption", "image_id"}``, one per caption; COCO's
  ``restval`` images are included (``--no-restval`` leaves them out);
- ``<name>_val.json``, ``<name>_test.json``: ``{"image", "caption": [...]}``, one per image.

``image`` is relative to the image root: ``<filepath>/<filename>`` for COCO,
``flickr30k-images/<filename>`` for Flickr30k, ``<--image-dir>/<filename>`` if given.
``image_id`` is ``cocoid`` when present, else ``imgid``. Images without captions are
skipped and counted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from albef_struct.data_prep._io import (  # noqa: F401  (re-exported for the other converters' callers)
    ConversionError,
    _show,
    field,
    iter_jsonl,
    load_json,
    print_counts,
    top_level_list,
    where_error,
    write_json_list,
)

__all__ = ["ConversionError", "convert_karpathy"]

PathLike = str | os.PathLike

# ---------------------------------------------------------------------------
# Karpathy splits

DATASETS = ("coco", "flickr30k")
DEFAULT_IMAGE_DIR = {"coco": None, "flickr30k": "flickr30k-images"}  # None: the record's "filepath"
KARPATHY_SPLITS = ("train", "restval", "val", "test")
KARPATHY_WHAT = "a Karpathy split file (dataset_coco.json / dataset_flickr30k.json)"


def _image_path(path: Path, where: str, rec: dict, image_dir: str | None) -> str:
    filename = field(path, where, rec, "filename", str, "the image file name")
    if image_dir is None:
        if "filepath" not in rec:
            raise where_error(path, where, "filepath", "missing, and no image folder given",
                              "Pass --image-dir (the folder holding the images, relative to the image root)")
        folder = field(path, where, rec, "filepath", str, "the image folder, e.g. 'val2014'")
    else:
        folder = image_dir
    return f"{folder.rstrip('/')}/{filename}" if folder else filename


def convert_karpathy(
    karpathy_json: PathLike,
    out_dir: PathLike,
    *,
    dataset: str = "coco",
    name: str | None = None,
    image_dir: str | None = None,
    include_restval: bool = True,
) -> dict[str, int]:
    """Write ``<name>_{train,val,test}.json`` from a Karpathy split file; returns the counts.

    ``image_dir`` (relative to the image root) replaces the dataset's default folder.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    path = Path(karpathy_json)
    name = name or dataset
    folder = image_dir if image_dir is not None else DEFAULT_IMAGE_DIR[dataset]
    images = top_level_list(path, load_json(path, KARPATHY_WHAT), "images", KARPATHY_WHAT)

    train: list[dict] = []
    evals: dict[str, list[dict]] = {"val": [], "test": []}
    counts = {f"{s}_{k}": 0 for s in ("train", "val", "test") for k in ("images", "captions")}
    counts |= {"restval_images_in_train": 0, "skipped_restval_images": 0, "skipped_images_without_captions": 0}
    for i, rec in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(rec, dict):
            raise where_error(path, where, None, f"found {_show(rec)}; expected an image object")
        split = field(path, where, rec, "split", str, "one of " + ", ".join(KARPATHY_SPLITS))
        if split not in KARPATHY_SPLITS:
            raise where_error(path, where, "split",
                              f"unknown split {split!r}; expected one of {', '.join(KARPATHY_SPLITS)}")
        image = _image_path(path, where, rec, folder)
        id_key = "cocoid" if "cocoid" in rec else "imgid"
        image_id = field(path, where, rec, id_key, int, "an integer image id")
        sentences = field(path, where, rec, "sentences", list, "a list of {'raw': caption} objects")
        captions = []
        for j, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise where_error(path, f"{where}.sentences[{j}]", None,
                                  f"found {_show(sent)}; expected {{'raw': caption}}")
            captions.append(field(path, f"{where}.sentences[{j}]", sent, "raw", str, "the caption text").strip())
        if not captions:
            counts["skipped_images_without_captions"] += 1
            continue
        if split == "restval" and not include_restval:
            counts["skipped_restval_images"] += 1
            continue
        if split in ("train", "restval"):
            train.extend({"image": image, "caption": c, "image_id": image_id} for c in captions)
            counts["train_images"] += 1
            counts["train_captions"] += len(captions)
            counts["restval_images_in_train"] += int(split == "restval")
        else:
            evals[split].append({"image": image, "caption": captions})
            counts[f"{split}_images"] += 1
            counts[f"{split}_captions"] += len(captions)

    out = Path(out_dir)
    write_json_list(out / f"{name}_train.json", train)
    for split, records in evals.items():
        write_json_list(out / f"{name}_{split}.json", records)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--karpathy", required=True, help="dataset_coco.json or dataset_flickr30k.json")
    parser.add_argument("--dataset", choices=DATASETS, default="coco")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--name", help="output file prefix (default: the dataset)")
    parser.add_argument("--image-dir", help="image folder relative to the image root (default: COCO: each "
                        "record's filepath; Flickr30k: flickr30k-images)")
    parser.add_argument("--no-restval", action="store_true", help="leave COCO's restval images out of train")
    args = parser.parse_args(argv)
    try:
        counts = convert_karpathy(args.karpathy, args.out, dataset=args.dataset, name=args.name,
                                  image_dir=args.image_dir, include_restval=not args.no_restval)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_counts(f"{args.karpathy} -> {args.out}/{args.name or args.dataset}_{{train,val,test}}.json", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
