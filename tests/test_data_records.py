"""Record loading and validation, image path resolution and image loading errors."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from albef_struct.data import BadRecordError, SkipReport, load_answer_list, load_image, load_records, resolve_image_path
from tests.data_fixtures import make_image, write_json


@pytest.fixture
def root(tmp_path):
    make_image(tmp_path / "img" / "a.jpg")
    make_image(tmp_path / "img" / "b.jpg")
    return tmp_path / "img"


def _error(json_path, schema, root, **kw) -> BadRecordError:
    with pytest.raises(BadRecordError) as info:
        load_records(json_path, schema, image_root=str(root), **kw)
    return info.value


def _assert_names(err: BadRecordError, file: str, row: int | None, field: str | None):
    msg = str(err)
    assert file in msg
    if row is not None:
        assert f"record {row}" in msg and err.row == row
    if field is not None:
        assert repr(field) in msg and err.field == field


def test_valid_records_of_every_schema(tmp_path, root):
    cases = {
        "pretrain": [{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": ["y", "z"]}],
        "retrieval_train": [{"image": "a.jpg", "caption": "x", "image_id": 3}, {"image": "b.jpg", "caption": "y", "image_id": "b"}],
        "retrieval_eval": [{"image": "a.jpg", "caption": ["x", "y"]}],
        "vqa_train": [{"image": "a.jpg", "question": "q?", "answer": ["yes", "no"]},
                      {"dataset": "vg", "image": "b.jpg", "question": "q?", "answer": "two"}],
        "vqa_test": [{"image": "a.jpg", "question": "q?", "question_id": 5}],
        "nlvr": [{"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "False"}],
        "ve": [{"image": "a", "sentence": "s", "label": "neutral"}],
    }
    for schema, recs in cases.items():
        path = write_json(tmp_path / f"{schema}.json", recs)
        got = load_records(path, schema, image_root=str(root), image_ext=".jpg" if schema == "ve" else "")
        assert len(got) == len(recs)
        assert got[0].source == path and got[0].row == 0
        assert all(p.is_absolute() and p.exists() for r in got for p in r.image_paths)
    vqa = load_records(tmp_path / "vqa_train.json", "vqa_train", image_root=str(root))
    assert [r["dataset"] for r in vqa] == ["vqa", "vg"]  # default filled in
    assert len(load_records(tmp_path / "nlvr.json", "nlvr", image_root=str(root))[0].image_paths) == 2


def test_missing_json_file(tmp_path):
    err = _error(tmp_path / "nope.json", "pretrain", tmp_path)
    _assert_names(err, "nope.json", None, None)
    assert "missing annotation file" in str(err)


def test_not_a_list_and_invalid_json(tmp_path):
    path = write_json(tmp_path / "d.json", {"image": "a.jpg", "caption": "x"})
    err = _error(path, "pretrain", tmp_path)
    _assert_names(err, "d.json", None, None)
    assert "not a JSON list" in str(err) and "dict" in str(err)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image": "a.jpg",]')
    assert "invalid JSON" in str(_error(bad, "pretrain", tmp_path)) and "line 1" in str(_error(bad, "pretrain", tmp_path))


@pytest.mark.parametrize(
    "schema, record, field, reason, found",
    [
        ("pretrain", {"image": "a.jpg"}, "caption", "missing field", "no 'caption' key"),
        ("pretrain", {"image": "a.jpg", "caption": "   "}, "caption", "empty text", "'   '"),
        ("pretrain", {"image": "a.jpg", "caption": 42}, "caption", "wrong type", "int 42"),
        ("pretrain", {"image": "a.jpg", "caption": ["ok", ""]}, "caption[1]", "empty text", "''"),
        ("pretrain", {"image": "a.jpg", "caption": []}, "caption", "empty text", "[]"),
        ("pretrain", {"image": None, "caption": "x"}, "image", "wrong type", "NoneType"),
        ("retrieval_train", {"image": "a.jpg", "caption": "x"}, "image_id", "missing field", "no 'image_id'"),
        ("retrieval_train", {"image": "a.jpg", "caption": "x", "image_id": True}, "image_id", "wrong type", "bool"),
        ("retrieval_eval", {"image": "a.jpg", "caption": "single"}, "caption", "wrong type", "str"),
        ("vqa_train", {"image": "a.jpg", "question": "q", "answer": [1]}, "answer[0]", "wrong type", "int"),
        ("vqa_train", {"dataset": "gqa", "image": "a.jpg", "question": "q", "answer": "x"}, "dataset", "unknown label", "gqa"),
        ("vqa_test", {"image": "a.jpg", "question": "q"}, "question_id", "missing field", "no 'question_id'"),
        ("nlvr", {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "true"}, "label", "unknown label", "'true'"),
        ("nlvr", {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": True}, "label", "unknown label", "bool"),
        ("nlvr", {"images": ["a.jpg"], "sentence": "s", "label": "True"}, "images", "wrong type", "list"),
        ("ve", {"image": "a", "sentence": "s", "label": "entails"}, "label", "unknown label", "'entails'"),
    ],
)
def test_bad_record_messages_name_file_record_field_found_expected(tmp_path, root, schema, record, field, reason, found):
    good = {
        "pretrain": {"image": "a.jpg", "caption": "fine"},
        "retrieval_train": {"image": "a.jpg", "caption": "x", "image_id": 1},
        "retrieval_eval": {"image": "a.jpg", "caption": ["x"]},
        "vqa_train": {"image": "a.jpg", "question": "q", "answer": "x"},
        "vqa_test": {"image": "a.jpg", "question": "q", "question_id": 1},
        "nlvr": {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "True"},
        "ve": {"image": "a", "sentence": "s", "label": "neutral"},
    }[schema]
    path = write_json(tmp_path / "ann.json", [good, record])
    err = _error(path, schema, root, image_ext=".jpg" if schema == "ve" else "")
    _assert_names(err, "ann.json", 1, field)
    assert err.reason == reason
    assert found in str(err) and "expected" in str(err)


def test_record_that_is_not_an_object(tmp_path, root):
    err = _error(write_json(tmp_path / "x.json", ["just a string"]), "pretrain", root)
    _assert_names(err, "x.json", 0, None)
    assert "not an object" in str(err)


def test_missing_image_detected_at_load_time(tmp_path, root):
    path = write_json(tmp_path / "m.json", [{"image": "a.jpg", "caption": "x"}, {"image": "gone.jpg", "caption": "y"}])
    err = _error(path, "pretrain", root)
    _assert_names(err, "m.json", 1, "image")
    assert "gone.jpg" in str(err) and "image_root" in str(err)
    assert len(load_records(path, "pretrain", image_root=str(root), check_images_exist=False)) == 2


def test_nlvr_missing_second_image_names_the_list_slot(tmp_path, root):
    path = write_json(tmp_path / "n.json", [{"images": ["a.jpg", "zz.jpg"], "sentence": "s", "label": "True"}])
    _assert_names(_error(path, "nlvr", root), "n.json", 0, "images[1]")


def test_skip_bad_records_counts_every_reason(tmp_path, root):
    recs = [
        {"image": "a.jpg", "caption": "ok"},
        {"image": "a.jpg", "caption": ""},
        {"image": "a.jpg"},
        {"image": "gone.jpg", "caption": "x"},
        {"image": "b.jpg", "caption": 7},
        {"image": "b.jpg", "caption": ["fine", "too"]},
    ]
    path = write_json(tmp_path / "s.json", recs)
    report = SkipReport()
    got = load_records(path, "pretrain", image_root=str(root), skip_bad_records=True, report=report)
    assert [r.row for r in got] == [0, 5]
    assert report.total == 4
    assert dict(report.counts) == {"empty text": 1, "missing field": 1, "missing image": 1, "wrong type": 1}
    assert len(report.examples) == 4 and "s.json, record 1" in report.examples[0]
    assert "skipped 4 bad record(s)" in report.summary()


def test_skips_without_a_report_are_logged(tmp_path, root, caplog):
    path = write_json(tmp_path / "s.json", [{"image": "a.jpg", "caption": "ok"}, {"image": "a.jpg", "caption": ""}])
    with caplog.at_level(logging.WARNING):
        assert len(load_records(path, "pretrain", image_root=str(root), skip_bad_records=True)) == 1
    assert "skipped 1 bad record" in caplog.text and "s.json" in caplog.text


def test_jsonl_files_are_accepted(tmp_path, root):
    path = tmp_path / "p.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n\n{"image": "b.jpg", "caption": "y"}\n')
    assert [r["caption"] for r in load_records(path, "pretrain", image_root=str(root))] == ["x", "y"]


def test_unknown_schema():
    with pytest.raises(ValueError, match="known: pretrain"):
        load_records("x.json", "captions")


# -- image paths --------------------------------------------------------------


def test_resolve_image_path_rules(tmp_path):
    root = tmp_path / "root"
    assert resolve_image_path("sub/a.jpg", str(root), source="f.json", record_index=0) == (root / "sub" / "a.jpg").resolve()
    absolute = str(tmp_path / "elsewhere" / "a.jpg")
    assert str(resolve_image_path(absolute, str(root), source="f.json", record_index=0)) == absolute
    ann = tmp_path / "ann" / "f.json"
    assert resolve_image_path("a.jpg", None, source=str(ann), record_index=0) == (tmp_path / "ann" / "a.jpg").resolve()


def test_a_symlinked_folder_inside_the_root_is_not_an_escape(tmp_path):
    """Datasets are often linked in (images -> /mnt/big/images): only ``..`` leaves the root."""
    root, elsewhere = tmp_path / "root", tmp_path / "big" / "images"
    root.mkdir()
    elsewhere.mkdir(parents=True)
    (root / "images").symlink_to(elsewhere)
    found = resolve_image_path("images/./x/../a.jpg", str(root), source="f.json", record_index=0)
    assert found == root.resolve() / "images" / "a.jpg"


def test_path_escaping_root_is_an_error(tmp_path, root):
    with pytest.raises(BadRecordError) as info:
        resolve_image_path("../../etc/passwd", str(root), source="f.json", record_index=3, field="images[0]")
    _assert_names(info.value, "f.json", 3, "images[0]")
    assert "escapes image_root" in str(info.value)
    path = write_json(tmp_path / "e.json", [{"image": "../img/../../a.jpg", "caption": "x"}])
    _assert_names(_error(path, "pretrain", root), "e.json", 0, "image")


# -- image loading ------------------------------------------------------------


def _load_error(path) -> BadRecordError:
    with pytest.raises(BadRecordError) as info:
        load_image(path, source="ann.json", record_index=4)
    err = info.value
    _assert_names(err, "ann.json", 4, "image")
    assert str(path) in str(err)
    assert "skip_bad_records" in str(err)  # says what to do
    return err


def test_load_image_missing_empty_and_corrupt(tmp_path):
    assert "missing image" in str(_load_error(tmp_path / "none.jpg"))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert "0-byte" in str(_load_error(empty))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg at all" * 10)
    assert "cannot decode" in str(_load_error(corrupt))
    truncated = tmp_path / "truncated.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "cannot decode" in str(_load_error(truncated))


def test_bad_record_error_survives_pickling(tmp_path):
    import pickle

    err = _load_error(tmp_path / "none.jpg")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.row == 4


def _roundtrip(tmp_path, img: Image.Image, fmt: str, name: str) -> Image.Image:
    path = tmp_path / name
    img.save(path, fmt)
    out = load_image(path, source="ann.json", record_index=0)
    assert out.mode == "RGB" and out.size == img.size
    return out


def test_cmyk_image_loads_as_rgb(tmp_path):
    out = _roundtrip(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", "cmyk.jpg")  # pure red
    r, g, b = out.getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25


def test_16bit_image_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = _roundtrip(tmp_path, img, "PNG", "grey16.png")
    assert out.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 77, (77, 77, 77)),
    ("LA", (77, 255), (77, 77, 77)),
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent → white background
])
def test_other_modes_load_as_rgb(tmp_path, mode, value, expected):
    out = _roundtrip(tmp_path, Image.new(mode, (6, 6), value), "PNG", f"{mode}.png")
    assert out.getpixel((0, 0)) == expected


def test_palette_image_loads_as_rgb(tmp_path):
    img = Image.new("P", (6, 6), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert _roundtrip(tmp_path, img, "PNG", "p.png").getpixel((0, 0)) == (200, 100, 50)


def test_answer_list(tmp_path):
    assert load_answer_list(write_json(tmp_path / "a.json", ["yes", "no"])) == ["yes", "no"]
    with pytest.raises(BadRecordError, match="record 1"):
        load_answer_list(write_json(tmp_path / "b.json", ["yes", 3]))
    with pytest.raises(BadRecordError, match="duplicate"):
        load_answer_list(write_json(tmp_path / "c.json", ["yes", "yes"]))
