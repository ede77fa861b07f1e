"""Convert the pip package ``easy_vqa`` (real 64x64 shape images with QA pairs) to ALBEF's
JSON formats.

    python -m albef_struct.data_prep.easy_vqa_convert --out data/easy_vqa [--limit N]

Written under ``<out>`` (the ``image_root``; JSON paths are relative to it):

- ``images/{train,test}/<id>.png``: the package's PNG files, copied byte for byte;
- ``vqa_train.json``, ``vqa_test.json``: ``{"dataset": "vqa", "image", "question",
  "answer", "question_id"}``.  easy-vqa has one answer per question; it is repeated
  ``--answers-per-question`` times (default 10), so ALBEF's answer weight is 1 and the VQA
  accuracy (min(#matching / 3, 1) over leave-one-out subsets) is 1 for the right answer
  and 0 otherwise, i.e. plain accuracy;
- ``answer_list.json``: the package's 13 answers;
- ``pretrain.json``, ``retrieval_train.json``, ``retrieval_test.json``: templated
  captions ("a red circle", ...) built from the shape and colour that the image's QA
  pairs reveal (each image has one shape; captions are necessarily shared by many images);
- ``manifest.json``: parameters and counts.

``--limit N`` keeps the first N image ids of each split (and their questions).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

CONVERTER_VERSION = 1
SPLITS = ("train", "test")
SPLIT_CODE = {"train": 1, "test": 2}
NEGATION = re.compile(r"\b(not|no)\b")


def _easy_vqa():
    """Import the ``easy_vqa`` package (a clear error if it is not installed)."""
    try:
        import easy_vqa
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("the 'easy-vqa' package is not installed (pip install easy-vqa)") from exc
    return easy_vqa


def load_split(split: str) -> tuple[list[tuple[str, str, int]], dict[int, str]]:
    """Questions ``(text, answer, image_id)`` and image paths ``{image_id: path}`` of a split."""
    ev = _easy_vqa()
    texts, answers, ids = ev.get_train_questions() if split == "train" else ev.get_test_questions()
    paths = ev.get_train_image_paths() if split == "train" else ev.get_test_image_paths()
    return list(zip(texts, answers, (int(i) for i in ids))), {int(k): v for k, v in paths.items()}


def vocabulary(answers: Sequence[str]) -> tuple[set[str], set[str]]:
    """Split the answer list into shape words and colour words."""
    shapes = {"circle", "rectangle", "triangle", "square"} & set(answers)
    colours = set(answers) - shapes - {"yes", "no"}
    return shapes, colours


def image_facts(questions: Sequence[tuple[str, str, int]], shapes: set[str],
                colours: set[str]) -> dict[int, dict[str, str]]:
    """Shape and colour of each image's (single) object, as revealed by its QA pairs.

    Wh-questions give them directly ("what color is the circle?" -> circle, <answer>);
    an existence question gives the word it asks about when the object is present
    ("is there a red shape?" yes, "is there not a circle?" no), and rules it out when
    absent: if all but one shape (colour) are ruled out, the remaining one is taken.
    Conflicts raise.
    """
    facts: dict[int, dict[str, str]] = defaultdict(dict)
    absent: dict[int, set[str]] = defaultdict(set)

    def note(image_id: int, key: str, value: str) -> None:
        old = facts[image_id].setdefault(key, value)
        if old != value:
            raise ValueError(f"image {image_id}: conflicting {key} {old!r} / {value!r}")

    for text, answer, image_id in questions:
        words = re.findall(r"[a-z]+", text.lower())
        if answer in ("yes", "no"):
            present = (answer == "yes") != bool(NEGATION.search(text.lower()))
            for w in words:
                if w in shapes or w in colours:
                    if present:
                        note(image_id, "shape" if w in shapes else "colour", w)
                    else:
                        absent[image_id].add(w)
            continue
        key = "shape" if answer in shapes else "colour"
        note(image_id, key, answer)
        for w in words:
            if w in shapes and key == "colour":
                note(image_id, "shape", w)
            elif w in colours and key == "shape":
                note(image_id, "colour", w)
    for image_id, gone in absent.items():
        for key, vocab in (("shape", shapes), ("colour", colours)):
            left = vocab - gone
            if len(left) == 1:
                note(image_id, key, left.pop())
    return dict(facts)


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def make_captions(facts: dict[str, str]) -> list[str]:
    """Five deterministic captions from an image's known shape and/or colour."""
    shape, colour = facts.get("shape"), facts.get("colour")
    full = " ".join(w for w in (colour, shape or "shape") if w)
    return [
        _article(full),
        f"a picture of {_article(full)}",
        f"an image with a single {full} on a plain background",
        _article(f"{colour} shape") if colour else "a single shape",
        f"one {shape}" if shape else f"one {full}",
    ]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def convert(out: Path, *, limit: int | None = None, answers_per_question: int = 10) -> dict:
    """Convert easy-vqa under ``out``; returns the manifest (counts and parameters)."""
    out = Path(out)
    answer_list = list(_easy_vqa().get_answers())
    shapes, colours = vocabulary(answer_list)
    files: dict[str, list] = {"answer_list.json": answer_list}
    captions: dict[str, list[dict]] = {}
    for split in SPLITS:
        questions, paths = load_split(split)
        ids = sorted(paths)[:limit] if limit is not None else sorted(paths)
        keep = set(ids)
        questions = [q for q in questions if q[2] in keep]
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rel = {i: f"images/{split}/{i}.png" for i in ids}
        for old in folder.glob("*.png"):  # images of an earlier, larger conversion
            if old.stem.isdigit() and int(old.stem) not in keep:
                old.unlink()
        for i in ids:
            target = out / rel[i]
            if not target.exists() or target.stat().st_size != Path(paths[i]).stat().st_size:
                shutil.copyfile(paths[i], target)
        files[f"vqa_{split}.json"] = [
            {"dataset": "vqa", "image": rel[image_id], "question": text,
             "answer": [answer] * answers_per_question,
             "question_id": SPLIT_CODE[split] * 10_000_000 + k}
            for k, (text, answer, image_id) in enumerate(questions)]
        facts = image_facts(questions, shapes, colours)
        captions[split] = [{"image": rel[i], "caption": make_captions(facts.get(i, {}))}
                           for i in ids]
    files["pretrain.json"] = captions["train"]
    files["retrieval_train.json"] = [
        {"image": e["image"], "caption": c, "image_id": Path(e["image"]).stem}
        for e in captions["train"] for c in e["caption"]]
    files["retrieval_test.json"] = captions["test"]
    for name in sorted(files):
        _write_json(out / name, files[name])
    validate(out, files)
    manifest = {
        "params": {"converter_version": CONVERTER_VERSION, "limit": limit,
                   "answers_per_question": answers_per_question},
        "source": "easy-vqa (pip package easy_vqa, MIT)",
        "image_root": ".",
        "counts": {name: len(files[name]) for name in sorted(files)},
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def validate(out: Path, files: dict[str, list]) -> None:
    """Raise if an image referenced by any written JSON file is missing."""
    missing = [e["image"] for name, recs in files.items() if name != "answer_list.json"
               for e in recs if not (out / e["image"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images missing under {out}, e.g. {missing[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m albef_struct.data_prep.easy_vqa_convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/easy_vqa"))
    p.add_argument("--limit", type=int, default=None, help="keep the first N images per split")
    p.add_argument("--answers-per-question", type=int, default=10)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    manifest = convert(a.out, limit=a.limit, answers_per_question=a.answers_per_question)
    print(f"converted easy-vqa to {a.out} in {time.perf_counter() - t0:.1f} s: "
          + json.dumps(manifest["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
