"""Two CPU processes (gloo) under ``FullyShardedStrategy`` (FSDP2) against DDP and against one process.

Each worker (``python -m tests.test_fsdp RANK OUT``, started as ``torchrun`` would) trains tiny
modules (pretraining as in ``tests.test_ddp``; SNLI-VE, NLVR2 and VQA fine-tuning) for two steps
under both strategies from the same weights and batches, and saves what it saw at the second step:
the loss, the gradients averaged over the ranks (gathered from the shards), the weights, the EMA
teacher, the queue and the decomposable loss's state. It then checks checkpointing (two steps
straight through, against one step, a checkpoint and a resumed step) and the handling of NaN/Inf.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from albef_struct.checkpoint.files import load_checkpoint_file
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig
from albef_struct.tasks.ve import VEModule
from tests.conftest import tiny_config
from tests.ddp_launch import launch
from tests.test_ddp import CASES, WORLD, Items, build_module, initial_state, rank_batch, trainer

pytestmark = pytest.mark.slow

WORKER_TIMEOUT_S = 240
FULL = "infonce_queue_itm_mlm"  # ALBEF's whole objective: hard negatives and MLM masks drawn per rank
CLIPPED = "infonce_queue_clipped"  # gradient norm clipping: the norm spans sharded and replicated gradients
CLIP_NORM = 0.05  # below this step's gradient norm, so clipping scales every gradient
CASE_LOSS = {FULL: "infonce_queue", CLIPPED: "infonce_queue"}
# fine-tuning tasks update the teacher after the student's forward, while the student's root is gathered;
# NLVR2's fusion encoder is one FSDP unit (tied keys/values), VQA adds the answer decoder
VE, NLVR, VQA = "ve", "nlvr", "vqa"
TASK_CASES = (VE, NLVR, VQA)
STEP_CASES = (*CASES, FULL, CLIPPED, *TASK_CASES)
INITIAL_STATES = (*CASES, *TASK_CASES)
RESUME_CASES = (("infonce_queue", True), ("infonce_queue", False), ("decomposable", True), (FULL, True))


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def task_module(case: str):
    """A tiny fine-tuning module with an EMA teacher (no dropout: both strategies see the same network)."""
    from albef_struct.tasks.nlvr import NLVRModule
    from albef_struct.tasks.vqa import VQAModule
    from tests.test_task_nlvr import tiny as nlvr_arch
    from tests.test_task_ve import NO_DROPOUT

    torch.manual_seed(0)
    optim = OptimConfig(lr=1e-3, warmup_steps=0)
    if case == NLVR:
        return NLVRModule(arch=nlvr_arch(), momentum=0.5, optim=optim)
    return {VE: VEModule, VQA: VQAModule}[case](arch=tiny_config(text=NO_DROPOUT), momentum=0.5, optim=optim)


def module_for(case: str) -> PretrainModule:
    if case in TASK_CASES:
        return task_module(case)
    module = build_module(CASE_LOSS.get(case, case))
    if case == FULL:
        module.itm_weight = module.mlm_weight = 1.0
    return module




def initial_state_of(case: str) -> dict[str, torch.Tensor]:
    return module_for(case).state_dict() if case in TASK_CASES else initial_state(case)


def step_batches(case: str, rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank ``rank``'s two batches: its half of the pretraining batch twice, or a task's own per step."""
    from tests.test_task_nlvr import nlvr_batch
    from tests.test_task_ve import make_batch
    from tests.test_task_vqa import make_train_batch

    def seed(step: int) -> int:
        return 10 * rank + step

    if case == VE:
        return [make_batch([0, 1, 2, rank], seed=seed(step)) for step in range(2)]
    if case == NLVR:
        return [nlvr_batch(4, seed=seed(step)) for step in range(2)]
    if case == VQA:
        return [make_train_batch(seed=seed(step)) for step in range(2)]
    return [rank_batch(rank)] * 2


