"""Converters from the public raw annotation formats to ALBEF's JSON files, on hand-written samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from albef_struct.data_prep.convert_coco_flickr import ConversionError, convert_karpathy
from albef_struct.data_prep.convert_coco_flickr import main as karpathy_main
from albef_struct.data_prep.convert_nlvr2 import convert_nlvr2, nlvr2_image_names
from albef_struct.data_prep.convert_snli_ve import convert_snli_ve
from albef_struct.data_prep.convert_snli_ve import main as snli_main
from albef_struct.data_prep.convert_vqa import build_answer_list, convert_vqa

REPO = Path(__file__).resolve().parents[1]


def _write_json(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload, indent=1))
    return path


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------
# COCO / Flickr30k (Karpathy splits)

COCO_KARPATHY = {
    "images": [
        {"filepath": "val2014", "sentids": [0, 1], "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "test", "cocoid": 391895,
         "sentences": [
             {"tokens": ["a", "man", "with", "a", "red", "helmet"],
              "raw": "A man with a red helmet on a small moped on a dirt road. ", "imgid": 0, "sentid": 0},
             {"tokens": ["man", "riding"], "raw": "Man riding a motor bike on a dirt road on the countryside.",
              "imgid": 0, "sentid": 1},
         ]},
        {"filepath": "train2014", "sentids": [2, 3], "filename": "COCO_train2014_000000057870.jpg", "imgid": 1,
         "split": "train", "cocoid": 57870,
         "sentences": [
             {"tokens": [], "raw": "A restaurant has modern wooden tables and chairs.", "imgid": 1, "sentid": 2},
             {"tokens": [], "raw": "A long restaurant table with rattan rounded back chairs.", "imgid": 1,
              "sentid": 3},
         ]},
        {"filepath": "val2014", "sentids": [4], "filename": "COCO_val2014_000000522418.jpg", "imgid": 2,
         "split": "restval", "cocoid": 522418,
         "sentences": [{"tokens": [], "raw": "A woman wearing a net on her head cutting a cake. ", "imgid": 2,
                        "sentid": 4}]},
        {"filepath": "val2014", "sentids": [5, 6], "filename": "COCO_val2014_000000184613.jpg", "imgid": 3,
         "split": "val", "cocoid": 184613,
         "sentences": [
             {"tokens": [], "raw": "A child holding a flowered umbrella and petting a yak.", "imgid": 3, "sentid": 5},
             {"tokens": [], "raw": "A young man holding an umbrella next to a herd of cattle.", "imgid": 3,
              "sentid": 6},
         ]},
        {"filepath": "val2014", "sentids": [], "filename": "COCO_val2014_000000000042.jpg", "imgid": 4,
         "split": "val", "cocoid": 42, "sentences": []},
    ],
    "dataset": "coco",
}


def test_coco_karpathy(tmp_path: Path) -> None:
    src = _write_json(tmp_path / "dataset_coco.json", COCO_KARPATHY)
    counts = convert_karpathy(src, tmp_path / "out", dataset="coco")
    assert _read(tmp_path / "out" / "coco_train.json") == [
        {"image": "train2014/COCO_train2014_000000057870.jpg",
         "caption": "A restaurant has modern wooden tables and chairs.", "image_id": 57870},
        {"image": "train2014/COCO_train2014_000000057870.jpg",
         "caption": "A long restaurant table with rattan rounded back chairs.", "image_id": 57870},
        {"image": "val2014/COCO_val2014_000000522418.jpg",
         "caption": "A woman wearing a net on her head cutting a cake.", "image_id": 522418},
    ]
    assert _read(tmp_path / "out" / "coco_val.json") == [
        {"image": "val2014/COCO_val2014_000000184613.jpg",
         "caption": ["A child holding a flowered umbrella and petting a yak.",
                     "A young man holding an umbrella next to a herd of cattle."]},
    ]
    assert _read(tmp_path / "out" / "coco_test.json") == [
        {"image": "val2014/COCO_val2014_000000391895.jpg",
         "caption": ["A man with a red helmet on a small moped on a dirt road.",
                     "Man riding a motor bike on a dirt road on the countryside."]},
    ]
    assert counts == {
        "train_images": 2, "train_captions": 3, "val_images": 1, "val_captions": 2,
        "test_images": 1, "test_captions": 2, "restval_images_in_train": 1,
        "skipped_restval_images": 0, "skipped_images_without_captions": 1,
    }
    counts = convert_karpathy(src, tmp_path / "no_restval", dataset="coco", include_restval=False, name="c")
    assert len(_read(tmp_path / "no_restval" / "c_train.json")) == 2
    assert counts["skipped_restval_images"] == 1


def test_flickr_karpathy_default_and_custom_image_dir(tmp_path: Path) -> None:
    src = _write_json(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"sentids": [0, 1], "imgid": 0, "split": "train", "filename": "1000092795.jpg", "sentences": [
            {"tokens": [], "raw": "Two young guys with shaggy hair look at their hands while hanging out in the yard.",
             "imgid": 0, "sentid": 0},
            {"tokens": [], "raw": "Two young, White males are outside near many bushes.", "imgid": 0, "sentid": 1}]},
        {"sentids": [2], "imgid": 1, "split": "test", "filename": "1007129816.jpg", "sentences": [
            {"tokens": [], "raw": "The man with pierced ears is wearing glasses and an orange hat.", "imgid": 1,
             "sentid": 2}]},
    ]})
    counts = convert_karpathy(src, tmp_path / "out", dataset="flickr30k")
    assert _read(tmp_path / "out" / "flickr30k_train.json") == [
        {"image": "flickr30k-images/1000092795.jpg",
         "caption": "Two young guys with shaggy hair look at their hands while hanging out in the yard.",
         "image_id": 0},
        {"image": "flickr30k-images/1000092795.jpg",
         "caption": "Two young, White males are outside near many bushes.", "image_id": 0},
    ]
    assert _read(tmp_path / "out" / "flickr30k_test.json") == [
        {"image": "flickr30k-images/1007129816.jpg",
         "caption": ["The man with pierced ears is wearing glasses and an orange hat."]},
    ]
    assert _read(tmp_path / "out" / "flickr30k_val.json") == []
    assert counts["train_captions"] == 2 and counts["test_images"] == 1

    convert_karpathy(src, tmp_path / "custom", dataset="flickr30k", image_dir="images/f30k/")
    assert _read(tmp_path / "custom" / "flickr30k_test.json")[0]["image"] == "images/f30k/1007129816.jpg"


def test_karpathy_errors_name_file_record_and_field(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(COCO_KARPATHY))
    del bad["images"][3]["sentences"][1]["raw"]
    src = _write_json(tmp_path / "dataset_coco.json", bad)
    with pytest.raises(ConversionError) as err:
        convert_karpathy(src, tmp_path / "out")
    msg = str(err.value)
    assert str(src) in msg and "images[3].sentences[1]" in msg and "field 'raw'" in msg and "missing" in msg

    bad = json.loads(json.dumps(COCO_KARPATHY))
    bad["images"][1]["split"] = "trian"
    src = _write_json(tmp_path / "dataset_coco.json", bad)
    with pytest.raises(ConversionError, match=r"images\[1\], field 'split': unknown split 'trian'"):
        convert_karpathy(src, tmp_path / "out")

    flickr_like = {"images": [{"imgid": 0, "split": "train", "filename": "1.jpg", "sentences": [{"raw": "x"}]}]}
    src = _write_json(tmp_path / "no_filepath.json", flickr_like)
    with pytest.raises(ConversionError, match=r"images\[0\], field 'filepath'.*--image-dir"):
        convert_karpathy(src, tmp_path / "out", dataset="coco")

    not_objects = json.loads(json.dumps(COCO_KARPATHY))
    not_objects["images"][2] = "COCO_val2014_000000000001.jpg"
    src = _write_json(tmp_path / "strings.json", not_objects)
    with pytest.raises(ConversionError, match=r"images\[2\]: found str 'COCO_val2014.*; expected an image object"):
        convert_karpathy(src, tmp_path / "out")
    not_objects = json.loads(json.dumps(COCO_KARPATHY))
    not_objects["images"][0]["sentences"][0] = "a caption without its object"
    src = _write_json(tmp_path / "strings.json", not_objects)
    with pytest.raises(ConversionError, match=r"images\[0\].sentences\[0\]: found str .*expected \{'raw': caption\}"):
        convert_karpathy(src, tmp_path / "out")

    src = tmp_path / "truncated.json"
    src.write_text('{"images": [\n  {"split": "train",\n')
    with pytest.raises(ConversionError, match=r"truncated\.json, line \d+, column \d+: invalid JSON"):
        convert_karpathy(src, tmp_path / "out")
    with pytest.raises(ConversionError, match="no such file"):
        convert_karpathy(tmp_path / "missing.json", tmp_path / "out")


def test_karpathy_cli_prints_counts(tmp_path: Path, capsys) -> None:
    src = _write_json(tmp_path / "dataset_coco.json", COCO_KARPATHY)
    assert karpathy_main(["--karpathy", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "train_captions" in out and "skipped_images_without_captions  1" in out
    assert karpathy_main(["--karpathy", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")]) == 1
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# VQA v2 (+ Visual Genome QA)


def _answers(*answers: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def _annotation(qid: int, image_id: int, mc: str, answers: list[str], qtype: str = "what") -> dict:
    return {"question_type": qtype, "multiple_choice_answer": mc, "answers": _answers(*answers),
            "image_id": image_id, "answer_type": "other", "question_id": qid}


def _vqa_files(tmp_path: Path) -> dict[str, Path]:
    info = {"description": "hand-written sample"}
    train_q = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014",
               "license": {}, "questions": [
                   {"image_id": 458752, "question": "What is this photo taken looking through?",
                    "question_id": 458752000},
                   {"image_id": 458752, "question": "What position is this man playing?", "question_id": 458752001},
                   {"image_id": 262146, "question": "What color is the snow?", "question_id": 262146000},
                   {"image_id": 262146, "question": "Is the person skiing?", "question_id": 262146001},
               ]}
    train_a = {"info": info, "data_subtype": "train2014", "annotations": [
        _annotation(458752000, 458752, "net", ["net"] * 7 + ["netting", "net", "mesh"]),
        _annotation(458752001, 458752, "pitcher", ["pitcher", "catcher", "pitcher", "pitcher", "pitcher",
                                                   "pitcher", "pitcher", "pitcher", "pitcher", "pitcher"]),
        _annotation(262146000, 262146, "white", ["white"] * 10),
        _annotation(262146001, 262146, "yes", ["yes"] * 9 + ["no"], qtype="is the"),
    ]}
    val_q = {"info": info, "data_subtype": "val2014", "questions": [
        {"image_id": 393225, "question": "Is the bowl full?", "question_id": 393225000},
        {"image_id": 393225, "question": "How many spoons?", "question_id": 393225001},
        {"image_id": 393225, "question": "What is written on the mug?", "question_id": 393225002},
    ]}
    val_a = {"info": info, "data_subtype": "val2014", "annotations": [
        _annotation(393225000, 393225, "yes", ["yes"] * 10),
        _annotation(393225001, 393225, "two", ["two"] * 6 + ["2"] * 4),
        _annotation(393225002, 393225, "", [""] * 6 + ["nothing"] * 4),
    ]}
    dev_q = {"info": info, "data_subtype": "test-dev2015", "questions": [
        {"image_id": 1, "question": "Is this a toy?", "question_id": 1000},
        {"image_id": 1, "question": "What is on the table?", "question_id": 1001},
    ]}
    vg = [
        {"id": 1, "qas": [
            {"a_objects": [], "question": "What color is the clock?", "image_id": 1, "qa_id": 986768,
             "answer": "Green.", "q_objects": []},
            {"a_objects": [], "question": "How many people are there?", "image_id": 1, "qa_id": 986769,
             "answer": "Two.", "q_objects": []},
            {"a_objects": [], "question": "Where is the man?", "image_id": 1, "qa_id": 986770,
             "answer": "On the sidewalk.", "q_objects": []},
            {"a_objects": [], "question": " ", "image_id": 1, "qa_id": 986771, "answer": "Yes.", "q_objects": []},
        ]},
        {"id": 10, "qas": [
            {"a_objects": [], "question": "Was the photo taken in a net?", "image_id": 10, "qa_id": 5,
             "answer": "A net.", "q_objects": []},
        ]},
        {"id": 11, "qas": []},
    ]
    image_data = [
        {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600,
         "image_id": 1, "coco_id": None, "flickr_id": None},
        {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K/10.jpg", "height": 600,
         "image_id": 10, "coco_id": None, "flickr_id": None},
        {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K/11.jpg", "height": 600,
         "image_id": 11, "coco_id": None, "flickr_id": None},
    ]
    return {
        "train_q": _write_json(tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json", train_q),
        "train_a": _write_json(tmp_path / "v2_mscoco_train2014_annotations.json", train_a),
        "val_q": _write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", val_q),
        "val_a": _write_json(tmp_path / "v2_mscoco_val2014_annotations.json", val_a),
        "dev_q": _write_json(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", dev_q),
        "vg": _write_json(tmp_path / "question_answers.json", vg),
        "vg_images": _write_json(tmp_path / "image_data.json", image_data),
    }


def test_vqa_splits_answer_list_and_vg(tmp_path: Path) -> None:
    f = _vqa_files(tmp_path)
    out = tmp_path / "out"
    counts = convert_vqa([f["train_q"], f["val_q"], f["dev_q"]], out, annotations=[f["train_a"], f["val_a"]],
                         top_k=3, vg_qa=f["vg"], vg_image_data=f["vg_images"])
    train = _read(out / "vqa_train.json")
    assert train[0] == {
        "dataset": "vqa", "image": "train2014/COCO_train2014_000000458752.jpg",
        "question": "What is this photo taken looking through?", "question_id": 458752000,
        "answer": ["net"] * 7 + ["netting", "net", "mesh"],
    }
    assert [r["question_id"] for r in train] == [458752000, 458752001, 262146000, 262146001]
    assert train[2]["image"] == "train2014/COCO_train2014_000000262146.jpg"
    assert all(len(r["answer"]) == 10 for r in train)
    val = _read(out / "vqa_val.json")
    assert val[1] == {"dataset": "vqa", "image": "val2014/COCO_val2014_000000393225.jpg",
                      "question": "How many spoons?", "question_id": 393225001,
                      "answer": ["two"] * 6 + ["2"] * 4}
    assert _read(out / "vqa_test_dev.json") == [
        {"dataset": "vqa", "image": "test2015/COCO_test2015_000000000001.jpg", "question": "Is this a toy?",
         "question_id": 1000},
        {"dataset": "vqa", "image": "test2015/COCO_test2015_000000000001.jpg", "question": "What is on the table?",
         "question_id": 1001},
    ]
    # majority answers: yes x2, then net / pitcher / white / "two" -> "2" once each; "" excluded
    assert _read(out / "answer_list.json") == ["yes", "2", "net"]
    assert _read(out / "vg_qa.json") == [
        {"dataset": "vg", "image": "VG_100K_2/1.jpg", "question": "How many people are there?", "answer": "2"},
        {"dataset": "vg", "image": "VG_100K/10.jpg", "question": "Was the photo taken in a net?", "answer": "net"},
    ]
    assert counts == {
        "vqa_train_questions": 4, "vqa_train_annotated": 4,
        "vqa_val_questions": 3, "vqa_val_annotated": 3,
        "vqa_test_dev_questions": 2, "vqa_test_dev_annotated": 0,
        "answer_list_size": 3, "annotated_questions_with_majority_answer_in_list": 4,
        "vg_images": 3, "vg_qa_pairs": 5, "vg_kept": 2,
        "vg_skipped_answer_not_in_list": 2, "vg_skipped_empty_question": 1,
    }


def test_vqa_existing_answer_list_names_and_image_dirs(tmp_path: Path) -> None:
    f = _vqa_files(tmp_path)
    alist = _write_json(tmp_path / "answer_list.json", ["green", "yes"])
    counts = convert_vqa([f["dev_q"]], tmp_path / "out", names=["vqa_test"], image_dirs=["test2015"],
                         answer_list=alist, vg_qa=f["vg"], vg_image_dir="vg")
    assert not (tmp_path / "out" / "answer_list.json").exists()
    assert _read(tmp_path / "out" / "vqa_test.json")[0]["image"] == "test2015/COCO_test2015_000000000001.jpg"
    assert _read(tmp_path / "out" / "vg_qa.json") == [
        {"dataset": "vg", "image": "vg/1.jpg", "question": "What color is the clock?", "answer": "green"},
    ]
    assert counts["vg_skipped_empty_question"] == 1 and counts["vg_kept"] == 1


def test_build_answer_list_ranks_and_normalises() -> None:
    majority = ["Yes", "yes", "no", "Two", "2", "the", "", "b", "a b"]
    # yes 2, 2 2, no 1, b 2 ("a b" -> "b"); "the" and "" normalise to the empty answer
    assert build_answer_list(majority) == ["2", "b", "yes", "no"]
    assert build_answer_list(majority, top_k=2) == ["2", "b"]


def test_vqa_errors_name_file_record_and_field(tmp_path: Path) -> None:
    f = _vqa_files(tmp_path)
    bad = _read(f["train_a"])
    bad["annotations"][1]["answers"][3]["answer"] = 3
    bad_a = _write_json(tmp_path / "bad_annotations.json", bad)
    with pytest.raises(ConversionError) as err:
        convert_vqa([f["train_q"]], tmp_path / "out", annotations=[bad_a])
    msg = str(err.value)
    assert str(bad_a) in msg and "annotations[1].answers[3]" in msg and "field 'answer'" in msg

    bad = _read(f["train_q"])
    del bad["questions"][2]["question_id"]
    bad_q = _write_json(tmp_path / "bad_questions.json", bad)
    with pytest.raises(ConversionError, match=r"bad_questions\.json, questions\[2\], field 'question_id': missing"):
        convert_vqa([bad_q], tmp_path / "out")

    with pytest.raises(ConversionError, match=r"has no annotation in .*same order as --questions"):
        convert_vqa([f["train_q"], f["val_q"]], tmp_path / "out", annotations=[f["val_a"], f["train_a"]])

    bad = _read(f["val_a"])
    bad["annotations"][0]["image_id"] = 7
    bad_a = _write_json(tmp_path / "wrong_image.json", bad)
    with pytest.raises(ConversionError, match=r"wrong_image\.json, annotations\[0\], field 'image_id': 7 but question"):
        convert_vqa([f["val_q"]], tmp_path / "out", annotations=[bad_a])

    no_subtype = _read(f["val_q"])
    del no_subtype["data_subtype"]
    path = _write_json(tmp_path / "no_subtype.json", no_subtype)
    with pytest.raises(ConversionError, match="--image-dirs"):
        convert_vqa([path], tmp_path / "out")

    with pytest.raises(ValueError, match="needs an answer list"):
        convert_vqa([f["dev_q"]], tmp_path / "out", vg_qa=f["vg"])

    bad_vg = _read(f["vg"])
    bad_vg[1]["qas"][0]["answer"] = None
    path = _write_json(tmp_path / "bad_vg.json", bad_vg)
    with pytest.raises(ConversionError, match=r"bad_vg\.json, record 1\.qas\[0\], field 'answer'"):
        convert_vqa([f["train_q"]], tmp_path / "out", annotations=[f["train_a"]], vg_qa=path)
    assert not (tmp_path / "out").exists()  # nothing is written unless every input converts


# ---------------------------------------------------------------------------
# NLVR2

NLVR2_LINES = [
    json.dumps({"validation": {"103": "True"}, "sentence": "The right image shows a curving walkway of dark glass "
                "circles embedded in dirt and flanked by foliage.", "left_url": "https://example.org/a.jpg",
                "writer": "103", "label": "False", "right_url": "https://example.org/b.jpg", "synset": "n03891251",
                "query": "outdoor benches20", "identifier": "train-10171-0-0", "extra_validations": {},
                "directory": 51}),
    json.dumps({"sentence": "One image shows exactly two brown acorns in back-to-back caps on green foliage.",
                "label": "True", "identifier": "train-10171-0-1", "directory": 51}),
    "",
]
NLVR2_DEV_LINES = [
    json.dumps({"sentence": "The left image contains twice the number of dogs as the right image.",
                "label": "True", "identifier": "dev-850-0-0", "synset": "n02112706", "query": "dog6"}),
    json.dumps({"sentence": "There are exactly four dogs.", "label": "False", "identifier": "dev-850-1-3"}),
]


def test_nlvr2_image_names() -> None:
    assert nlvr2_image_names("dev-850-0-0") == ("dev", "dev-850-0-img0.png", "dev-850-0-img1.png")
    assert nlvr2_image_names("test1-0-1-2") == ("test1", "test1-0-1-img0.png", "test1-0-1-img1.png")
    with pytest.raises(ValueError, match="<split>-<set>-<pair>-<sentence>"):
        nlvr2_image_names("dev-850")


def test_nlvr2_train_and_dev(tmp_path: Path) -> None:
    train = _write_lines(tmp_path / "train.json", NLVR2_LINES)
    counts = convert_nlvr2(train, tmp_path / "out" / "nlvr_train.json")
    assert _read(tmp_path / "out" / "nlvr_train.json") == [
        {"images": ["train/51/train-10171-0-img0.png", "train/51/train-10171-0-img1.png"],
         "sentence": "The right image shows a curving walkway of dark glass circles embedded in dirt and flanked "
                     "by foliage.",
         "label": "False"},
        {"images": ["train/51/train-10171-0-img0.png", "train/51/train-10171-0-img1.png"],
         "sentence": "One image shows exactly two brown acorns in back-to-back caps on green foliage.",
         "label": "True"},
    ]
    assert counts == {"pairs": 2, "label_True": 1, "label_False": 1}

    dev = _write_lines(tmp_path / "dev.json", NLVR2_DEV_LINES)
    convert_nlvr2(dev, tmp_path / "out" / "nlvr_dev.json", image_dir="images/dev")
    assert _read(tmp_path / "out" / "nlvr_dev.json") == [
        {"images": ["images/dev/dev-850-0-img0.png", "images/dev/dev-850-0-img1.png"],
         "sentence": "The left image contains twice the number of dogs as the right image.", "label": "True"},
        {"images": ["images/dev/dev-850-1-img0.png", "images/dev/dev-850-1-img1.png"],
         "sentence": "There are exactly four dogs.", "label": "False"},
    ]
    convert_nlvr2(train, tmp_path / "flat.json", use_directory=False)
    assert _read(tmp_path / "flat.json")[0]["images"][0] == "train/train-10171-0-img0.png"


def test_nlvr2_errors_name_file_line_and_field(tmp_path: Path) -> None:
    lines = NLVR2_DEV_LINES + [json.dumps({"sentence": "Two dogs.", "label": "true", "identifier": "dev-851-0-0"})]
    src = _write_lines(tmp_path / "dev.json", lines)
    with pytest.raises(ConversionError) as err:
        convert_nlvr2(src, tmp_path / "out.json")
    msg = str(err.value)
    assert str(src) in msg and "line 3" in msg and "field 'label'" in msg and "'True' or 'False'" in msg
    assert not (tmp_path / "out.json").exists()

    src = _write_lines(tmp_path / "broken.json", [NLVR2_DEV_LINES[0], '{"sentence": "x", "label": "True"'])
    with pytest.raises(ConversionError, match=r"broken\.json, line 2: invalid JSON"):
        convert_nlvr2(src, tmp_path / "out.json")
    src = _write_lines(tmp_path / "noid.json", [json.dumps({"sentence": "x", "label": "True"})])
    with pytest.raises(ConversionError, match=r"noid\.json, line 1, field 'identifier': missing"):
        convert_nlvr2(src, tmp_path / "out.json")


def test_nlvr2_cli_as_module(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "dev.json", NLVR2_DEV_LINES)
    out = tmp_path / "nlvr_dev.json"
    done = subprocess.run([sys.executable, "-m", "albef_struct.data_prep.convert_nlvr2", "--input", str(src), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pairs" in done.stdout and len(_read(out)) == 2


# ---------------------------------------------------------------------------
# SNLI-VE

SNLI_VE_LINES = [
    json.dumps({"Flickr30K_ID": "3416050480", "gold_label": "neutral", "sentence1": "Two men are fishing.",
                "sentence2": "The men are brothers.", "annotator_labels": ["neutral"], "pairID": "3416050480.jpg#4r1n",
                "captionID": "3416050480.jpg#4"}),
    json.dumps({"Flickr30K_ID": "3416050480", "gold_label": "entailment", "sentence2": "People are outdoors.",
                "annotator_labels": ["entailment"]}),
    json.dumps({"Flickr30K_ID": 2267923837, "gold_label": "contradiction", "sentence2": "A cat sleeps on a couch."}),
    json.dumps({"Flickr30K_ID": "2267923837", "gold_label": "-", "sentence2": "The dog is happy.",
                "annotator_labels": ["neutral", "entailment", "contradiction"]}),
]


def test_snli_ve(tmp_path: Path, capsys) -> None:
    src = _write_lines(tmp_path / "snli_ve_dev.jsonl", SNLI_VE_LINES)
    counts = convert_snli_ve(src, tmp_path / "out" / "ve_dev.json")
    assert _read(tmp_path / "out" / "ve_dev.json") == [
        {"image": "3416050480", "sentence": "The men are brothers.", "label": "neutral"},
        {"image": "3416050480", "sentence": "People are outdoors.", "label": "entailment"},
        {"image": "2267923837", "sentence": "A cat sleeps on a couch.", "label": "contradiction"},
    ]
    assert counts == {"records": 3, "label_entailment": 1, "label_neutral": 1, "label_contradiction": 1,
                      "skipped_gold_label_-": 1}
    assert snli_main(["--input", str(src), "--out", str(tmp_path / "cli.json")]) == 0
    assert "skipped_gold_label_-  1" in capsys.readouterr().out


def test_snli_ve_errors_name_file_line_and_field(tmp_path: Path, capsys) -> None:
    lines = SNLI_VE_LINES[:2] + [json.dumps({"Flickr30K_ID": "1", "gold_label": "neutral", "sentence1": "x"})]
    src = _write_lines(tmp_path / "snli_ve_train.jsonl", lines)
    with pytest.raises(ConversionError) as err:
        convert_snli_ve(src, tmp_path / "out.json")
    msg = str(err.value)
    assert str(src) in msg and "line 3" in msg and "field 'sentence2'" in msg and "missing" in msg
    src = _write_lines(tmp_path / "ext.jsonl", [json.dumps({"Flickr30K_ID": "1.jpg", "gold_label": "neutral",
                                                            "sentence2": "x"})])
    with pytest.raises(ConversionError, match=r"ext\.jsonl, line 1, field 'Flickr30K_ID'.*without a file extension"):
        convert_snli_ve(src, tmp_path / "out.json")
    assert snli_main(["--input", str(src), "--out", str(tmp_path / "out.json")]) == 1
    assert "Flickr30K_ID" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the outputs are what the project's loaders accept


def test_outputs_pass_the_record_loader(tmp_path: Path) -> None:
    from albef_struct.data import records
    _write_json(tmp_path / "dataset_coco.json", COCO_KARPATHY)
    convert_karpathy(tmp_path / "dataset_coco.json", tmp_path, dataset="coco")
    f = _vqa_files(tmp_path)
    convert_vqa([f["train_q"], f["dev_q"]], tmp_path, annotations=[f["train_a"]], top_k=3,
                vg_qa=f["vg"], vg_image_data=f["vg_images"])
    convert_nlvr2(_write_lines(tmp_path / "train.json", NLVR2_LINES), tmp_path / "nlvr_train.json")
    convert_snli_ve(_write_lines(tmp_path / "snli.jsonl", SNLI_VE_LINES), tmp_path / "ve.json")
    for name, schema, n in [
        ("coco_train.json", "retrieval_train", 3), ("coco_test.json", "retrieval_eval", 1),
        ("vqa_train.json", "vqa_train", 4), ("vg_qa.json", "vqa_train", 1), ("vqa_test_dev.json", "vqa_test", 2),
        ("nlvr_train.json", "nlvr", 2), ("ve.json", "ve", 3),
    ]:
        assert len(records.load_records(tmp_path / name, schema, check_images_exist=False)) == n
    assert records.load_answer_list(tmp_path / "answer_list.json") == ["net", "pitcher", "white"]
