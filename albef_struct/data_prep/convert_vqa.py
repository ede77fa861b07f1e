"""Convert the official VQA v2 files (and optionally Visual Genome QA) to ALBEF's VQA JSON files.

    python -m albef_struct.data_prep.convert_vqa --out data/vqa \\
        --questions v2_OpenEnded_mscoco_train2014_questions.json \\
                    v2_OpenEnded_mscoco_val2014_questions.json \\
                    v2_OpenEnded_mscoco_test2015_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json v2_mscoco_val2014_annotations.json \\
        [--vg-qa question_answers.json [--vg-image-data image_data.json]]

The i-th ``--annotations`` file belongs to the i-th ``--questions`` file; questions files
past the last annotations file (test, test-dev) have no answers. Written under ``--out``:

- ``vqa_<split>.json`` (``vqa_train``, ``vqa_val``, ``vqa_test``, ``vqa_test_dev`` from the
  questions file's ``data_subtype``; ``--names`` overrides): ``{"dataset": "vqa", "image",
  "question", "question_id", "answer": [the annotators' answers]}``, without ``answer``
  for unannotated splits. ``image`` is ``<folder>/COCO_<folder>_<12-digit image id>.jpg``,
  the folder coming from ``data_subtype`` (test-dev2015 images are in test2015) or
  ``--image-dirs``.
- ``answer_list.json``: the ``--top-k`` (default 3128) most frequent majority answers
  (``multiple_choice_answer``, normalised as the VQA evaluation does) over all annotations
  given, the empty answer excluded (ALBEF's 3,128 = the common 3,129 less the empty one);
  ties are broken alphabetically. ``--answer-list FILE`` uses an existing list instead.
- ``vg_qa.json`` (with ``--vg-qa``): ``{"dataset": "vg", "image", "question", "answer"}``
  for the Visual Genome QA pairs whose normalised answer is in the answer list. ``image``
  is ``<folder>/<image id>.jpg``, the folder taken from the image's URL in
  ``--vg-image-data`` (VG_100K or VG_100K_2) or else ``--vg-image-dir`` (default ``images``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from albef_struct.metrics.vqa import normalize_answer
from albef_struct.data_prep._io import (
    field,
    load_json,
    print_counts,
    top_level_list,
    where_error,
    write_json_list,
)

__all__ = ["build_answer_list", "convert_vqa", "load_vqa_split", "load_vg_qa"]

PathLike = str | os.PathLike
DEFAULT_TOP_K = 3128
SUBTYPE_FOLDER = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015", "test-dev2015": "test2015"}
SUBTYPE_NAME = {"train2014": "vqa_train", "val2014": "vqa_val", "test2015": "vqa_test", "test-dev2015": "vqa_test_dev"}
QUESTIONS_WHAT = "a VQA v2 questions file ({'questions': [{'image_id', 'question', 'question_id'}], 'data_subtype'})"
ANNOTATIONS_WHAT = "a VQA v2 annotations file ({'annotations': [{'question_id', 'image_id', 'answers', ...}]})"
VG_WHAT = "Visual Genome question_answers.json ([{'id': image id, 'qas': [{'question', 'answer'}]}])"
VG_IMAGES_WHAT = "Visual Genome image_data.json ([{'image_id', 'url'}])"


def _annotations_by_question(path: Path) -> dict[int, tuple[int, dict]]:
    """``{question_id: (record index, annotation)}`` of an annotations file."""
    anns = top_level_list(path, load_json(path, ANNOTATIONS_WHAT), "annotations", ANNOTATIONS_WHAT)
    by_qid: dict[int, tuple[int, dict]] = {}
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise where_error(path, where, None, f"found {type(ann).__name__}; expected an annotation object")
        qid = field(path, where, ann, "question_id", int, "an integer question id")
        if qid in by_qid:
            raise where_error(path, where, "question_id", f"{qid} also annotated at annotations[{by_qid[qid][0]}]",
                              "Each question must be annotated once")
        by_qid[qid] = (i, ann)
    return by_qid


def _answers(path: Path, where: str, ann: dict) -> tuple[list[str], str]:
    """The annotators' answers and the majority answer of one annotation."""
    answers = field(path, where, ann, "answers", list, "a list of {'answer': str} objects (10 in VQA v2)")
    if not answers:
        raise where_error(path, where, "answers", "empty list; expected the annotators' answers (10 in VQA v2)")
    out = []
    for j, item in enumerate(answers):
        if not isinstance(item, dict) or not isinstance(item.get("answer"), str):
            raise where_error(path, f"{where}.answers[{j}]", "answer",
                              f"found {item!r:.60}; expected {{'answer': str, ...}}")
        out.append(item["answer"])
    majority = ann.get("multiple_choice_answer")
    if not isinstance(majority, str):
        raise where_error(path, where, "multiple_choice_answer",
                          f"found {majority!r:.60}; expected the majority answer (a string)")
    return out, majority


