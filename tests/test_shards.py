"""Tar shards (webdataset): conversion, streaming by rank x worker, the JSON path's samples, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import webdataset as wds

from albef_struct.data import PretrainDataModule
from albef_struct.data.bad_records import BadRecordError
from albef_struct.data.collate import ImageTextCollate
from albef_struct.data.datasets import PretrainDataset
from albef_struct.data.shards import MANIFEST, ShardLoader, ShardManifest, ShardStream, write_shards
from albef_struct.data.tokenizer import ALBEFTokenizer
from albef_struct.data.transforms import pretrain_transform
from albef_struct.data_prep.demo_data import generate
from albef_struct.data_prep.make_shards import main as make_shards_main

RECORDS, SHARD_SIZE, BATCH = 48, 6, 4
TRANSFORM = pretrain_transform(32, (0.5, 1.0), False, False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate(root, image_size=32, n_train=RECORDS, n_val=4, n_test=4)
    assert len(json.loads((root / "pretrain.json").read_text())) == RECORDS
    return root


@pytest.fixture(scope="module")
def shards(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "pretrain"
    manifest, report = write_shards([demo / "pretrain.json"], out, image_root=demo, shard_size=SHARD_SIZE)
    assert report.total == 0 and manifest.total == RECORDS and manifest.counts == (SHARD_SIZE,) * (RECORDS // SHARD_SIZE)
    return out


def indices(loader) -> list[int]:
    return [int(i) for batch in loader for i in (batch["index"] if isinstance(batch, dict) else [it["index"] for it in batch])]


def stream(shards: Path, workers: int = 0, seed: int = 0, **kwargs) -> ShardStream:
    return ShardStream([shards], TRANSFORM, BATCH, workers, seed=seed, shuffle_buffer=5, **kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_yields_every_record_once_as_the_json_path_makes_it(demo, shards, workers):
    data = stream(shards, workers, seed=7)
    assert data.left_out_per_epoch == 0 and len(data) == RECORDS
    loader = ShardLoader(data, collate_fn=list)
    items = [it for batch in loader for it in batch]
    assert len(loader) == RECORDS // BATCH and sorted(it["index"] for it in items) == list(range(RECORDS))
    reference = PretrainDataset([demo / "pretrain.json"], demo, TRANSFORM, seed=7)
    for it in items[:6]:  # caption choice, augmentation and image ids are drawn as the JSON path draws them
        ref = reference[it["index"]]
        assert it["text"] == ref["text"] and it["image_idx"] == ref["image_idx"]
        torch.testing.assert_close(it["image"], ref["image"], rtol=0, atol=0)


def test_orders_depend_on_seed_and_epoch_only(shards):
    first = indices(ShardLoader(stream(shards, seed=1), collate_fn=list))
    again = indices(ShardLoader(stream(shards, seed=1), collate_fn=list))
    loader = ShardLoader(stream(shards, seed=1), collate_fn=list)
    epoch0, epoch1 = indices(loader), indices(loader)  # a second pass is the next epoch
    assert first == again == epoch0 and sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    assert indices(ShardLoader(stream(shards, seed=2), collate_fn=list)) != first


def test_ranks_and_workers_read_disjoint_shards_that_cover_the_data(shards):
    seen = []
    for rank in range(2):
        data = stream(shards, workers=2)
        data.configure(rank, 2)  # 8 shards for 4 streams
        seen.append(indices(ShardLoader(data, collate_fn=list)))
    assert len(seen[0]) == len(seen[1]) == RECORDS // 2 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(RECORDS))


def test_uneven_streams_yield_equal_whole_batches_and_count_what_is_left_out(shards):
    data = stream(shards, workers=3)  # 8 shards to 3 streams: 18, 18 and 12 samples
    assert data.quota == 12 and data.left_out_per_epoch == 12 and data.batches_per_epoch == 9
    seen = indices(ShardLoader(data, collate_fn=list))
    assert len(seen) == 36 == len(set(seen))
    with pytest.raises(ValueError, match=r"8 shard\(s\) for 10 streams .* --shard-size"):
        stream(shards, workers=5).configure(0, 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_continues_with_the_same_batches(shards, workers):
    uninterrupted = ShardLoader(stream(shards, workers, seed=3), collate_fn=list)
    uninterrupted.load_state_dict({"epoch": 1, "batches": 0, "length": len(uninterrupted)})
    expected = [[it["index"] for it in batch] for batch in uninterrupted]
    first = ShardLoader(stream(shards, workers, seed=3), collate_fn=list)
    first.load_state_dict({"epoch": 1, "batches": 0, "length": len(first)})
    head = []
    for batch in first:
        head.append([it["index"] for it in batch])
        if len(head) == 5:  # odd: with two workers the resumed pass starts on the second worker's stream
            break
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 5, "length": RECORDS // BATCH}
    resumed = ShardLoader(stream(shards, workers, seed=3), collate_fn=list)
    resumed.load_state_dict(state)
    assert head + [[it["index"] for it in batch] for batch in resumed] == expected
    resumed.load_state_dict({**state, "batches": len(resumed)})  # saved at the epoch's end: the next epoch, whole
    assert len(indices(resumed)) == RECORDS and resumed.state_dict()["epoch"] == 2


def _write_shard(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def test_a_corrupt_image_in_a_shard_is_named_or_skipped_and_counted(tmp_path, demo):
    good = (demo / json.loads((demo / "pretrain.json").read_text())[0]["image"]).read_bytes()
    samples = [{"__key__": f"{i:09d}", "jpg": b"not a jpeg" if i == 2 else good,
                "json": json.dumps({"caption": "a red circle", "index": i, "image_idx": i, "image": f"img{i}.jpg"}).encode()}
               for i in range(4)]
    _write_shard(tmp_path / "shard-000000.tar", samples)
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": "pretrain", "total": 4,
                                                 "shards": [{"file": "shard-000000.tar", "count": 4}]}))
    with pytest.raises(BadRecordError, match=r"shard-000000.tar, record 2, field 'image', image img2.jpg: unreadable"):
        list(ShardLoader(ShardStream([tmp_path], TRANSFORM, 4, shuffle_buffer=0), collate_fn=list))
    collate = ImageTextCollate(ALBEFTokenizer(), 25)
    loader = ShardLoader(ShardStream([tmp_path], TRANSFORM, 4, shuffle_buffer=0, skip_bad_records=True), collate_fn=collate)
    (batch,) = list(loader)
    assert int(batch["n_skipped"]) == 1 and batch["index"].tolist() == [0, 1, 3]


def test_conversion_names_a_missing_image_or_counts_it(tmp_path, demo):
    records = json.loads((demo / "pretrain.json").read_text())[:6]
    records[4]["image"] = "images/no_such_file.jpg"
    source = tmp_path / "broken.json"
    source.write_text(json.dumps(records))
    with pytest.raises(BadRecordError, match=r"broken.json, record 4.*missing image"):
        write_shards([source], tmp_path / "a", image_root=demo, shard_size=4)
    manifest, report = write_shards([source], tmp_path / "b", image_root=demo, shard_size=4, skip_bad_records=True)
    assert report.total == 1 and manifest.counts == (4, 1) and manifest.total == 5  # indices stay those of the records
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards([source], tmp_path / "b", image_root=demo, skip_bad_records=True)


def test_manifest_problems_are_named(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=r"no shards.json; .*make_shards"):
        ShardManifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(ValueError, match=r"shards.json: not a shard manifest"):
        ShardManifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": "pretrain", "total": 6,
                                                 "shards": [{"file": "shard-000000.tar", "count": 6}]}))
    with pytest.raises(FileNotFoundError, match=r"names 1 shard\(s\) that are missing"):
        ShardManifest.read(tmp_path)


def test_make_shards_command(tmp_path, demo, capsys):
    assert make_shards_main(["--json", str(demo / "pretrain.json"), "--image-root", str(demo), "--out",
                             str(tmp_path / "s"), "--shard-size", "20"]) == 0
    assert f"{RECORDS} samples of {RECORDS} records in 3 shard(s)" in capsys.readouterr().out
    assert ShardManifest.read(tmp_path / "s").counts == (20, 20, 8)


def test_datamodule_trains_from_shards_and_resumes_mid_epoch(tmp_path, demo, shards):
    """A Lightning fit on ``format: shards`` (the decomposable loss sized from the record count) and a run
    resumed from a mid-epoch checkpoint train on the batches the uninterrupted run trained on."""
    from albef_struct.lit.pretrain import PretrainModule
    from albef_struct.lit.schedule import OptimConfig
    from tests.conftest import tiny_config

    class Record(pl.Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.batches.append(batch["index"].tolist())

    def fit(root: Path, ckpt: Path | None = None, save_every: int | None = None) -> list:
        pl.seed_everything(0)
        module = PretrainModule(arch=tiny_config(), optim=OptimConfig(lr=1e-4, warmup_steps=0), contrastive="decomposable",
                                itm_weight=0.0, mlm_weight=0.0)
        data = PretrainDataModule(train_files=[str(shards)], format="shards", image_res=32, batch_size=BATCH,
                                  num_workers=2, shuffle_buffer=5, hflip=False, randaugment=False, seed=1)
        record = Record()
        callbacks = [record]
        if save_every:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1,
                                                          filename="{step}"))
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=bool(save_every), callbacks=callbacks,
                             default_root_dir=root)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        assert module.contrastive.num_samples == RECORDS
        return record.batches

    full = fit(tmp_path / "full", save_every=17)
    assert len(full) == 2 * RECORDS // BATCH and sorted(sum(full[:12], [])) == list(range(RECORDS))
    assert full[12:] != full[:12]  # the second epoch has its own order
    resumed = fit(tmp_path / "resumed", ckpt=tmp_path / "full" / "step=17.ckpt")
    assert resumed == full[17:]