def weights(module: PretrainModule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, whole (student, teacher, queue, per-sample state)."""
    state = {n: full_tensor(p) for n, p in module.named_parameters()}
    state.update({n: b.detach().clone() for n, b in module.named_buffers()})
    return state


# --- the worker ---------------------------------------------------------------------------------------
def fsdp_strategy(**kwargs):
    from albef_struct.lit.sharding import FullyShardedStrategy

    return FullyShardedStrategy(process_group_backend="gloo", timeout_s=60, **kwargs)


def fsdp_trainer(root: Path, callbacks: list | None = None, strategy=None, **kwargs):
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu", devices=WORLD, num_nodes=1, strategy=strategy or fsdp_strategy(), logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks or []),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=root, callbacks=callbacks or [], use_distributed_sampler=False, **kwargs,
    )


def _capture_callback():
    import pytorch_lightning as pl

    class Capture(pl.Callback):
        """Loss, gradients (averaged over the ranks, gathered whole) and every weight after the step."""

        def __init__(self) -> None:
            self.record: dict = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            from torch.distributed.tensor import DTensor

            self.record["grads"] = {n: full_tensor(p.grad) for n, p in pl_module.named_parameters() if p.grad is not None}
            self.record["sharded"] = sum(isinstance(p, DTensor) for p in pl_module.parameters())

            def as_stepped(opt, args, kwargs) -> None:  # after the update: the gradients as clipped and applied
                named = pl_module.named_parameters()
                self.record["stepped_grads"] = {n: full_tensor(p.grad) for n, p in named if p.grad is not None}
                handle.remove()

            handle = optimizer.register_step_post_hook(as_stepped)  # (a pre-hook would run before the closure)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.record["loss"] = outputs["loss"].detach().clone()
            self.record["after"] = weights(pl_module)

    return Capture()


def fit_two_steps(case: str, out: Path, rank: int, strategy: str) -> dict:
    import pytorch_lightning as pl

    module = module_for(case)
    module.load_state_dict(torch.load(out / f"init_{CASE_LOSS.get(case, case)}.pt", weights_only=True))
    capture = _capture_callback()
    loader = DataLoader(Items(step_batches(case, rank)), batch_size=None)
    pl.seed_everything(7 + rank, verbose=False)  # the same draws (hard negatives, MLM masks) under both strategies
    make = fsdp_trainer if strategy == "fsdp" else (lambda root, cbs, **kw: trainer(WORLD, root, cbs, **kw))
    clip = {"gradient_clip_val": CLIP_NORM} if case == CLIPPED else {}
    make(out / strategy, [capture], max_steps=2, **clip,
         **({} if strategy == "fsdp" else {"use_distributed_sampler": False})).fit(module, loader)
    return capture.record


def resume_run(out: Path, rank: int, case: str, sharded: bool) -> dict[str, dict]:
    """Two steps (epochs of one batch) straight; one step, a checkpoint, then the second step resumed from it.

    Every rank starts from the same seed: ``RNGStateCheckpoint`` saves rank 0's random state and
    restores it on every rank, so the resumed step draws what the straight run drew only where the
    ranks' states agree.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from albef_struct.lit.reliability import RNGStateCheckpoint

    # one batch an epoch (checkpoints at epoch ends); the loader's own generator keeps the start of an epoch
    # from drawing on the global RNG, as the DataModules' ResumableDataLoader does
    loader = DataLoader(Items([rank_batch(rank)]), batch_size=None, generator=torch.Generator().manual_seed(0))
    name = f"{case}_{'sharded' if sharded else 'full'}"

    def run(tag: str, steps: int, callbacks: list, ckpt_path: str | None = None) -> dict[str, torch.Tensor]:
        module = module_for(case)
        module.load_state_dict(torch.load(out / f"init_{CASE_LOSS.get(case, case)}.pt", weights_only=True))
        pl.seed_everything(11, verbose=False)
        strategy = fsdp_strategy(save_distributed_checkpoint=sharded)
        fsdp_trainer(out / f"{name}_{tag}", [RNGStateCheckpoint(), *callbacks], strategy=strategy,
                     max_steps=steps).fit(module, loader, ckpt_path=ckpt_path)
        return weights(module)

    checkpoint = ModelCheckpoint(dirpath=out / f"{name}_ckpt", save_last=True, save_top_k=0)  # at the epoch end
    return {
        "first": run("first", 1, [checkpoint]),
        "straight": run("straight", 2, []),
        "resumed": run("resumed", 2, [], ckpt_path=str(out / f"{name}_ckpt" / "last.ckpt")),
    }


def nonfinite_refusal(out: Path, rank: int) -> dict[str, str]:
    """Two epochs of one batch, a checkpoint at each end; before the second save rank 1's shard of one weight
    turns NaN. Returns what each rank raised and what the checkpoint folder holds then."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.distributed.tensor import DTensor

    class PoisonRankOne(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs before ModelCheckpoint's save
            if trainer.current_epoch == 1 and trainer.global_rank == 1:
                shard = next(p.to_local() for p in pl_module.model.parameters()
                             if isinstance(p, DTensor) and p.to_local().numel())
                with torch.no_grad():
                    shard.view(-1)[0] = float("nan")

    module = module_for("infonce_queue")
    module.load_state_dict(torch.load(out / "init_infonce_queue.pt", weights_only=True))
    folder = out / "nonfinite_ckpt"
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True)  # each epoch: epoch=E-step=S.ckpt and last.ckpt
    loader = DataLoader(Items([rank_batch(rank)]), batch_size=None)
    try:
        fsdp_trainer(out / "nonfinite", [PoisonRankOne(), checkpoint], max_steps=2).fit(module, loader)
        raised = ""
    except Exception as error:  # noqa: BLE001 -- recorded for the test to read
        raised = f"{type(error).__name__}: {error}"
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ["(no folder)"]
    return {"raised": raised, "files": " ".join(files)}


def skipped_nonfinite_gradient(out: Path, rank: int) -> dict:
    """One step whose gradient turns NaN in rank 1's shard only, under ``NonFiniteGuard(on_nonfinite="skip")``."""
    import pytorch_lightning as pl
    from torch.distributed.tensor import DTensor

    from albef_struct.lit.reliability import NonFiniteGuard

    class PoisonRankOneGradient(pl.Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_rank == 1:
                name, shard = next((n, p.grad.to_local()) for n, p in pl_module.named_parameters()
                                   if isinstance(p.grad, DTensor) and p.grad.to_local().numel())
                shard.view(-1)[0] = float("nan")

    module = module_for("infonce_queue")
    module.load_state_dict(torch.load(out / "init_infonce_queue.pt", weights_only=True))
    guard = NonFiniteGuard(on_nonfinite="skip")
    fsdp_trainer(out / "skip", [PoisonRankOneGradient(), guard], max_steps=1).fit(
        module, DataLoader(Items([rank_batch(rank)]), batch_size=None))
    return {"after": weights(module), "skipped": [reason for _, reason in guard.skipped]}


def worker(rank: int, out: Path) -> None:
    torch.set_num_threads(1)
    for case in STEP_CASES:
        for strategy in ("fsdp", "ddp"):
            torch.save(fit_two_steps(case, out, rank, strategy), out / f"{case}_{strategy}_rank{rank}.pt")
    for case, sharded in RESUME_CASES:
        torch.save(resume_run(out, rank, case, sharded), out / f"resume_{case}_{sharded}_rank{rank}.pt")
    torch.save(nonfinite_refusal(out, rank), out / f"nonfinite_rank{rank}.pt")
    torch.save(skipped_nonfinite_gradient(out, rank), out / f"skip_rank{rank}.pt")


# --- the tests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    for case in INITIAL_STATES:
        torch.save(initial_state_of(case), out / f"init_{case}.pt")
    for rank, result in enumerate(launch("tests.test_fsdp", out, WORLD, WORKER_TIMEOUT_S)):
        assert result.returncode == 0, f"FSDP worker failed:\n{result.stdout[-4000:]}"
        assert f"MEMBER: {rank + 1}/{WORLD}" in result.stdout  # Lightning ran it as rank {rank} of 2
    return out


# Float32 rounding, tensor by tensor: most cases come out bit-equal here, but a clipping norm summed over
# shards rounds differently from one summed over whole tensors, and Adam's first steps turn that into
# relative differences of up to 7e-6 of a tensor's largest value (4e-7 in the gradients).
RTOL, ATOL = 1e-5, 1e-9  # ATOL: for tensors that are analytically zero (attention key biases get ~1e-11 noise)


def assert_same_tensors(actual: dict, expected: dict, what: str, skip: dict | None = None) -> None:
    """Same names, and each tensor within ``RTOL`` of its largest value (+ ``ATOL``) of the expected one;
    ``skip`` maps names to boolean masks of elements left out."""
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual.keys() ^ expected.keys())}"
    for name, value in expected.items():
        if not value.is_floating_point():
            assert torch.equal(actual[name], value), f"{what} {name}"
            continue
        keep = ~skip[name] if skip and name in skip else torch.ones_like(value, dtype=torch.bool)
        scale = float(value.abs().max()) if value.numel() else 0.0
        difference = float((actual[name] - value).abs()[keep].max()) if keep.any() else 0.0
        assert difference <= RTOL * scale + ATOL, f"{what} {name}: differs by {difference:.3g} (largest value {scale:.3g})"