def load_vqa_split(
    questions: PathLike, annotations: PathLike | None = None, *, image_dir: str | None = None
) -> tuple[str | None, list[dict], list[str]]:
    """One split: its ``data_subtype``, its ALBEF records and its majority answers (raw).

    With ``annotations``, every question must have exactly one annotation for the same
    image, and every annotation a question.
    """
    qpath = Path(questions)
    data = load_json(qpath, QUESTIONS_WHAT)
    items = top_level_list(qpath, data, "questions", QUESTIONS_WHAT)
    subtype = data.get("data_subtype") if isinstance(data.get("data_subtype"), str) else None
    folder = image_dir or SUBTYPE_FOLDER.get(subtype or "")
    if folder is None:
        raise where_error(qpath, None, "data_subtype", f"found {subtype!r}, so the image folder is unknown",
                          "Pass the COCO image folder of this split with --image-dirs (e.g. val2014)")
    apath = Path(annotations) if annotations is not None else None
    by_qid = _annotations_by_question(apath) if apath is not None else None

    records: list[dict] = []
    majority: list[str] = []
    for i, q in enumerate(items):
        where = f"questions[{i}]"
        if not isinstance(q, dict):
            raise where_error(qpath, where, None, f"found {type(q).__name__}; expected a question object")
        image_id = field(qpath, where, q, "image_id", int, "an integer COCO image id")
        qid = field(qpath, where, q, "question_id", int, "an integer question id")
        rec = {
            "dataset": "vqa",
            "image": f"{folder}/COCO_{folder}_{image_id:012d}.jpg",
            "question": field(qpath, where, q, "question", str, "the question text"),
            "question_id": qid,
        }
        if by_qid is not None:
            if qid not in by_qid:
                raise where_error(qpath, where, "question_id", f"{qid} has no annotation in {apath}",
                                  "Pass --annotations in the same order as --questions")
            j, ann = by_qid.pop(qid)
            ann_where = f"annotations[{j}]"
            ann_image = field(apath, ann_where, ann, "image_id", int, "an integer COCO image id")
            if ann_image != image_id:
                raise where_error(apath, ann_where, "image_id",
                                  f"{ann_image} but question {qid} in {qpath} is about image {image_id}",
                                  "Check that the questions and annotations files are of the same split")
            rec["answer"], answer = _answers(apath, ann_where, ann)
            majority.append(answer)
        records.append(rec)
    if by_qid:
        qid, (j, _) = next(iter(by_qid.items()))
        raise where_error(apath, f"annotations[{j}]", "question_id",
                          f"{qid} (and {len(by_qid) - 1} more) not among the questions of {qpath}",
                          "Pass --annotations in the same order as --questions")
    return subtype, records, majority


