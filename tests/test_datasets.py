"""Datasets per task and their collate functions: items, indices, weights, mappings, batch shapes."""

from __future__ import annotations

import pytest
import torch

from albef_struct.data import (
    ALBEFTokenizer,
    BadRecordError,
    ImageTextCollate,
    NLVRCollate,
    NLVRDataset,
    PretrainDataset,
    RetrievalEvalDataset,
    RetrievalImageCollate,
    RetrievalTextCollate,
    RetrievalTrainDataset,
    VECollate,
    VEDataset,
    VQADataset,
    VQATestCollate,
    VQATrainCollate,
    is_empty_batch,
    test_transform,
    vqa_answer_weights,
)
from tests.data_fixtures import make_image, nlvr_file, pretrain_files, retrieval_train_file, ve_file, vqa_files, write_json

RES = 8


@pytest.fixture(scope="module")
def tok() -> ALBEFTokenizer:
    return ALBEFTokenizer()


@pytest.fixture
def tf():
    return test_transform(RES)


def test_pretrain_items_indices_and_image_ids(tmp_path, tf):
    files = pretrain_files(tmp_path)
    second = write_json(tmp_path / "ann" / "more.json", [{"image": files["names"][0], "caption": "Again, image 0!"}])
    ds = PretrainDataset([files["train"], second], files["root"], tf)
    assert len(ds) == 5
    item = ds[4]
    assert item["index"] == 4 and item["image_idx"] == 0  # same image path as record 0
    assert item["text"] == "again image 0"
    assert item["image"].shape == (3, RES, RES)
    assert [ds[i]["image_idx"] for i in range(5)] == [0, 1, 2, 3, 0]
    assert ds[1]["text"] == "the only caption of image 1"


def test_pretrain_caption_choice_is_seeded_per_epoch(tmp_path, tf):
    files = pretrain_files(tmp_path, n_images=2)
    ds = PretrainDataset(files["train"], files["root"], tf, seed=3)
    options = {"caption a of image 0", "caption b of image 0", "caption c 0"}
    per_epoch = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        assert ds.epoch == epoch
        first, again = ds[0]["text"], ds[0]["text"]
        assert first == again and first in options  # stable within an epoch
        per_epoch.append(first)
    assert len(set(per_epoch)) > 1  # varies across epochs
    clone = PretrainDataset(files["train"], files["root"], tf, seed=3)
    assert [clone.caption(0, e) for e in range(12)] == [ds.caption(0, e) for e in range(12)]
    other = PretrainDataset(files["train"], files["root"], tf, seed=4)
    assert [other.caption(0, e) for e in range(12)] != [ds.caption(0, e) for e in range(12)]