def noise_driven(grads: dict) -> dict:
    """Weights whose gradient is rounding noise (analytically zero: attention key biases), student and teacher.

    Adam divides a gradient by its own running magnitude, so a 1e-11 noise gradient moves its weight by
    a sizeable fraction of the learning rate, in a direction set by the noise; FSDP sums a tensor used by
    several fusion units (the image tokens) in another order than DDP, so those weights legitimately
    differ after a step, while every gradient still agrees within ATOL.
    """
    masks = {name: (grad != 0) & (grad.abs() <= ATOL) for name, grad in grads.items()}  # exact zeros move alike
    masks.update({f"teacher.{name}": mask for name, mask in masks.items()})
    return masks


@pytest.mark.parametrize("case", STEP_CASES)
def test_sharded_steps_equal_ddp(fsdp_run, case):
    """Same weights, same batches, same random draws: at the second step, FSDP's loss, averaged gradients
    and updated student, teacher, queue and per-sample state equal DDP's."""
    init = torch.load(fsdp_run / f"init_{CASE_LOSS.get(case, case)}.pt", weights_only=True)
    for rank in range(WORLD):
        fsdp = torch.load(fsdp_run / f"{case}_fsdp_rank{rank}.pt", weights_only=True)
        ddp = torch.load(fsdp_run / f"{case}_ddp_rank{rank}.pt", weights_only=True)
        assert fsdp["sharded"] > 50 and ddp["sharded"] == 0  # FSDP really held the weights as shards
        torch.testing.assert_close(fsdp["loss"], ddp["loss"], rtol=RTOL, atol=ATOL)
        assert len(ddp["grads"]) > 10
        assert_same_tensors(fsdp["grads"], ddp["grads"], f"rank {rank} gradient")
        skip = noise_driven(ddp["grads"])
        assert sum(int(m.sum()) for m in skip.values()) <= 0.01 * sum(m.numel() for m in skip.values())
        assert_same_tensors(fsdp["after"], ddp["after"], f"rank {rank} after two steps", skip)
        moved = [n for n in fsdp["after"].keys() & init.keys() if n.startswith(("model.", "teacher.", "queue.", "contrastive."))
                 and not torch.equal(fsdp["after"][n], init[n])]
        assert any(n.startswith("teacher.") for n in moved) and any(n.startswith("model.") for n in moved)
        if "queue" in case:
            assert any(n.startswith("queue.") for n in moved)
        if case == "decomposable":
            assert any(n.startswith("contrastive.") for n in moved)
        assert_same_tensors(fsdp["stepped_grads"], ddp["stepped_grads"], f"rank {rank} gradient as stepped")
    if case == CLIPPED:  # the clipping norm spans every rank's shards and the replicated temperature
        def total_norm(grads: dict) -> torch.Tensor:
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))

        assert total_norm(fsdp["grads"]) > 2 * CLIP_NORM
        torch.testing.assert_close(total_norm(fsdp["stepped_grads"]), torch.tensor(CLIP_NORM), rtol=1e-4, atol=0)
    if case == FULL:  # hard negatives and MLM: the fusion encoder and the ITM head were trained
        assert any(n.startswith("model.fusion_encoder.") for n in fsdp["grads"])
        assert any(n.startswith("model.itm_head.") for n in fsdp["grads"])


