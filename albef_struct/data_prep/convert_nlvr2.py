"""Convert an official NLVR2 JSON-lines file (train.json, dev.json, test1.json) to ALBEF's format.

    python -m albef_struct.data_prep.convert_nlvr2 --input nlvr2/data/dev.json --out data/nlvr/nlvr_dev.json

Input lines: ``{"identifier": "dev-850-0-0", "sentence", "label": "True"|"False",
"directory"?: 51, ...}``. Output: ``[{"images": [p0, p1], "sentence", "label"}]`` where
a pair's images are named after the identifier without its last ``-N`` (the sentence
number): ``dev-850-0-0`` -> ``dev-850-0-img0.png``, ``dev-850-0-img1.png``. They lie in
``<image dir>/`` (default: the identifier's split, ``train``/``dev``/``test1``) and, for
records with a ``directory`` field (train), in ``<image dir>/<directory>/``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from albef_struct.data_prep._io import field, iter_jsonl, print_counts, where_error, write_json_list

__all__ = ["convert_nlvr2", "nlvr2_image_names"]

PathLike = str | os.PathLike
LABELS = ("True", "False")
NLVR2_WHAT = "an NLVR2 JSON-lines file (one {'identifier', 'sentence', 'label'} object per line)"
_IDENTIFIER = re.compile(r"^(?P<pair>(?P<split>[^-]+)-.+)-\d+$")


def nlvr2_image_names(identifier: str) -> tuple[str, str, str]:
    """``(split, left image, right image)`` of an identifier ("dev-850-0-0" -> dev, dev-850-0-img0.png, ...)."""
    m = _IDENTIFIER.match(identifier)
    if m is None:
        raise ValueError(f"identifier {identifier!r} is not of the form <split>-<set>-<pair>-<sentence>")
    return m["split"], f"{m['pair']}-img0.png", f"{m['pair']}-img1.png"


def convert_nlvr2(
    jsonl: PathLike, out: PathLike, *, image_dir: str | None = None, use_directory: bool = True
) -> dict[str, int]:
    """Write ALBEF's NLVR2 file ``out`` from an official JSON-lines file; returns counts.

    ``image_dir`` (relative to the image root) replaces the default folder (the
    identifier's split); ``use_directory=False`` ignores the records' ``directory``.
    """
    path = Path(jsonl)
    records: list[dict] = []
    counts = {"pairs": 0, "label_True": 0, "label_False": 0}
    for lineno, rec in iter_jsonl(path, NLVR2_WHAT):
        where = f"line {lineno}"
        identifier = field(path, where, rec, "identifier", str, "an identifier like 'dev-850-0-0'")
        try:
            split, left, right = nlvr2_image_names(identifier)
        except ValueError as err:
            raise where_error(path, where, "identifier", str(err)) from None
        sentence = field(path, where, rec, "sentence", str, "the statement about the image pair")
        label = field(path, where, rec, "label", str, "'True' or 'False' (a string)")
        if label not in LABELS:
            raise where_error(path, where, "label", f"found {label!r}; expected 'True' or 'False' (a string)")
        folder = image_dir if image_dir is not None else split
        if use_directory and "directory" in rec:
            sub = field(path, where, rec, "directory", (int, str), "the image sub-folder number")
            folder = f"{folder}/{sub}" if folder else str(sub)
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        records.append({"images": [prefix + left, prefix + right], "sentence": sentence, "label": label})
        counts["pairs"] += 1
        counts[f"label_{label}"] += 1
    write_json_list(out, records)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="NLVR2 train.json / dev.json / test1.json (JSON lines)")
    parser.add_argument("--out", required=True, help="output JSON file, e.g. data/nlvr/nlvr_dev.json")
    parser.add_argument("--image-dir", help="image folder relative to the image root (default: the split name)")
    parser.add_argument("--no-directory", action="store_true", help="ignore the records' 'directory' sub-folders")
    args = parser.parse_args(argv)
    try:
        counts = convert_nlvr2(args.input, args.out, image_dir=args.image_dir, use_directory=not args.no_directory)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_counts(f"{args.input} -> {args.out}", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
