"""DataModules end to end over tiny files: loaders, batches, epochs, workers, Lightning integration."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from albef_struct.data import (
    NLVRDataModule,
    PretrainDataModule,
    RetrievalDataModule,
    VEDataModule,
    VQADataModule,
)
from tests.data_fixtures import make_images, nlvr_file, pretrain_files, retrieval_train_file, ve_file, vqa_files, write_json

SMALL = dict(image_res=16, num_workers=0, batch_size=2, eval_batch_size=3)


def _many_pretrain(tmp_path, n=8):
    """``n`` images with three captions each."""
    root = tmp_path / "images"
    names = make_images(root, n)
    recs = [{"image": name, "caption": [f"first {i}", f"second {i}", f"third {i}"]} for i, name in enumerate(names)]
    evals = [{"image": name, "caption": [f"eval {i} a", f"eval {i} b"]} for i, name in enumerate(names[:3])]
    return str(root), write_json(tmp_path / "p.json", recs), write_json(tmp_path / "e.json", evals)


def test_pretrain_datamodule_end_to_end(tmp_path):
    files = pretrain_files(tmp_path)
    dm = PretrainDataModule(train_files=[files["train"]], val_file=files["eval"], image_root=files["root"], **SMALL)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 4 records, batch 2, drop_last
    b = batches[0]
    assert set(b) == {"image", "input_ids", "attention_mask", "index", "image_idx", "n_skipped"}
    assert b["image"].shape == (2, 3, 16, 16) and b["input_ids"].shape[1] <= 25
    assert sorted(torch.cat([x["index"] for x in batches]).tolist()) == [0, 1, 2, 3]
    images, texts = dm.val_dataloader()
    ev = dm.eval_sets["val"]
    assert ev.img2txt == [[0, 1], [2, 3], [4, 5], [6, 7]] and ev.txt2img == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [x["image_index"].tolist() for x in images] == [[0, 1, 2], [3]]
    text_batches = list(texts)
    assert text_batches[0]["input_ids"].shape == (3, 30)
    assert torch.cat([x["text_index"] for x in text_batches]).tolist() == list(range(8))
    assert dm.test_dataloader() == []  # no test file
    assert dm.skip_report.total == 0
    assert dm.hparams["batch_size"] == 2 and dm.hparams["image_res"] == 16


def test_training_order_and_captions_reproducible(tmp_path):
    root, train, _ = _many_pretrain(tmp_path)

    def epoch_texts(seed, epoch):
        dm = PretrainDataModule(train_files=[train], image_root=root, seed=seed, **SMALL)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [t for b in loader for t in b["input_ids"].tolist()]

    assert epoch_texts(1, 0) == epoch_texts(1, 0)
    assert epoch_texts(1, 0) != epoch_texts(1, 1)
    assert epoch_texts(1, 0) != epoch_texts(2, 0)


def test_full_epochs_with_two_persistent_workers(tmp_path):
    root, train, _ = _many_pretrain(tmp_path)
    dm = PretrainDataModule(train_files=[train], image_root=root, image_res=16, batch_size=3, num_workers=2,
                            drop_last=False, seed=7)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    ds = dm.train_dataset
    tok = dm.tokenizer
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(b["index"]) for b in batches) == 8 and sum(int(b["n_skipped"]) for b in batches) == 0
        for b in batches:
            expected = tok([f"{ds.caption(i, epoch)}" for i in b["index"].tolist()], max_length=25)["input_ids"]
            assert torch.equal(b["input_ids"], expected)  # workers saw the epoch set in the main process
        assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(8))


class _Recorder(pl.LightningModule):
    """Records what the trainer feeds it; trains one dummy parameter."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}
        self.texts: dict[int, list[list[int]]] = {}
        self.val_seen: dict[int, int] = {0: 0, 1: 0}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        self.texts.setdefault(self.current_epoch, []).extend(batch["input_ids"].tolist())
        return (self.w * batch["image"].mean()).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_seen[dataloader_idx] += len(batch["image_index"] if dataloader_idx == 0 else batch["text_index"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_sets_epochs_and_runs_two_eval_loaders(tmp_path):
    root, train, evals = _many_pretrain(tmp_path)
    pl.seed_everything(11, workers=True)
    dm = PretrainDataModule(train_files=[train], val_file=evals, image_root=root, **SMALL)
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert dm.seed == 11  # taken from seed_everything
    ds, tok = dm.train_dataset, dm.tokenizer
    for epoch in (0, 1):
        assert sorted(model.seen[epoch]) == list(range(8))
        expected = tok([ds.caption(i, epoch) for i in model.seen[epoch]], max_length=25)["input_ids"]
        got = [row[: expected.shape[1]] for row in model.texts[epoch]]
        assert got == expected.tolist()
    assert model.seen[0] != model.seen[1]  # reshuffled each epoch
    assert model.val_seen == {0: 2 * 3, 1: 2 * 6}  # 3 images and 6 texts, validated after each epoch


def test_retrieval_datamodule(tmp_path):
    files = retrieval_train_file(tmp_path, n_images=3, captions_per_image=2)
    evals = write_json(tmp_path / "ann" / "val.json", [{"image": n, "caption": ["x y", "z"]} for n in files["names"]])
    dm = RetrievalDataModule(train_file=files["train"], val_file=evals, test_file=evals, image_root=files["root"], **SMALL)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_idx"].dtype == torch.long and batch["image"].shape == (2, 3, 16, 16)
    assert len(dm.val_dataloader()) == 2
    dm.setup("test")
    assert dm.eval_sets["test"].txt2img == [0, 0, 1, 1, 2, 2]
    assert len(dm.test_dataloader()) == 2


def test_vqa_datamodule(tmp_path):
    files = vqa_files(tmp_path)
    dm = VQADataModule(train_files=[files["train"]], val_file=files["test"], test_file=files["test"],
                       answer_list=files["answers"], image_root=files["root"], vg_root=files["vg_root"], **SMALL)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["answer_ids"].shape[0] == int(batch["answers_per_question"].sum())
    assert batch["answer_weights"].shape == (batch["answer_ids"].shape[0],)
    val = next(iter(dm.val_dataloader()))
    assert val["question_id"].tolist() == [7, 8, 9] and len(val["answers"]) == 3
    assert dm.answer_list == ["red", "dark red", "yes", "no", "two", "circle"]
    tokens = dm.answer_list_tokens
    assert tokens["input_ids"].shape[0] == 6 and (tokens["input_ids"][:, 0] == 101).all()
    assert tokens["input_ids"][1].tolist()[:4] == [101, 2601, 2417, 102]  # "dark red"
    dm.setup("predict")
    assert len(list(dm.predict_dataloader())) == 1


def test_nlvr_and_ve_datamodules(tmp_path):
    nlvr = nlvr_file(tmp_path)
    dm = NLVRDataModule(train_file=nlvr["file"], val_file=nlvr["file"], image_root=nlvr["root"], hflip=False, **SMALL)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert set(b) >= {"image0", "image1", "input_ids", "attention_mask", "label", "n_skipped"}
    assert sum(len(x["label"]) for x in dm.val_dataloader()) == 4
    assert dm.test_dataloader() == []
    ve = ve_file(tmp_path)
    dm = VEDataModule(train_file=ve["file"], test_file=ve["file"], image_root=ve["root"], **SMALL)
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["label"].tolist() == [2, 1, 0]


def test_skip_report_and_runtime_skips(tmp_path):
    files = pretrain_files(tmp_path)
    broken = write_json(tmp_path / "ann" / "broken.json", [{"image": "missing.jpg", "caption": "x"}])
    (tmp_path / "images" / "img2.jpg").write_bytes(b"")
    dm = PretrainDataModule(train_files=[files["train"], broken], image_root=files["root"], skip_bad_records=True,
                            drop_last=False, **{**SMALL, "batch_size": 4})
    dm.setup("fit")
    assert dm.skip_report.counts == {"missing image": 1}
    batches = list(dm.train_dataloader())
    assert sum(int(b["n_skipped"]) for b in batches) == 1  # the empty image, found when read
    assert sum(len(b["index"]) for b in batches) == 3


def test_helpful_errors(tmp_path):
    files = pretrain_files(tmp_path)
    dm = PretrainDataModule(train_files=[files["train"]], image_root=files["root"], **{**SMALL, "batch_size": 16})
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        dm.train_dataloader()
    dm.setup("fit")
    with pytest.raises(ValueError, match="fewer than batch_size=16"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="answer_list"):
        VQADataModule(train_files=None, **SMALL).answer_list


def test_cli_style_configuration():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VQADataModule, "data")
    cfg = parser.parse_args(["--data.train_files=[a.json]", "--data.hflip=false", "--data.crop_scale=[0.3, 1.0]"])
    assert cfg.data.train_files == ["a.json"] and cfg.data.hflip is False
    assert cfg.data.image_res == 384 and cfg.data.batch_size == 32  # inherited arguments are configurable