def test_image_text_collate(tmp_path, tf, tok):
    files = pretrain_files(tmp_path)
    ds = PretrainDataset(files["train"], files["root"], tf)
    batch = ImageTextCollate(tok, max_length=4)([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, RES, RES) and batch["image"].dtype == torch.float32
    assert batch["input_ids"].shape == (4, 4) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert (batch["input_ids"][:, 0] == 101).all() and not (batch["input_ids"] == 102).any()
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["image_idx"].tolist() == [0, 1, 2, 3]
    assert batch["n_skipped"].dim() == 0 and int(batch["n_skipped"]) == 0


def test_retrieval_train_image_idx_from_image_id(tmp_path, tf):
    files = retrieval_train_file(tmp_path, n_images=3, captions_per_image=2)
    ds = RetrievalTrainDataset(files["train"], files["root"], tf)
    assert [ds[i]["image_idx"] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert ds[4]["text"] == "a picture number 1 variant 1"


def test_retrieval_eval_mappings(tmp_path, tf, tok):
    root = tmp_path / "img"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_image(root / name)
    recs = [{"image": "a.jpg", "caption": ["A one.", "a two"]},
            {"image": "b.jpg", "caption": ["b one"]},
            {"image": "c.jpg", "caption": ["c one", "c two", "c three"]}]
    ds = RetrievalEvalDataset(write_json(tmp_path / "e.json", recs), str(root), tf)
    assert ds.texts == ["a one", "a two", "b one", "c one", "c two", "c three"]
    assert ds.txt2img == [0, 0, 1, 2, 2, 2]
    assert ds.img2txt == [[0, 1], [2], [3, 4, 5]]
    assert len(ds) == 3 and ds[2]["image_index"] == 2
    texts = ds.text_dataset()
    assert len(texts) == 6 and texts[4] == {"text": "c two", "text_index": 4, "image_index": 2}
    img_batch = RetrievalImageCollate()([ds[i] for i in range(3)])
    assert img_batch["image"].shape == (3, 3, RES, RES) and img_batch["image_index"].tolist() == [0, 1, 2]
    txt_batch = RetrievalTextCollate(tok, max_length=30)([texts[i] for i in range(6)])
    assert txt_batch["input_ids"].shape == (6, 30) and txt_batch["attention_mask"][:, 3:].sum() == 0
    assert txt_batch["text_index"].tolist() == list(range(6)) and txt_batch["image_index"].tolist() == ds.txt2img


def test_vqa_answer_weights():
    answers, weights = vqa_answer_weights(["yes"] * 7 + ["no"] * 3)
    assert answers == ["yes", "no"] and weights == pytest.approx([0.7, 0.3])
    assert vqa_answer_weights("two", "vg") == (["two"], [0.5])


def test_vqa_train_items_and_collate(tmp_path, tf, tok):
    files = vqa_files(tmp_path)
    ds = VQADataset(files["train"], files["root"], tf, "train", vg_root=files["vg_root"])
    assert ds[0]["question"] == "what colour is it"
    assert ds[0]["answers"] == ["red", "dark red"] and ds[0]["weights"] == pytest.approx([0.7, 0.3])
    assert ds[1]["answers"] == ["yes"] and ds[1]["weights"] == pytest.approx([1.0])
    assert ds[2]["answers"] == ["two"] and ds[2]["weights"] == [0.5]
    assert ds.records[2].image_paths[0].parent.name == "vg"  # vg records read from vg_root
    batch = VQATrainCollate(tok, max_length=25)([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, RES, RES)
    assert batch["question_ids"].shape[0] == 4 and batch["question_mask"].shape == batch["question_ids"].shape
    assert batch["answers_per_question"].tolist() == [2, 1, 1, 1]
    assert batch["answer_ids"].shape[0] == 5 and batch["answer_weights"].dtype == torch.float32
    assert batch["answer_weights"].tolist() == pytest.approx([0.7, 0.3, 1.0, 0.5, 0.5])
    ids, mask = batch["answer_ids"], batch["answer_mask"]
    assert ids[0].tolist()[:3] == [101, 2417, 102] and ids[0, 3:].eq(0).all()  # "red": [CLS] red [SEP] PAD...
    lengths = mask.sum(1)
    assert (ids[torch.arange(5), lengths - 1] == 102).all()  # every answer ends with [SEP] then padding
    assert not (ids[:, 0] != 101).any() and not (batch["question_ids"] == 102).any()


def test_vqa_test_items_and_collate(tmp_path, tf, tok):
    files = vqa_files(tmp_path)
    ds = VQADataset(files["test"], files["root"], tf, "test")
    assert ds.max_words == 50
    item = ds[0]
    assert item["question_id"] == 7 and item["answers"][-1] == "a circle" and "weights" not in item
    batch = VQATestCollate(tok)([ds[i] for i in range(3)])
    assert batch["question_id"].tolist() == [7, 8, 9] and batch["question_id"].dtype == torch.long
    assert batch["answers"][1] == ["red"] * 10
    assert set(batch) == {"image", "question_ids", "question_mask", "question_id", "answers", "index", "n_skipped"}


def test_vqa_test_without_answers(tmp_path, tf, tok):
    make_image(tmp_path / "a.jpg")
    path = write_json(tmp_path / "t.json", [{"image": "a.jpg", "question": "q?", "question_id": "12"}])
    ds = VQADataset(path, str(tmp_path), tf, "test")
    batch = VQATestCollate(tok)([ds[0]])
    assert "answers" not in batch and batch["question_id"].tolist() == [12]


def test_nlvr_dataset_and_collate(tmp_path, tf, tok):
    files = nlvr_file(tmp_path)
    ds = NLVRDataset(files["file"], files["root"], tf)
    assert [ds[i]["label"] for i in range(4)] == [1, 0, 1, 0]
    assert ds[1]["text"] == "the left image has 1 circles"
    batch = NLVRCollate(tok)([ds[i] for i in range(4)])
    assert batch["image0"].shape == batch["image1"].shape == (4, 3, RES, RES)
    assert not torch.equal(batch["image0"], batch["image1"])
    assert batch["label"].tolist() == [1, 0, 1, 0] and batch["label"].dtype == torch.long
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].shape == batch["input_ids"].shape


def test_ve_dataset_and_collate(tmp_path, tf, tok):
    files = ve_file(tmp_path)
    ds = VEDataset(files["file"], files["root"], tf)
    assert ds.records[0].image_paths[0].name == "f0.jpg"  # image_ext appended
    batch = VECollate(tok)([ds[i] for i in range(3)])
    assert batch["label"].tolist() == [2, 1, 0]
    assert batch["image"].shape == (3, 3, RES, RES)


def test_unreadable_image_at_access_time(tmp_path, tf, tok):
    files = pretrain_files(tmp_path)
    (tmp_path / "images" / "img1.jpg").write_bytes(b"garbage")
    strict = PretrainDataset(files["train"], files["root"], tf)
    with pytest.raises(BadRecordError, match=r"pretrain\.json, record 1, field 'image', image .*img1\.jpg"):
        strict[1]
    lenient = PretrainDataset(files["train"], files["root"], tf, skip_bad_records=True)
    assert lenient[1] is None
    batch = ImageTextCollate(tok)([lenient[i] for i in range(4)])
    assert int(batch["n_skipped"]) == 1 and batch["index"].tolist() == [0, 2, 3]
    empty = ImageTextCollate(tok)([None, None])
    assert is_empty_batch(empty) and int(empty["n_skipped"]) == 2


def test_load_time_skips_are_reported_by_the_dataset(tmp_path, tf):
    files = pretrain_files(tmp_path)
    path = write_json(tmp_path / "ann" / "mixed.json",
                      [{"image": files["names"][0], "caption": "ok"}, {"image": "missing.jpg", "caption": "x"}])
    with pytest.raises(BadRecordError, match="missing image"):
        PretrainDataset(path, files["root"], tf)
    ds = PretrainDataset(path, files["root"], tf, skip_bad_records=True)
    assert len(ds) == 1 and ds.skip_report.counts == {"missing image": 1}


def test_all_records_bad_is_an_error(tmp_path, tf):
    path = write_json(tmp_path / "bad.json", [{"image": "missing.jpg", "caption": "x"}])
    with pytest.raises(ValueError, match="No usable records.*1 missing image"):
        PretrainDataset(path, str(tmp_path), tf, skip_bad_records=True)