def build_answer_list(majority_answers: Iterable[str], top_k: int = DEFAULT_TOP_K) -> list[str]:
    """The ``top_k`` most frequent normalised answers, empty answer excluded, ties alphabetical."""
    counts = Counter(normalize_answer(a) for a in majority_answers)
    counts.pop("", None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, _ in ranked[:top_k]]


def _vg_folders(path: Path) -> dict[int, str]:
    """``{image id: folder}`` from image_data.json URLs (``.../VG_100K_2/1.jpg`` -> ``VG_100K_2``)."""
    items = load_json(path, VG_IMAGES_WHAT)
    if not isinstance(items, list):
        raise where_error(path, None, None, f"found {type(items).__name__}; expected {VG_IMAGES_WHAT}")
    folders = {}
    for i, item in enumerate(items):
        where = f"record {i}"
        if not isinstance(item, dict):
            raise where_error(path, where, None, f"found {type(item).__name__}; expected an image object")
        key = "image_id" if "image_id" in item else "id"
        image_id = field(path, where, item, key, int, "an integer image id")
        url = field(path, where, item, "url", str, "the image URL, ending in <folder>/<id>.jpg")
        parts = url.rstrip("/").split("/")
        if len(parts) < 2:
            raise where_error(path, where, "url", f"{url!r} has no folder part; expected .../<folder>/<id>.jpg")
        folders[image_id] = parts[-2]
    return folders