@pytest.mark.parametrize(("case", "sharded"), RESUME_CASES)
def test_resuming_from_a_checkpoint_equals_training_straight_through(fsdp_run, case, sharded):
    for rank in range(WORLD):
        runs = torch.load(fsdp_run / f"resume_{case}_{sharded}_rank{rank}.pt", weights_only=True)
        assert_same_tensors(runs["resumed"], runs["straight"], f"rank {rank} resumed")
        assert not all(torch.equal(runs["first"][n], runs["straight"][n]) for n in runs["straight"])  # a 2nd step ran
    last = fsdp_run / f"{case}_{'sharded' if sharded else 'full'}_ckpt" / "last.ckpt"
    assert last.is_dir() == sharded  # a folder of per-rank shards, or one gathered file


def test_a_gathered_checkpoint_loads_in_one_process_without_the_strategy(fsdp_run):
    checkpoint = torch.load(fsdp_run / "infonce_queue_full_ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    module = module_for("infonce_queue")
    module.load_state_dict(checkpoint["state_dict"])  # strict: every weight, teacher, queue
    first = torch.load(fsdp_run / "resume_infonce_queue_False_rank0.pt", weights_only=True)["first"]
    assert_same_tensors(weights(module), first, "loaded")
    (state,) = checkpoint["optimizer_states"]
    assert len(state["state"]) == sum(p.requires_grad for p in module.parameters())


def test_a_shard_holding_nan_stops_every_rank_and_keeps_the_previous_checkpoint(fsdp_run):
    ranks = [torch.load(fsdp_run / f"nonfinite_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[1]["raised"].startswith("NonFiniteCheckpointError: refusing to write")
    assert "epoch=1-step=2.ckpt" in ranks[1]["raised"] and "hold non-finite values" in ranks[1]["raised"]
    assert ranks[0]["raised"].startswith("RuntimeError: another rank refused")
    assert ranks[0]["files"] == "epoch=0-step=1.ckpt last.ckpt"  # the first epoch's, and no partial folder
    state = load_checkpoint_file(fsdp_run / "nonfinite_ckpt" / "last.ckpt")["state_dict"]  # and it is whole
    module_for("infonce_queue").load_state_dict(state)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_sharded_checkpoint_folder_reads_as_one_lightning_checkpoint(fsdp_run, tmp_path):
    """What ``init_from``, ``evaluate`` and the inference API read: the folder gathered in one process."""
    import shutil

    from albef_struct.checkpoint.errors import CheckpointError
    from albef_struct.checkpoint.source import source_from_payload

    folder = fsdp_run / "infonce_queue_sharded_ckpt" / "last.ckpt"
    payload = load_checkpoint_file(folder)
    assert payload["global_step"] == 1 and "pytorch-lightning_version" in payload
    module = module_for("infonce_queue")
    module.load_state_dict(payload["state_dict"])  # strict
    first = torch.load(fsdp_run / "resume_infonce_queue_True_rank0.pt", weights_only=True)["first"]
    assert_same_tensors(weights(module), first, "gathered")
    (optimizer,) = payload["optimizer_states"]
    assert len(optimizer["state"]) == sum(p.requires_grad for p in module.parameters())
    assert source_from_payload(payload, str(folder)).layout is not None
    from albef_struct.inference.loading import read_checkpoint  # the inference API, in one process

    loaded = read_checkpoint(folder).model.state_dict()
    student = {n.removeprefix("model."): v for n, v in first.items() if n.startswith("model.")}
    assert {n.rsplit(".", 1)[-1] for n in student.keys() - loaded.keys()} <= {"position_ids", "token_type_ids"}
    student = {n: v for n, v in student.items() if n in loaded}  # (non-persistent buffers are not in a file)
    assert len(student) > 50
    assert_same_tensors({n: loaded[n] for n in student}, student, "inference API")
    damaged = tmp_path / "damaged.ckpt"
    shutil.copytree(folder, damaged)
    (damaged / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"damaged.ckpt.*__R_0.distcp.*copy the whole folder"):
        load_checkpoint_file(damaged)


def test_a_nan_in_one_ranks_gradient_shard_skips_the_step_on_every_rank(fsdp_run):
    """The guard checks each rank's shards and the ranks agree: no weight, teacher or queue entry moves."""
    init = torch.load(fsdp_run / "init_infonce_queue.pt", weights_only=True)
    ranks = [torch.load(fsdp_run / f"skip_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for rank in ranks:
        (reason,) = rank["skipped"]
        assert reason == ranks[1]["skipped"][0] and reason.startswith("the gradient of model.") and "is NaN" in reason
        assert_same_tensors({n: rank["after"][n] for n in init if n in rank["after"]},
                            {n: v for n, v in init.items() if n in rank["after"]}, "after a skipped step")


def test_a_folder_replaced_only_once_the_new_one_is_complete(tmp_path):
    from albef_struct.lit.sharding import replace_folder

    target, partial = tmp_path / "last.ckpt", tmp_path / "last.ckpt.partial"
    for folder, text in ((target, "old"), (partial, "new")):
        folder.mkdir()
        (folder / "shard").write_text(text)
    replace_folder(partial, target)
    assert (target / "shard").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    partial.mkdir()
    (partial / "shard").write_text("first")
    replace_folder(partial, tmp_path / "fresh.ckpt")  # nothing there yet
    assert (tmp_path / "fresh.ckpt" / "shard").read_text() == "first"


def albef_struct_cli(*args: str, cwd: Path) -> str:
    """Run the installed ``albef-struct`` command (Lightning starts the second rank by re-running it)."""
    import os
    import shutil
    import subprocess

    command = shutil.which("albef-struct", path=str(Path(sys.executable).parent)) or shutil.which("albef-struct")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    result = subprocess.run([command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"albef-struct {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result.stdout


def test_cli_strategy_fsdp_trains_and_its_sharded_checkpoint_tests_alike_in_one_process(tmp_path, demo_dir):
    """``--trainer.strategy fsdp`` on 2 CPU processes; testing the checkpoint folder in one process and
    under FSDP gives the same retrieval metrics."""
    import json

    from tests.test_cli import write_config

    config = str(write_config(tmp_path, demo_dir))
    fsdp = ("--trainer.strategy", "fsdp", "--trainer.devices", "2")
    albef_struct_cli("fit", "--config", config, *fsdp, cwd=tmp_path)
    (folder,) = (tmp_path / "run").rglob("last.ckpt")
    assert (folder / ".metadata").is_file() and load_checkpoint_file(folder)["global_step"] == 2
    metrics = {}
    for name, extra in (("one_process", ()), ("fsdp", fsdp)):
        albef_struct_cli("test", "--config", config, "--ckpt_path", str(folder),
                         "--trainer.default_root_dir", str(tmp_path / name), *extra, cwd=tmp_path)
        (written,) = (tmp_path / name).rglob("retrieval_test.json")
        metrics[name] = json.loads(written.read_text())["metrics"]
    assert metrics["fsdp"] == metrics["one_process"] and len(metrics["fsdp"]) >= 7


class _Mesh:
    """The two attributes of a device mesh that ``data_parallel_mesh`` reads."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.mesh_dim_names, self.sizes = tuple(sizes), sizes

    def __getitem__(self, name: str):
        return type("Dim", (), {"size": lambda _self, n=self.sizes[name]: n})()


def test_a_tensor_parallel_mesh_is_refused_with_the_fix():
    from albef_struct.lit.sharding import data_parallel_mesh

    mesh = _Mesh({"data_parallel": 2, "tensor_parallel": 1})
    assert data_parallel_mesh(mesh).size() == 2
    with pytest.raises(ValueError, match="tensor_parallel size 2.*FullyShardedStrategy"):
        data_parallel_mesh(_Mesh({"data_parallel": 1, "tensor_parallel": 2}))


@pytest.mark.parametrize("fused", [False, True])  # the fused kernel wants ``step`` on the parameter's device
def test_filling_the_missing_adam_state_leaves_the_update_unchanged(fused):
    from albef_struct.lit.sharding import fill_missing_adam_state

    def two_steps(fill: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        used, unused = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
        optimizer = torch.optim.AdamW([used, unused], lr=0.1, weight_decay=0.05, fused=fused)
        for step in range(2):
            (used**2).sum().backward()
            if step == 1:  # the second parameter gets its first gradient only now
                unused.grad = torch.ones(2)
            optimizer.step()
            optimizer.zero_grad()
            if fill and step == 0:
                assert fill_missing_adam_state(optimizer) == 1 and fill_missing_adam_state(optimizer) == 0
        return [used.detach(), unused.detach()]

    for filled, plain in zip(two_steps(True), two_steps(False), strict=True):
        torch.testing.assert_close(filled, plain, rtol=0, atol=0)
    assert fill_missing_adam_state(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)) == 0


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))
