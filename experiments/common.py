"""Shared pieces of the demo-data experiments: a small architecture, one pretraining run, results I/O."""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from albef_struct.data import PretrainDataModule
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig
from albef_struct.models import ALBEFConfig, TextConfig, VisionConfig
from albef_struct.data_prep.demo_data import generate


SMALL_PRESET = Path(__file__).resolve().parents[1] / "configs/model/small.yaml"


def small_preset() -> tuple[ALBEFConfig, str]:
    """configs/model/small.yaml's architecture (the file it names) and text checkpoint."""
    init_args = yaml.safe_load(SMALL_PRESET.read_text())["init_args"]
    arch = yaml.safe_load((SMALL_PRESET.parent / init_args["arch"]).read_text())
    return ALBEFConfig.from_dict(arch), init_args["text_init"]


def experiment_arch(preset: str, image_res: int, private_heads: bool = False) -> tuple[ALBEFConfig, str | None]:
    """The architecture of an experiment run and the text checkpoint to start from.

    ``small``: configs/model/small.yaml (pretrained DINOv2 ViT-S/14 + MiniLM 3+3, mean text
    pooling) at ``image_res`` with 64 text positions, the preset whose demo pretraining learns
    within a CPU budget. ``tiny``: a randomly initialised ViT 128x3 + BERT h128 2+2, which
    stays near chance at these step counts (kept for smoke tests).
    """
    if preset == "small":
        arch, text_init = small_preset()
        if image_res % arch.vision.patch_size:
            raise ValueError(f"the small preset's ViT has {arch.vision.patch_size} px patches; "
                             f"image_res {image_res} is not a multiple")
        if not Path(arch.vision.pretrained_file).is_file():
            raise FileNotFoundError(f"{arch.vision.pretrained_file} is missing: "
                                    "run `python -m albef_struct.data_prep.convert_dinov2_onnx` first")
        arch = replace(arch, vision=replace(arch.vision, img_size=image_res),
                       text=replace(arch.text, max_position=64), private_heads=private_heads)
        return arch, text_init
    if preset == "tiny":
        arch = ALBEFConfig(
            vision=VisionConfig(img_size=image_res, patch_size=16, width=128, depth=3, heads=2),
            text=TextConfig(hidden=128, layers=4, fusion_layer=2, heads=2, intermediate=512, max_position=64),
            embed_dim=64, mlm_head=True, private_heads=private_heads,
        )
        return arch, None
    raise ValueError(f"unknown preset {preset!r}: use 'small' or 'tiny'")


@dataclass
class RunSpec:
    """One pretraining run on demo data, evaluated by zero-shot retrieval on the test split."""

    name: str
    data_dir: str
    steps: int
    preset: str = "small"
    batch_size: int = 32
    image_res: int = 70
    contrastive: str = "infonce_queue"
    contrastive_args: dict[str, Any] = field(default_factory=dict)
    structure: list[dict[str, Any]] = field(default_factory=list)
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    queue_size: int = 256
    momentum: float = 0.995
    lr: float = 1e-4
    warmup_steps: int = 20
    k_test: int = 16
    seed: int = 0
    num_workers: int = 1
    train_subset: int | None = None  # pretrain on the first N image-caption records only (so samples recur)
    keep_checkpoint: bool = False  # write <run>/last.ckpt (~640 MB for the small preset)
    randaugment: bool = False  # ALBEF's RandomAugment equalises/auto-contrasts away the colours the captions name


def ensure_demo_data(path: str | Path, info_gap: bool = False, **sizes: int) -> Path:
    """Generate the demo data at ``path`` unless it is already there (idempotent)."""
    path = Path(path)
    generate(path, info_gap=info_gap, **sizes)
    return path


def train_and_test(spec: RunSpec, out: Path) -> tuple[dict[str, float], PretrainModule]:
    """Pretrain for ``spec.steps`` optimizer steps, then zero-shot retrieval on the test split."""
    pl.seed_everything(spec.seed, workers=True)
    private = any(s["name"] == "feature_separation" for s in spec.structure)
    arch, text_init = experiment_arch(spec.preset, spec.image_res, private_heads=private)
    module = PretrainModule(
        arch=arch,
        optim=OptimConfig(lr=spec.lr, warmup_lr=1e-5, warmup_steps=spec.warmup_steps, min_lr=1e-5, cosine="step"),
        queue_size=spec.queue_size,
        momentum=spec.momentum,
        contrastive=spec.contrastive,
        contrastive_args=spec.contrastive_args,
        structure=spec.structure,
        itm_weight=spec.itm_weight,
        mlm_weight=spec.mlm_weight,
        k_test=spec.k_test,
        text_init=text_init,
    )
    data = Path(spec.data_dir)
    run_dir = out / spec.name
    train_file = data / "pretrain.json"
    if spec.train_subset is not None:
        train_file = write_subset(train_file, run_dir / f"pretrain_first{spec.train_subset}.json", spec.train_subset)
    datamodule = PretrainDataModule(
        train_files=[str(train_file)],
        test_file=str(data / "retrieval_test.json"),
        image_root=str(data),
        image_res=spec.image_res,
        batch_size=spec.batch_size,
        eval_batch_size=128,
        num_workers=spec.num_workers,
        hflip=False,
        randaugment=spec.randaugment,
        crop_scale=(0.8, 1.0),
        max_tokens=40,
        seed=spec.seed,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=spec.steps,
        default_root_dir=str(run_dir),
        logger=pl.loggers.CSVLogger(str(run_dir), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=25,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        train_seconds = time.perf_counter() - start
        results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if spec.keep_checkpoint:
        trainer.save_checkpoint(run_dir / "last.ckpt")
    metrics = {k.removeprefix("test/"): float(v) for k, v in results.items()}
    metrics["train_seconds"] = train_seconds
    return metrics, module


def write_subset(source: Path, target: Path, n: int) -> Path:
    """The first ``n`` records of a pretraining JSON file, written to ``target``; image paths stay relative."""
    records = json.loads(source.read_text())
    if n > len(records):
        raise ValueError(f"train_subset={n} is larger than {source} ({len(records)} records)")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(records[:n]))
    return target


def write_results(out: Path, name: str, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path

