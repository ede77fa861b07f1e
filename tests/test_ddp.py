"""Two CPU processes (gloo) through Lightning's DDP strategy against one process on the combined batch.

The test starts two worker processes of this file (``python -m tests.test_ddp``)
with Lightning's launch variables (``LOCAL_RANK``, ``NODE_RANK``, ``MASTER_*``),
so each runs ``Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy("gloo"))``
exactly as a ``torchrun``/SLURM launch would. Each worker trains one step per
contrastive loss and runs one retrieval evaluation, and saves what it saw; the
test computes the single-process references itself and compares.

ITM and MLM are off (``itm_weight = mlm_weight = 0``): ALBEF draws hard negatives
per rank from the local batch, so they cannot match a single process on the
combined batch. Dropout is off, weights start from the same file, and DDP runs
with ``broadcast_buffers=False``: the queue and the per-sample state stay
identical on every rank because every rank applies the same gathered update.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig
from tests.conftest import tiny_config
from tests.ddp_launch import launch

pytestmark = pytest.mark.slow

WORLD, PER_RANK = 2, 4
NUM_SAMPLES = 32  # size of the decomposable loss's per-sample state
EVAL_IMAGES, CAPTIONS_PER_IMAGE = 7, 3  # 7 images: the distributed sampler pads rank 1
CASES = ("infonce", "decomposable", "infonce_queue")
WORKER_TIMEOUT_S = 150


# --- shared by the workers and the test ---------------------------------------------------------
class EvalModule(PretrainModule):
    """``PretrainModule`` that also saves the re-ranked score matrices on rank 0."""

    def _finish_retrieval(self, stage: str):
        """Also save the re-ranked score matrices (rank 0), to compare more than the rounded recalls."""
        from albef_struct.lit import retrieval_eval

        original, captured = retrieval_eval.rerank, {}

        def recording(*args, **kwargs):
            captured["scores"] = original(*args, **kwargs)
            return captured["scores"]

        retrieval_eval.rerank = recording
        try:
            result = super()._finish_retrieval(stage)
        finally:
            retrieval_eval.rerank = original
        if "scores" in captured and self.trainer.is_global_zero:
            Path(self.results_dir).mkdir(parents=True, exist_ok=True)
            torch.save(captured["scores"], Path(self.results_dir) / f"scores_{stage}.pt")
        return result


def build_module(contrastive: str, cls: type[PretrainModule] = PretrainModule) -> PretrainModule:
    arch = tiny_config()
    arch = replace(arch, text=replace(arch.text, hidden_dropout=0.0, attention_dropout=0.0))
    args = {"num_samples": NUM_SAMPLES, "feature_dim": arch.embed_dim} if contrastive == "decomposable" else {}
    torch.manual_seed(0)
    return cls(
        arch=arch, optim=OptimConfig(lr=1e-4, warmup_steps=0), queue_size=16, contrastive=contrastive,
        contrastive_args=args, itm_weight=0.0, mlm_weight=0.0, alpha_warmup=False, k_test=3,
    )


def build_frozen_nlvr():
    """A tiny NLVR2 module that fine-tunes on a fixed image encoder (``optim.freeze``)."""
    from albef_struct.tasks.nlvr import NLVRModule

    arch = tiny_config()
    arch = replace(arch, text=replace(arch.text, hidden_dropout=0.0, attention_dropout=0.0))
    torch.manual_seed(0)
    return NLVRModule(arch=arch, optim=OptimConfig(lr=1e-3, warmup_steps=0, freeze=["visual_encoder"]), distill=False)


def nlvr_rank_batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    ids = torch.randint(1000, 30000, (PER_RANK, 6), generator=g)
    ids[:, 0] = 101
    return {"image0": torch.randn(PER_RANK, 3, 32, 32, generator=g), "image1": torch.randn(PER_RANK, 3, 32, 32, generator=g),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.arange(PER_RANK) % 2}


def initial_state(contrastive: str) -> dict[str, torch.Tensor]:
    """The module's starting weights; the decomposable loss's feature bank starts half filled."""
    module = build_module(contrastive)
    if contrastive == "decomposable":
        g = torch.Generator().manual_seed(1)
        loss = module.contrastive
        for bank in (loss.bank_image, loss.bank_text):
            bank.copy_(torch.nn.functional.normalize(torch.randn(bank.shape, generator=g), dim=-1))
        loss.visits.copy_((torch.arange(NUM_SAMPLES) % 2 == 0).long())
    return module.state_dict()


def global_batch() -> dict[str, torch.Tensor]:
    """The combined batch; rank r holds rows ``[r * PER_RANK, (r + 1) * PER_RANK)``."""
    g = torch.Generator().manual_seed(2)
    n, length = WORLD * PER_RANK, 8
    ids = torch.randint(1000, 30000, (n, length), generator=g)
    ids[:, 0] = 101
    mask = (torch.arange(length)[None] < torch.randint(4, length + 1, (n,), generator=g)[:, None]).long()
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "input_ids": ids * mask,
        "attention_mask": mask,
        "index": torch.randperm(NUM_SAMPLES, generator=g)[:n],
    }


def rank_batch(rank: int) -> dict[str, torch.Tensor]:
    return {k: v[rank * PER_RANK : (rank + 1) * PER_RANK] for k, v in global_batch().items()}


def saved_state(module: PretrainModule) -> dict[str, torch.Tensor]:
    """The cross-rank state: queue buffers and the decomposable loss's per-sample state."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(("queue.", "contrastive."))}


