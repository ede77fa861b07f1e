"""Bad data under load: several workers, thousands of records, 5% bad, counted and reported, no hang.

The single cases (missing image, 0-byte and corrupt files, CMYK/16-bit/palette/alpha
images, empty or non-string captions, unknown labels, JSON that is not a list, missing
fields, paths escaping the image root) each have their own test in
``test_data_records.py`` and ``test_datasets.py``. Here they come together: 3,000
generated records (8x8 images) of which 150 are bad, read by 2 DataLoader workers
under a Lightning Trainer with ``skip_bad_records``; the skips found when the JSON is
read and those found when a worker decodes an image must add up to exactly 150, and
the ``SkippedRecordsReport`` callback the CLI adds must log the count at the end of
the epoch. Without ``skip_bad_records`` the first unreadable image stops the loader with
its file, record and field, across the worker boundary.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from albef_struct.data import PretrainDataModule
from albef_struct.lit import PretrainModule
from albef_struct.lit.reliability import SkippedRecordsReport
from tests.reliability_helpers import TINY_ARCH, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

N_RECORDS, WORKERS, BATCH = 3000, 2, 50
# bad records, by when they are found: reading the JSON (load time) or decoding the image (in a worker)
LOAD_TIME = {"missing image": 30, "empty text": 15, "wrong type": 15, "missing field": 15,
             "path escapes image_root": 15}
ACCESS_TIME = {"zero-byte": 30, "corrupt": 30}
TIME_LIMIT_S = 120  # the whole epoch; a hung worker dumps every stack and fails the run


def good_image(path: Path, i: int) -> str:
    """Tiny images in every mode the loader must convert: RGB/L/CMYK JPEG, 16-bit, palette and RGBA PNG."""
    rng = np.random.default_rng(i)
    kind = i % 6
    if kind == 0:
        img, fmt = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), "JPEG"
    elif kind == 1:
        img, fmt = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), "JPEG"
    elif kind == 2:
        img, fmt = Image.new("CMYK", (8, 8), tuple(int(v) for v in rng.integers(0, 256, 4))), "JPEG"
    elif kind == 3:
        img, fmt = Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)), "PNG"
    elif kind == 4:
        img, fmt = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).convert("P"), "PNG"
    else:
        img, fmt = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)), "PNG"
    name = f"images/{i:05d}.{'jpg' if fmt == 'JPEG' else 'png'}"
    img.save(path / name, fmt)
    return name


@pytest.fixture(scope="module")
def stress_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stress")
    (root / "images").mkdir()
    bad_kinds = [kind for kind, n in {**LOAD_TIME, **ACCESS_TIME}.items() for _ in range(n)]
    assert len(bad_kinds) == N_RECORDS // 20  # 5%
    slots = random.Random(0).sample(range(N_RECORDS), len(bad_kinds))
    bad_at = dict(zip(slots, bad_kinds))
    records, unreadable_rows = [], []
    for i in range(N_RECORDS):
        kind = bad_at.get(i)
        record = {"image": None, "caption": f"a picture number {i} of some shapes"}
        if kind in ("zero-byte", "corrupt"):
            record["image"] = f"images/bad_{i:05d}.jpg"
            (root / record["image"]).write_bytes(b"" if kind == "zero-byte" else b"\xff\xd8 not really a jpeg" * 4)
            unreadable_rows.append(i)
        else:
            record["image"] = good_image(root, i)
        if kind == "missing image":
            record["image"] = f"images/gone_{i:05d}.jpg"
        elif kind == "empty text":
            record["caption"] = "   "
        elif kind == "wrong type":
            record["caption"] = 17
        elif kind == "missing field":
            del record["caption"]
        elif kind == "path escapes image_root":
            record["image"] = "../" + record["image"]
        records.append(record)
    (root / "stress.json").write_text(json.dumps(records))
    return {"root": root, "file": root / "stress.json", "unreadable_rows": unreadable_rows, "bad_rows": set(bad_at)}


class Trivial(pl.LightningModule):
    """A one-weight model: the point is the data path. Records every dataset index it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.seen: list[int] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if "index" not in batch:  # every record of the batch was skipped
            return None
        self.seen += batch["index"].tolist()
        return (batch["image"].mean(dim=(2, 3)) * self.weight).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_workers_over_thousands_of_records_with_5_percent_bad_count_every_skip(stress_data, tmp_path, caplog):
    data = PretrainDataModule(
        train_files=[str(stress_data["file"])], image_root=str(stress_data["root"]), image_res=16,
        batch_size=BATCH, num_workers=WORKERS, skip_bad_records=True, drop_last=False, hflip=False, randaugment=False,
        seed=0,
    )
    report, module = SkippedRecordsReport(), Trivial()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[report])
    faulthandler.dump_traceback_later(TIME_LIMIT_S, exit=True)  # a hang becomes a failure with every stack
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="albef_struct.lit.reliability"):
            trainer.fit(module, datamodule=data)
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - start
    assert elapsed < TIME_LIMIT_S

    # found when the JSON was read: excluded from the dataset, counted by reason
    assert dict(data.skip_report.counts) == LOAD_TIME
    dataset = data.train_dataset
    assert len(dataset) == N_RECORDS - sum(LOAD_TIME.values())
    # found by the workers: dropped from their batches, counted in n_skipped, summed by the callback
    unreadable = {i for i, rec in enumerate(dataset.records) if rec.row in set(stress_data["unreadable_rows"])}
    assert len(unreadable) == sum(ACCESS_TIME.values())
    assert report.totals["train"] == len(unreadable)
    assert float(trainer.callback_metrics["train/skipped_records"]) == len(unreadable)
    # every readable record trained on exactly once, no unreadable one
    assert sorted(module.seen) == sorted(set(range(len(dataset))) - unreadable)
    assert trainer.global_step == -(-len(dataset) // BATCH)
    # reported at the end of the epoch and of training
    assert f"epoch 0: skipped {len(unreadable)} train record(s) whose image could not be read" in caplog.text
    assert (f"training skipped {len(unreadable)} unreadable record(s) while loading batches and, when reading the "
            f"annotation files, skipped {sum(LOAD_TIME.values())} bad record(s)") in caplog.text


@pytest.mark.slow
def test_without_skipping_an_unreadable_image_stops_the_workers_naming_file_record_and_field(stress_data):
    records = json.loads(stress_data["file"].read_text())
    row = stress_data["unreadable_rows"][0]
    readable = [rec for i, rec in enumerate(records) if i not in stress_data["bad_rows"]][:2 * BATCH]
    path = stress_data["root"] / "strict.json"
    path.write_text(json.dumps(readable[:BATCH + 7] + [records[row]] + readable[BATCH + 7:]))
    data = PretrainDataModule(train_files=[str(path)], image_root=str(stress_data["root"]), image_res=16,
                              batch_size=BATCH, num_workers=WORKERS, hflip=False, randaugment=False)
    data.setup("fit")
    # torch re-raises a worker's exception as RuntimeError("Caught BadRecordError in DataLoader worker process N
    # ... BadRecordError: <message>") (BadRecordError takes keyword arguments); the message is intact
    expected = (rf"(?s)Caught BadRecordError in DataLoader worker process.*strict\.json, record {BATCH + 7}, "
                rf"field 'image', image .*bad_{row:05d}\.jpg: unreadable image: found (an empty \(0-byte\) file|"
                r"a file PIL cannot decode).*skip_bad_records")
    with pytest.raises(RuntimeError, match=expected):
        for _ in data.train_dataloader():
            pass


def test_pretraining_skips_a_batch_whose_records_were_all_unreadable():
    module = PretrainModule(arch=TINY_ARCH, queue_size=64, k_test=4)
    assert module.training_step({"n_skipped": torch.tensor(8)}, 0) is None  # Lightning skips the step
