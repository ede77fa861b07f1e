"""Convert ALBEF's RefCOCO+ grounding files into this project's records.

    python -m albef_struct.data_prep.refcoco --albef-data data/ --refer-root refer/data --dets data/dets.json \\
        --out data/refcoco+

ALBEF ships ``refcoco+_train.json``, ``refcoco+_val.json`` and ``refcoco+_test.json`` (lists of
``{"image", "text", "ref_id"}``), the detector's box proposals per COCO image (``dets.json``:
``{"<image_id>": [[x, y, w, h, ...], ...]}``) and ``cocos.json`` (ground-truth COCO boxes per
image, not needed here); the referred box and the split (val, testA, testB) of each expression
come from the RefCOCO+ annotations of the REFER toolkit (``<refer-root>/refcoco+/refs(unc).p``
and ``instances.json``), as in ALBEF's evaluation. Writes ``grounding_train.json``
(retrieval-train pairs ``{"image", "caption", "image_id"}``: the image file is the id, as ALBEF
trains), and ``grounding_val.json`` / ``grounding_test.json`` (``{"image", "text", "ref_id",
"split", "box", "proposals"}``). ``refs(unc).p`` is a pickle: read only files you trust.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from albef_struct.data.bad_records import BadRecordError

SPLITS = ("train", "val", "test")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadRecordError(source=str(path), row=None, field=None, reason="invalid JSON",
                             found=f"{err.msg} at line {err.lineno}", expected=f"{what} as JSON") from None


def read_refer(refer_root: Path, dataset: str = "refcoco+", split_by: str = "unc") -> tuple[dict, dict]:
    """``ref_id -> ref`` (its ``image_id``, ``ann_id``, ``split``) and ``ann_id -> [x, y, w, h]`` from REFER's files."""
    folder = refer_root / dataset
    refs_path = folder / f"refs({split_by}).p"
    if not refs_path.is_file():
        raise FileNotFoundError(f"{refs_path}: no such file; --refer-root is the REFER toolkit's data folder, "
                                f"holding {dataset}/refs({split_by}).p and {dataset}/instances.json")
    with open(refs_path, "rb") as fh:
        refs = pickle.load(fh, encoding="latin1")  # written by Python 2
    instances = _read_json(folder / "instances.json", "COCO instances of the RefCOCO+ images")
    boxes = {ann["id"]: [float(v) for v in ann["bbox"]] for ann in instances.get("annotations", [])}
    return {ref["ref_id"]: ref for ref in refs}, boxes


def _records(path: Path) -> list[dict]:
    data = _read_json(path, "ALBEF's grounding records")
    if not isinstance(data, list):
        raise BadRecordError(source=str(path), row=None, field=None, reason="not a JSON list", found=type(data).__name__,
                             expected="a list of {image, text, ref_id}")
    for row, rec in enumerate(data):
        missing = [k for k in ("image", "text", "ref_id") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise BadRecordError(source=str(path), row=row, field=missing[0], reason="missing field",
                                 found=f"no {missing[0]!r}", expected="ALBEF's {image, text, ref_id} record")
    return data


def eval_records(path: Path, refs: dict, boxes: dict, dets: dict) -> list[dict]:
    """ALBEF's val/test records with their referred box, split and the image's proposals."""
    out = []
    for row, rec in enumerate(_records(path)):
        ref = refs.get(rec["ref_id"])
        if ref is None:
            raise BadRecordError(source=str(path), row=row, field="ref_id", reason="unknown ref_id", found=repr(rec["ref_id"]),
                                 expected="a ref_id of the REFER annotations",
                                 hint="Pass the --refer-root of the same RefCOCO+ release (refs(unc).p).")
        proposals = dets.get(str(ref["image_id"]))
        if not proposals:
            raise BadRecordError(source=str(path), row=row, field="ref_id", reason="no proposals",
                                 found=f"image {ref['image_id']} has no entry in dets.json",
                                 expected="the detector's boxes for every evaluated image")
        if ref["ann_id"] not in boxes:
            raise BadRecordError(source=str(path), row=row, field="ref_id", reason="unknown annotation",
                                 found=f"ann_id {ref['ann_id']} is not in instances.json", expected="the referred box")
        out.append({"image": rec["image"], "text": rec["text"], "ref_id": rec["ref_id"], "split": ref["split"],
                    "box": boxes[ref["ann_id"]], "proposals": [[float(v) for v in det[:4]] for det in proposals]})
    return out


def convert(albef_data: Path, refer_root: Path, dets_path: Path, out: Path) -> dict[str, int]:
    refs, boxes = read_refer(refer_root)
    dets = _read_json(dets_path, "the detector's proposals per image id")
    out.mkdir(parents=True, exist_ok=True)
    train = [{"image": r["image"], "caption": r["text"], "image_id": r["image"]}
             for r in _records(albef_data / "refcoco+_train.json")]
    (out / "grounding_train.json").write_text(json.dumps(train))
    counts = {"train": len(train)}
    for split in ("val", "test"):
        records = eval_records(albef_data / f"refcoco+_{split}.json", refs, boxes, dets)
        (out / f"grounding_{split}.json").write_text(json.dumps(records))
        counts[split] = len(records)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--albef-data", required=True, type=Path, help="folder of refcoco+_{train,val,test}.json")
    parser.add_argument("--refer-root", required=True, type=Path, help="REFER's data folder (refcoco+/refs(unc).p)")
    parser.add_argument("--dets", required=True, type=Path, help="ALBEF's dets.json")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    counts = convert(args.albef_data, args.refer_root, args.dets, args.out)
    print(f"{args.out}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
