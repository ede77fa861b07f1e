"""Grounding: RefCOCO+ files converted, fine-tuned as retrieval, evaluated by Grad-CAM box ranking end to end."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from albef_struct.data import GroundingDataModule
from albef_struct.data.bad_records import BadRecordError
from albef_struct.data_prep.refcoco import convert, main as refcoco_main
from albef_struct.inference.gradcam import box_iou, box_scores, itm_gradcam
from albef_struct.lit.schedule import OptimConfig
from albef_struct.tasks.grounding import GroundingModule
from tests.conftest import tiny_config

# three COCO-like images; each image's detector boxes: the referred object's box, a shifted copy, a corner box
OBJECTS = {1: [10, 8, 30, 24], 2: [40, 20, 30, 30], 3: [5, 30, 40, 20]}
EXPRESSIONS = [(1, "the red block on the left", "val"), (2, "right square", "testA"), (3, "the bottom bar", "testB"),
               (1, "red block", "testA")]


def albef_refcoco(root: Path) -> dict[str, Path]:
    """ALBEF's data files, REFER's annotations and COCO images for EXPRESSIONS, in their original formats."""
    (root / "coco").mkdir(parents=True)
    for image_id, (x, y, w, h) in OBJECTS.items():
        picture = Image.new("RGB", (80, 60), (240, 240, 240))
        picture.paste((200, 30, 30), (x, y, x + w, y + h))
        picture.save(root / "coco" / f"COCO_{image_id:03d}.jpg")
    refs = [{"ref_id": 100 + i, "ann_id": 500 + image_id, "image_id": image_id, "split": split, "sentences": []}
            for i, (image_id, _, split) in enumerate(EXPRESSIONS)]
    (root / "refer" / "refcoco+").mkdir(parents=True)
    with open(root / "refer" / "refcoco+" / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh)
    instances = {"images": [{"id": i, "file_name": f"COCO_{i:03d}.jpg", "width": 80, "height": 60} for i in OBJECTS],
                 "annotations": [{"id": 500 + i, "image_id": i, "bbox": box} for i, box in OBJECTS.items()]}
    (root / "refer" / "refcoco+" / "instances.json").write_text(json.dumps(instances))
    dets = {str(i): [[x, y, w, h, 0.9], [x + 15, y + 12, w, h, 0.8], [0, 0, 12, 10, 0.5]]
            for i, (x, y, w, h) in OBJECTS.items()}
    (root / "dets.json").write_text(json.dumps(dets))
    (root / "cocos.json").write_text(json.dumps({str(i): [box] for i, box in OBJECTS.items()}))
    records = [{"image": f"COCO_{image_id:03d}.jpg", "text": text, "ref_id": 100 + i}
               for i, (image_id, text, _) in enumerate(EXPRESSIONS)]
    (root / "refcoco+_train.json").write_text(json.dumps(records * 4))
    (root / "refcoco+_val.json").write_text(json.dumps(records[:1]))
    (root / "refcoco+_test.json").write_text(json.dumps(records[1:]))
    return {"albef": root, "refer": root / "refer", "dets": root / "dets.json", "images": root / "coco"}


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refcoco")
    files = albef_refcoco(root)
    counts = convert(files["albef"], files["refer"], files["dets"], root / "converted")
    assert counts == {"train": 16, "val": 1, "test": 3}
    return {**files, "out": root / "converted"}


def test_conversion_attaches_the_referred_box_split_and_proposals(refcoco):
    test = json.loads((refcoco["out"] / "grounding_test.json").read_text())
    assert [r["split"] for r in test] == ["testA", "testB", "testA"]
    assert test[0]["box"] == OBJECTS[2] and test[0]["proposals"][0] == OBJECTS[2] and len(test[0]["proposals"]) == 3
    train = json.loads((refcoco["out"] / "grounding_train.json").read_text())
    assert train[0] == {"image": "COCO_001.jpg", "caption": "the red block on the left", "image_id": "COCO_001.jpg"}


def test_conversion_names_an_unknown_ref_id(refcoco, tmp_path, capsys):
    broken = tmp_path / "albef"
    broken.mkdir()
    for name in ("refcoco+_train.json", "refcoco+_val.json"):
        (broken / name).write_text((refcoco["albef"] / name).read_text())
    (broken / "refcoco+_test.json").write_text(json.dumps([{"image": "COCO_001.jpg", "text": "x", "ref_id": 999}]))
    with pytest.raises(BadRecordError, match=r"refcoco\+_test.json, record 0, field 'ref_id': unknown ref_id"):
        convert(broken, refcoco["refer"], refcoco["dets"], tmp_path / "out")
    assert refcoco_main(["--albef-data", str(refcoco["albef"]), "--refer-root", str(refcoco["refer"]), "--dets",
                         str(refcoco["dets"]), "--out", str(tmp_path / "again")]) == 0
    assert "train 16, val 1, test 3" in capsys.readouterr().out


def module() -> GroundingModule:
    torch.manual_seed(0)
    arch = tiny_config(vision=replace(tiny_config().vision, img_size=64))
    return GroundingModule(arch=arch, optim=OptimConfig(lr=1e-4, warmup_steps=0), queue_size=8)


def datamodule(refcoco) -> GroundingDataModule:
    return GroundingDataModule(train_file=str(refcoco["out"] / "grounding_train.json"),
                               val_file=str(refcoco["out"] / "grounding_val.json"),
                               test_file=str(refcoco["out"] / "grounding_test.json"), image_root=str(refcoco["images"]),
                               image_res=64, batch_size=4, eval_batch_size=2, num_workers=0,
                               seed=0)  # an order whose batches all hold two images or more (hard negatives need it)


@pytest.mark.slow
def test_fine_tune_and_test_report_accuracy_chance_and_the_centre_box(refcoco, tmp_path):
    model, data = module(), datamodule(refcoco)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=pl.loggers.CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    result = json.loads(next(tmp_path.rglob("grounding_test.json")).read_text())
    assert result["n_expressions"] == 3
    # each image has 3 proposals and exactly the first overlaps the referred box: chance is 1/3
    assert result["chance"]["acc"] == pytest.approx(100 / 3)
    # the same ranking written out: Grad-CAM of each expression, the proposals scored, IoU >= 0.5
    data.setup("test")
    batch = next(iter(data.test_dataloader()[0]))
    expected = []
    records = json.loads((refcoco["out"] / "grounding_test.json").read_text())
    for i, record in enumerate(records):
        item = data.eval_sets["test"][i]
        tokens = data.tokenizer([item["text"]], max_length=30)
        cam = itm_gradcam(model.model, item["image"][None], tokens["input_ids"], tokens["attention_mask"])
        proposals = torch.tensor(record["proposals"])
        top = box_scores(cam.text_map[0], proposals, (80, 60)).argmax()
        expected.append(float(box_iou(torch.tensor(record["box"], dtype=torch.float), proposals)[top] >= 0.5))
    assert result["metrics"]["acc"] == pytest.approx(100 * sum(expected) / 3)
    assert result["metrics"]["acc_testB"] == pytest.approx(100 * expected[1])  # the second test record is testB
    assert result["metrics"]["acc_testA"] == pytest.approx(100 * (expected[0] + expected[2]) / 2)
    assert batch["proposals"][0].shape == (3, 4) and batch["image_size"][0].tolist() == [80, 60]
    # the centre box, the proposal nearest the image centre (40, 30): the referred box itself for images 2 and 3
    # (centres (55, 35) and (25, 40)), the shifted copy for image 1 (centre (40, 32), IoU 0.14 with the referred box)
    assert result["blind"]["acc"] == pytest.approx(200 / 3)


def test_box_iou_counts_pixels_inclusively():
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0], [20.0, 20.0, 5.0, 5.0]])
    torch.testing.assert_close(box_iou(box, boxes), torch.tensor([1.0, 50 / 150, 0.0]))
