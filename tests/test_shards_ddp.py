"""Shards under Lightning's DDP on two CPU processes (gloo): the ranks train on disjoint samples that cover the data.

Each rank runs ``Trainer(strategy=ddp, devices=2)`` on ``PretrainDataModule(format="shards")`` with one loader
worker per rank (4 streams of 2 shards each) for one epoch of the decomposable loss, and saves the sample
indices of every batch it trained on.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tests.ddp_launch import launch

pytestmark = pytest.mark.slow

WORLD, RECORDS, SHARD_SIZE, BATCH, WORKERS = 2, 48, 6, 4, 2


def worker(rank: int, out: Path) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    from albef_struct.data import PretrainDataModule
    from albef_struct.lit.pretrain import PretrainModule
    from albef_struct.lit.schedule import OptimConfig
    from tests.conftest import tiny_config

    torch.set_num_threads(1)
    seen: list[list[int]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(batch["index"].tolist())

    pl.seed_everything(0)
    module = PretrainModule(arch=tiny_config(), optim=OptimConfig(lr=1e-4, warmup_steps=0), contrastive="decomposable",
                            itm_weight=0.0, mlm_weight=0.0)
    data = PretrainDataModule(train_files=[str(out / "shards")], format="shards", image_res=32, batch_size=BATCH,
                              num_workers=WORKERS, shuffle_buffer=5, hflip=False, randaugment=False, seed=1)
    strategy = DDPStrategy(process_group_backend="gloo", broadcast_buffers=False, find_unused_parameters=True,
                           timeout=timedelta(seconds=60))
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD, strategy=strategy, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Record()], default_root_dir=out / "run")
    trainer.fit(module, datamodule=data)
    (out / f"rank{rank}.json").write_text(json.dumps({"batches": seen, "num_samples": module.contrastive.num_samples,
                                                      "length": len(trainer.train_dataloader)}))


def test_two_ranks_train_on_disjoint_samples_that_cover_the_epoch(tmp_path):
    from albef_struct.data.shards import write_shards
    from albef_struct.data_prep.demo_data import generate

    generate(tmp_path / "demo", image_size=32, n_train=RECORDS, n_val=4, n_test=4)
    write_shards([tmp_path / "demo" / "pretrain.json"], tmp_path / "shards", image_root=tmp_path / "demo",
                 shard_size=SHARD_SIZE)
    for rank, result in enumerate(launch("tests.test_shards_ddp", tmp_path, WORLD, timeout_s=240)):
        assert result.returncode == 0, f"DDP worker failed:\n{result.stdout[-4000:]}"
        assert f"MEMBER: {rank + 1}/{WORLD}" in result.stdout
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    per_rank = RECORDS // WORLD // BATCH
    assert [len(r["batches"]) for r in ranks] == [per_rank, per_rank]  # equal step counts: no rank waits forever
    assert all(r["length"] == per_rank and r["num_samples"] == RECORDS for r in ranks)
    samples = [sum(r["batches"], []) for r in ranks]
    assert not set(samples[0]) & set(samples[1])
    assert sorted(samples[0] + samples[1]) == list(range(RECORDS))


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))
