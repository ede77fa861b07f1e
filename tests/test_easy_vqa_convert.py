"""Tests of the easy-vqa converter (``albef_struct.data_prep.easy_vqa_convert``) on the installed package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

easy_vqa = pytest.importorskip("easy_vqa")

from albef_struct.data_prep import easy_vqa_convert as E  # noqa: E402

LIMIT = 50


def load(root: Path, name: str):
    return json.loads((root / name).read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easy_vqa")
    assert E.main(["--out", str(root), "--limit", str(LIMIT)]) == 0
    return root


def test_files_and_counts(converted):
    manifest = load(converted, "manifest.json")
    names = {"vqa_train.json", "vqa_test.json", "answer_list.json", "pretrain.json",
             "retrieval_train.json", "retrieval_test.json"}
    assert set(manifest["counts"]) == names
    for name in names:
        assert len(load(converted, name)) == manifest["counts"][name]
    assert manifest["counts"]["pretrain.json"] == LIMIT
    assert manifest["counts"]["retrieval_train.json"] == 5 * LIMIT
    assert manifest["counts"]["retrieval_test.json"] == LIMIT
    assert load(converted, "answer_list.json") == easy_vqa.get_answers()


def test_vqa_schema_and_answers(converted):
    answers = set(load(converted, "answer_list.json"))
    qids = []
    for split in ("train", "test"):
        recs = load(converted, f"vqa_{split}.json")
        texts, ans, ids = (easy_vqa.get_train_questions() if split == "train"
                           else easy_vqa.get_test_questions())
        expected = [(t, a, i) for t, a, i in zip(texts, ans, ids) if i < LIMIT]
        assert len(recs) == len(expected) > LIMIT  # several questions per image
        for rec, (text, answer, image_id) in zip(recs, expected):
            assert set(rec) == {"dataset", "image", "question", "answer", "question_id"}
            assert rec["dataset"] == "vqa" and rec["question"] == text
            assert rec["answer"] == [answer] * 10 and answer in answers
            assert rec["image"] == f"images/{split}/{image_id}.png"
            assert isinstance(rec["question_id"], int)
            qids.append(rec["question_id"])
    assert len(set(qids)) == len(qids)


def test_every_image_exists_and_is_the_package_file(converted):
    paths = easy_vqa.get_test_image_paths()
    for name in ("vqa_train.json", "vqa_test.json", "pretrain.json", "retrieval_train.json",
                 "retrieval_test.json"):
        for rec in load(converted, name):
            assert (converted / rec["image"]).is_file(), rec["image"]
    rec = load(converted, "retrieval_test.json")[7]
    image_id = int(Path(rec["image"]).stem)
    assert (converted / rec["image"]).read_bytes() == Path(paths[image_id]).read_bytes()
    with Image.open(converted / rec["image"]) as im:
        assert im.size == (64, 64)
    assert len(list((converted / "images" / "train").iterdir())) == LIMIT


def test_captions_agree_with_the_questions(converted):
    """A caption names the colour/shape that the image's wh-questions answer."""
    shapes, colours = E.vocabulary(load(converted, "answer_list.json"))
    caps = {r["image"]: r["caption"] for r in load(converted, "pretrain.json")}
    checked = 0
    for rec in load(converted, "vqa_train.json"):
        answer = rec["answer"][0]
        if answer in shapes | colours:
            assert re.search(rf"\b{answer}\b", caps[rec["image"]][0]), (rec, caps[rec["image"]])
            checked += 1
    assert checked > LIMIT
    for rec in load(converted, "retrieval_train.json"):
        assert set(rec) == {"image", "caption", "image_id"} and isinstance(rec["caption"], str)
        assert rec["image_id"] == Path(rec["image"]).stem
    for rec in load(converted, "retrieval_test.json"):
        assert set(rec) == {"image", "caption"} and len(rec["caption"]) == 5


def test_image_facts_from_existence_questions():
    shapes, colours = {"circle", "triangle", "rectangle"}, {"red", "blue"}
    qs = [("is there not a red shape?", "no", 1), ("is no circle present?", "yes", 1),
          ("is there a triangle?", "no", 1), ("what is the blue shape?", "circle", 2)]
    facts = E.image_facts(qs, shapes, colours)
    assert facts[1] == {"colour": "red", "shape": "rectangle"}  # the last by elimination
    assert facts[2] == {"shape": "circle", "colour": "blue"}
    with pytest.raises(ValueError):
        E.image_facts([("what color is the shape?", "red", 3), ("is there a blue shape?", "yes", 3)],
                      shapes, colours)


def test_rerun_with_smaller_limit_drops_stale_images(converted, tmp_path):
    E.convert(tmp_path, limit=5)
    E.convert(tmp_path, limit=3)
    assert sorted(p.name for p in (tmp_path / "images" / "test").iterdir()) == ["0.png", "1.png", "2.png"]
