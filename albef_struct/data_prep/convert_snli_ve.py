"""Convert an SNLI-VE JSON-lines file (snli_ve_{train,dev,test}.jsonl) to ALBEF's VE format.

    python -m albef_struct.data_prep.convert_snli_ve --input snli_ve_dev.jsonl --out data/ve/ve_dev.json

Input lines: ``{"Flickr30K_ID": "3416050480", "sentence2": hypothesis, "gold_label":
"entailment"|"neutral"|"contradiction", ...}``. Output: ``[{"image": "3416050480",
"sentence", "label"}]``; the image is the Flickr30k id without extension (ALBEF's loader
appends ``.jpg``). Records with any other gold label (SNLI's "-": no annotator majority)
are skipped and counted per label.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from albef_struct.data_prep._io import field, iter_jsonl, print_counts, where_error, write_json_list

__all__ = ["convert_snli_ve"]

PathLike = str | os.PathLike
LABELS = ("entailment", "neutral", "contradiction")
SNLI_VE_WHAT = "an SNLI-VE JSON-lines file (one {'Flickr30K_ID', 'sentence2', 'gold_label'} object per line)"


def convert_snli_ve(jsonl: PathLike, out: PathLike) -> dict[str, int]:
    """Write ALBEF's VE file ``out`` from an SNLI-VE JSON-lines file; returns counts."""
    path = Path(jsonl)
    records: list[dict] = []
    kept: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for lineno, rec in iter_jsonl(path, SNLI_VE_WHAT):
        where = f"line {lineno}"
        image = field(path, where, rec, "Flickr30K_ID", (str, int), "the Flickr30k image id, e.g. '3416050480'")
        image = str(image).strip()
        if not image.isdigit():
            raise where_error(path, where, "Flickr30K_ID", f"found {image!r}; expected a numeric Flickr30k id "
                              "(without a file extension)")
        sentence = field(path, where, rec, "sentence2", str, "the hypothesis sentence")
        label = field(path, where, rec, "gold_label", str, "entailment, neutral or contradiction")
        if label not in LABELS:
            skipped[label] += 1
            continue
        records.append({"image": image, "sentence": sentence, "label": label})
        kept[label] += 1
    write_json_list(out, records)
    counts = {"records": len(records)} | {f"label_{lab}": kept[lab] for lab in LABELS}
    counts |= {f"skipped_gold_label_{lab}": n for lab, n in sorted(skipped.items())}
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="snli_ve_train.jsonl / _dev / _test")
    parser.add_argument("--out", required=True, help="output JSON file, e.g. data/ve/ve_dev.json")
    args = parser.parse_args(argv)
    try:
        counts = convert_snli_ve(args.input, args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_counts(f"{args.input} -> {args.out}", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