class Items(Dataset):
    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def trimmed_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack, and cut texts to the batch's longest caption (ranks then see different lengths)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    if "attention_mask" in batch:
        width = int(batch["attention_mask"].sum(1).max())
        batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :width], batch["attention_mask"][:, :width]
    return batch


def eval_loaders() -> list[DataLoader]:
    """Retrieval evaluation pair: an image loader and a caption loader (ALBEF's layout)."""
    g = torch.Generator().manual_seed(3)
    images = [{"image": torch.randn(3, 32, 32, generator=g), "image_index": torch.tensor(i)} for i in range(EVAL_IMAGES)]
    texts = []
    for t in range(EVAL_IMAGES * CAPTIONS_PER_IMAGE):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.zeros(9, dtype=torch.long)
        ids[:length] = torch.randint(1000, 30000, (length,), generator=g)
        ids[0] = 101
        texts.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "text_index": torch.tensor(t),
                      "image_index": torch.tensor(t // CAPTIONS_PER_IMAGE)})
    return [DataLoader(Items(items), batch_size=3, collate_fn=trimmed_collate) for items in (images, texts)]


def trainer(devices: int, root: Path, callbacks: list | None = None, find_unused: bool = True, **kwargs):
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    strategy = "auto"
    if devices > 1:
        strategy = DDPStrategy(
            process_group_backend="gloo", broadcast_buffers=False, find_unused_parameters=find_unused,
            timeout=timedelta(seconds=60),
        )
    return pl.Trainer(
        accelerator="cpu", devices=devices, num_nodes=1, strategy=strategy, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=root, callbacks=callbacks or [], **kwargs,
    )


# --- the worker ---------------------------------------------------------------------------------------
def _capture_callback():
    import pytorch_lightning as pl

    class Capture(pl.Callback):
        """Loss, the synchronised gradients (before the optimizer step) and the cross-rank state."""

        def __init__(self) -> None:
            self.record: dict = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.record["grads"] = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.record["loss"] = outputs["loss"].detach().clone()
            self.record["state"] = saved_state(pl_module)

    return Capture()


def worker(rank: int, out: Path) -> None:
    torch.set_num_threads(1)
    for case in CASES:
        module = build_module(case)
        module.load_state_dict(torch.load(out / f"init_{case}.pt", weights_only=True))
        capture = _capture_callback()
        loader = DataLoader(Items([rank_batch(rank)]), batch_size=None)
        trainer(WORLD, out / "ddp", [capture], max_steps=1, use_distributed_sampler=False).fit(module, loader)
        torch.save(capture.record, out / f"{case}_rank{rank}.pt")
    module = build_module("infonce", EvalModule)
    module.load_state_dict(torch.load(out / "init_infonce.pt", weights_only=True))
    trainer(WORLD, out / "eval_ddp").test(module, eval_loaders(), verbose=False)
    # DDP's default (no unused-parameter search): a frozen encoder must be frozen before DDP is built
    module = build_frozen_nlvr()
    module.load_state_dict(torch.load(out / "init_nlvr_frozen.pt", weights_only=True))
    loader = DataLoader(Items([nlvr_rank_batch(rank, step) for step in range(2)]), batch_size=None)
    trainer(WORLD, out / "frozen_ddp", find_unused=False, max_steps=2, use_distributed_sampler=False).fit(module, loader)
    torch.save(module.model.state_dict(), out / f"nlvr_frozen_rank{rank}.pt")


# --- the test ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    for case in CASES:
        torch.save(initial_state(case), out / f"init_{case}.pt")
    torch.save(build_frozen_nlvr().state_dict(), out / "init_nlvr_frozen.pt")
    for rank, result in enumerate(launch("tests.test_ddp", out, WORLD, WORKER_TIMEOUT_S)):
        assert result.returncode == 0, f"DDP worker failed:\n{result.stdout[-4000:]}"
        assert f"MEMBER: {rank + 1}/{WORLD}" in result.stdout  # Lightning ran it as rank {rank} of 2
    return out


def single_process(out: Path, case: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss, gradients and state of one process on the combined batch."""
    module = build_module(case)
    module.load_state_dict(torch.load(out / f"init_{case}.pt", weights_only=True))
    module.train()
    loss = module.pretrain_losses(global_batch(), alpha=module.alpha)["loss"]
    loss.backward()
    module.on_after_backward()  # as Lightning calls it: the queue takes the batch's momentum features
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved_state(module)


def load_ranks(out: Path, case: str) -> list[dict]:
    return [torch.load(out / f"{case}_rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", ["infonce", "decomposable"])
def test_loss_and_gradients_equal_one_process_on_the_combined_batch(ddp_run, case):
    loss, grads, state = single_process(ddp_run, case)
    ranks = load_ranks(ddp_run, case)
    # DDP averages the ranks' gradients: the single-process loss is the mean of the rank losses
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # each rank's own anchors
    for r in ranks:
        assert r["grads"].keys() == grads.keys() and len(grads) > 10
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    if case == "decomposable":  # per-sample state: identical on both ranks and equal to one process
        for r in ranks:
            for name, value in state.items():
                torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert int((state["contrastive.visits"] > 0).sum()) > NUM_SAMPLES // 2  # this step visited new samples


def test_queue_receives_the_momentum_features_of_both_ranks(ddp_run):
    _, _, state = single_process(ddp_run, "infonce_queue")
    ranks = load_ranks(ddp_run, "infonce_queue")
    assert int(state["queue.ptr"]) == WORLD * PER_RANK
    initial = torch.load(ddp_run / "init_infonce_queue.pt", weights_only=True)
    assert not torch.equal(state["queue.image_feats"][:, : WORLD * PER_RANK], initial["queue.image_feats"][:, : WORLD * PER_RANK])
    for r in ranks:
        for name, value in state.items():
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_sharded_retrieval_evaluation_equals_one_process(ddp_run):
    import json

    module = build_module("infonce", EvalModule)
    module.load_state_dict(torch.load(ddp_run / "init_infonce.pt", weights_only=True))
    trainer(1, ddp_run / "eval_single").test(module, eval_loaders(), verbose=False)
    single = json.loads((ddp_run / "eval_single" / "retrieval_test.json").read_text())
    sharded = json.loads((ddp_run / "eval_ddp" / "retrieval_test.json").read_text())
    assert sharded["metrics"] == single["metrics"]
    assert sharded["chance"] == single["chance"]
    # every rank re-ranked its own rows: the gathered score matrices equal one process's
    for a, b in zip(torch.load(ddp_run / "eval_ddp" / "scores_test.pt"), torch.load(ddp_run / "eval_single" / "scores_test.pt")):
        assert a.shape == b.shape and EVAL_IMAGES in a.shape and EVAL_IMAGES * CAPTIONS_PER_IMAGE in a.shape
        assert torch.equal(a == -100, b == -100)  # the same top-k_test candidates
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_frozen_image_encoder_fine_tunes_under_strict_ddp(ddp_run):
    initial = {k.removeprefix("model."): v for k, v in torch.load(ddp_run / "init_nlvr_frozen.pt", weights_only=True).items()
               if k.startswith("model.")}
    ranks = [torch.load(ddp_run / f"nlvr_frozen_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, value in initial.items():
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)  # synchronised steps
        if name.startswith("visual_encoder."):
            assert torch.equal(ranks[0][name], value), name
    assert any(not torch.equal(ranks[0][n], v) for n, v in initial.items() if n.startswith("fusion_encoder."))


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))