def load_vg_qa(
    question_answers: PathLike,
    answer_list: Sequence[str],
    *,
    image_dir: str = "images",
    image_data: PathLike | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """ALBEF ``vg`` records of the QA pairs whose normalised answer is in ``answer_list``, and counts."""
    path = Path(question_answers)
    images = load_json(path, VG_WHAT)
    if not isinstance(images, list):
        raise where_error(path, None, None, f"found {type(images).__name__}; expected {VG_WHAT}")
    folders = _vg_folders(Path(image_data)) if image_data is not None else None
    allowed = set(answer_list)
    counts = {"vg_images": 0, "vg_qa_pairs": 0, "vg_kept": 0,
              "vg_skipped_answer_not_in_list": 0, "vg_skipped_empty_question": 0}
    records: list[dict] = []
    for i, img in enumerate(images):
        where = f"record {i}"
        if not isinstance(img, dict):
            raise where_error(path, where, None, f"found {type(img).__name__}; expected an image object")
        image_id = field(path, where, img, "id", int, "the integer image id")
        qas = field(path, where, img, "qas", list, "a list of {'question', 'answer'} objects")
        if folders is not None and image_id not in folders:
            raise where_error(path, where, "id", f"image {image_id} is not in {image_data}",
                              "Use the image_data.json of the same Visual Genome version")
        folder = folders[image_id] if folders is not None else image_dir
        counts["vg_images"] += 1
        for j, qa in enumerate(qas):
            qa_where = f"{where}.qas[{j}]"
            if not isinstance(qa, dict):
                raise where_error(path, qa_where, None, f"found {type(qa).__name__}; expected a QA object")
            counts["vg_qa_pairs"] += 1
            question, answer = qa.get("question"), qa.get("answer")
            for key, value in (("question", question), ("answer", answer)):
                if not isinstance(value, str):
                    raise where_error(path, qa_where, key, f"found {value!r:.60}; expected a string")
            if not question.strip():
                counts["vg_skipped_empty_question"] += 1
                continue
            answer = normalize_answer(answer)
            if answer not in allowed:
                counts["vg_skipped_answer_not_in_list"] += 1
                continue
            image = f"{folder}/{image_id}.jpg"
            records.append({"dataset": "vg", "image": image, "question": question, "answer": answer})
            counts["vg_kept"] += 1
    return records, counts


def convert_vqa(
    questions: Sequence[PathLike],
    out_dir: PathLike,
    *,
    annotations: Sequence[PathLike] = (),
    names: Sequence[str] | None = None,
    image_dirs: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    answer_list: PathLike | None = None,
    vg_qa: PathLike | None = None,
    vg_image_dir: str = "images",
    vg_image_data: PathLike | None = None,
) -> dict[str, int]:
    """Write the VQA split files, ``answer_list.json`` and optionally ``vg_qa.json``; returns counts.

    ``annotations[i]`` belongs to ``questions[i]``; ``names`` / ``image_dirs`` (one per
    questions file) override the output names and image folders read from ``data_subtype``.
    """
    if not questions:
        raise ValueError("no questions files given")
    if len(annotations) > len(questions):
        raise ValueError(f"{len(annotations)} annotations files for {len(questions)} questions files; "
                         "pass one annotations file per annotated questions file, in the same order")
    for what, values in (("names", names), ("image_dirs", image_dirs)):
        if values is not None and len(values) != len(questions):
            raise ValueError(f"{len(values)} {what} for {len(questions)} questions files; give one per questions file")
    out = Path(out_dir)
    counts: dict[str, int] = {}
    majority: list[str] = []
    outputs: dict[str, list] = {}  # written only once every input has been read and checked
    for i, qfile in enumerate(questions):
        ann = annotations[i] if i < len(annotations) else None
        subtype, records, answers = load_vqa_split(qfile, ann, image_dir=image_dirs[i] if image_dirs else None)
        name = names[i] if names else SUBTYPE_NAME.get(subtype or "", f"vqa_{Path(qfile).stem}")
        if f"{name}.json" in outputs:
            raise ValueError(f"{qfile}: output name {name!r} is used twice; give distinct --names")
        outputs[f"{name}.json"] = records
        counts[f"{name}_questions"] = len(records)
        counts[f"{name}_annotated"] = len(answers)
        majority.extend(answers)

    if answer_list is not None:
        alist = load_json(answer_list, "a JSON list of answer strings")
        if not isinstance(alist, list) or not all(isinstance(a, str) for a in alist):
            raise where_error(answer_list, None, None, "expected a JSON list of answer strings")
    elif majority:
        alist = build_answer_list(majority, top_k)
        outputs["answer_list.json"] = alist
    else:
        alist = None
    if alist is not None:
        in_list = set(alist)
        counts["answer_list_size"] = len(alist)
        covered = sum(normalize_answer(a) in in_list for a in majority)
        counts["annotated_questions_with_majority_answer_in_list"] = covered

    if vg_qa is not None:
        if alist is None:
            raise ValueError("--vg-qa needs an answer list: pass --annotations (to build one) or --answer-list")
        vg_records, vg_counts = load_vg_qa(vg_qa, alist, image_dir=vg_image_dir, image_data=vg_image_data)
        outputs["vg_qa.json"] = vg_records
        counts |= vg_counts
    for filename, records in outputs.items():
        write_json_list(out / filename, records)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", nargs="+", required=True, help="VQA v2 questions files")
    parser.add_argument("--annotations", nargs="*", default=[], help="annotations files, in the order of --questions")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--names", nargs="+", help="output names (without .json), one per questions file")
    parser.add_argument("--image-dirs", nargs="+", help="COCO image folders, one per questions file")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="answer-list size (default %(default)s)")
    parser.add_argument("--answer-list", help="use this answer_list.json instead of building one")
    parser.add_argument("--vg-qa", help="Visual Genome question_answers.json")
    parser.add_argument("--vg-image-data", help="Visual Genome image_data.json (image folders from URLs)")
    parser.add_argument("--vg-image-dir", default="images", help="VG image folder without --vg-image-data")
    args = parser.parse_args(argv)
    try:
        counts = convert_vqa(args.questions, args.out, annotations=args.annotations, names=args.names,
                             image_dirs=args.image_dirs, top_k=args.top_k, answer_list=args.answer_list,
                             vg_qa=args.vg_qa, vg_image_dir=args.vg_image_dir, vg_image_data=args.vg_image_data)
    except ValueError as err:  # ConversionError included
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_counts(f"VQA -> {args.out}", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
