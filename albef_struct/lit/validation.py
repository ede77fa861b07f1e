"""Checks that a run's model, data and trainer settings can work together, before the first step.

:func:`validate_run` collects every problem it finds and raises one
:class:`ConfigError` listing them, each with the configuration keys involved and
the fix. The :class:`~albef_struct.lit.reliability.ConfigValidator` callback runs
it in ``setup`` (after the DataModule's ``setup``, before any training step), so
a mistake that would otherwise surface after an epoch (a re-ranking ``k_test``
larger than the evaluation gallery, a checkpoint monitor with no validation)
stops the run at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.model_helpers import is_overridden

from albef_struct.data.collate import RETRIEVAL_EVAL_TOKENS
from albef_struct.errors import ProjectError

__all__ = ["ConfigError", "find_problems", "validate_run"]

Problems = Iterator[str]


class ConfigError(ProjectError, ValueError):
    """A run configuration that cannot work; the message lists every problem with its fix."""


def validate_run(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, stage: str = "fit"
) -> None:
    """Raise :class:`ConfigError` naming every incompatible setting of this run (``stage``: fit/validate/test/predict)."""
    stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn (a str enum)
    problems = find_problems(trainer, module, datamodule, stage)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"the run's configuration cannot work ({len(problems)} problem(s), found before {stage} started):\n{listed}"
        )


def find_problems(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule | None, stage: str
) -> list[str]:
    """Every problem :func:`validate_run` would report, as sentences."""
    checks: tuple[Callable[..., Problems], ...] = (
        queue_problems, gallery_problems, second_view_problems, image_size_problems, text_length_problems,
        vocabulary_problems, monitor_problems,
    )
    return [problem for check in checks for problem in check(trainer, module, datamodule, stage)]


# --- the checks ------------------------------------------------------------------------------------------
def queue_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """The feature queue must hold whole global batches (ALBEF asserts ``queue_size % batch == 0``)."""
    queue = getattr(module, "queue", None)
    batch = getattr(datamodule, "batch_size", None)
    uses_queue = getattr(getattr(module, "contrastive", None), "uses_queue", True)
    if stage != "fit" or queue is None or not uses_queue or not batch:
        return
    world = trainer.world_size
    global_batch = batch * world
    split = f"data.init_args.batch_size {batch} x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s)"
    if queue.size < global_batch:
        yield (
            f"model.init_args.queue_size={queue.size} is smaller than the global batch {global_batch} ({split}): "
            f"every step enqueues the whole global batch; set queue_size to a multiple of {global_batch}"
        )
    elif queue.size % global_batch:
        suggestion = math.ceil(queue.size / global_batch) * global_batch
        yield (
            f"model.init_args.queue_size={queue.size} is not a multiple of the global batch {global_batch} ({split}): "
            f"ALBEF's queue holds whole batches; set queue_size to a multiple of {global_batch} (e.g. {suggestion})"
        )


def _evaluated(n_items: int, batch_size: int, world: int, limit: int | float) -> int:
    """How many of ``n_items`` an evaluation loop sees under a Lightning batch ``limit`` (int: batches, float: fraction)."""
    batches = math.ceil(math.ceil(n_items / world) / batch_size)
    if isinstance(limit, float) and limit <= 1.0:
        used = int(batches * limit)
    else:
        used = min(batches, int(limit)) if math.isfinite(limit) else batches
    return min(n_items, used * batch_size * world)


def _galleries(trainer: pl.Trainer, stage: str, datamodule: Any) -> Iterator[tuple[str, str, Any, int | float]]:
    """(evaluation name, split, dataset, batch limit) of every retrieval evaluation this stage runs."""
    sets = getattr(datamodule, "eval_sets", None) or {}
    if stage == "fit" and "val" in sets:
        if trainer.num_sanity_val_steps:
            steps = trainer.num_sanity_val_steps
            yield "sanity-check validation", "val", sets["val"], int(steps) if math.isfinite(steps) else math.inf
        if trainer.limit_val_batches:
            yield "validation", "val", sets["val"], trainer.limit_val_batches
    elif stage == "validate" and "val" in sets:
        yield "validation", "val", sets["val"], trainer.limit_val_batches
    elif stage == "test" and "test" in sets:
        yield "test", "test", sets["test"], trainer.limit_test_batches


def gallery_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """ITM re-ranking takes each query's top ``k_test``: the evaluated gallery must hold that many."""
    k_test = getattr(module, "k_test", None)
    batch = getattr(datamodule, "eval_batch_size", None)
    if k_test is None or not batch:
        return
    for name, split, dataset, limit in _galleries(trainer, stage, datamodule):
        if not hasattr(dataset, "texts"):  # not a retrieval gallery (e.g. grounding's records): nothing is re-ranked
            continue
        images = _evaluated(len(dataset), batch, trainer.world_size, limit)
        texts = _evaluated(len(dataset.texts), batch, trainer.world_size, limit)
        if k_test > min(images, texts):
            limited = "" if images == len(dataset) and texts == len(dataset.texts) else (
                f" of {len(dataset)} images and {len(dataset.texts)} texts, with batch limit {limit} "
                f"x data.init_args.eval_batch_size {batch}"
            )
            yield (
                f"model.init_args.k_test={k_test} is larger than the {name} gallery: {images} images and {texts} "
                f"texts are evaluated{limited} (data.init_args.{split}_file). Re-ranking would fail when the "
                f"{name} ends; set model.init_args.k_test to at most {min(images, texts)} or evaluate more of the set"
            )


def second_view_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """``augmented_view: second_view`` needs the DataModule's second augmented view in every batch."""
    if stage != "fit" or getattr(module, "augmented_view", None) != "second_view":
        return
    structure = getattr(module, "structure", None)
    needs_view = structure is not None and (structure.needs_aug or structure.needs_private)
    if needs_view and hasattr(datamodule, "text_augment") and datamodule.text_augment is None:
        yield (
            "model.init_args.augmented_view is 'second_view' but the DataModule yields no second view: "
            "set data.init_args.second_view: true (or augmented_view: momentum)"
        )


def image_size_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """The ViT accepts only its configured image size."""
    model = getattr(module, "model", None)
    image_res = getattr(datamodule, "image_res", None)
    config = getattr(model, "config", None)
    if config is None or image_res is None or image_res == config.vision.img_size:
        return
    yield (
        f"data.init_args.image_res={image_res} differs from model.init_args.arch.vision.img_size="
        f"{config.vision.img_size}: the ViT takes only its own size; set both to the same value (a checkpoint's "
        "position embeddings are resampled to the model's img_size when it loads)"
    )


def text_length_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """Token sequences must fit the text encoder's position embeddings."""
    config = getattr(getattr(module, "model", None), "config", None)
    if config is None or datamodule is None:
        return
    max_position = config.text.max_position
    max_tokens = getattr(datamodule, "max_tokens", None)
    if stage == "fit" and max_tokens and max_tokens > max_position:
        yield (
            f"data.init_args.max_tokens={max_tokens} exceeds model.init_args.arch.text.max_position={max_position}: "
            f"training text would index past the position embeddings; set max_tokens <= {max_position}"
        )
    if getattr(datamodule, "eval_sets", None) and max_position < RETRIEVAL_EVAL_TOKENS:
        yield (
            f"model.init_args.arch.text.max_position={max_position} is below the {RETRIEVAL_EVAL_TOKENS} tokens retrieval "
            f"evaluation pads texts to; set max_position >= {RETRIEVAL_EVAL_TOKENS}"
        )


def vocabulary_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """Every token id the tokenizer can produce must have a row in the word embeddings."""
    config = getattr(getattr(module, "model", None), "config", None)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if config is None or tokenizer is None or len(tokenizer) <= config.text.vocab_size:
        return
    yield (
        f"the tokenizer at {tokenizer.path} has {len(tokenizer)} tokens but model.init_args.arch.text.vocab_size is "
        f"{config.text.vocab_size}: ids from {config.text.vocab_size} up would index past the word embeddings; set "
        f"data.init_args.tokenizer_path to the vocabulary the model was built for, or arch.text.vocab_size to at least "
        f"{len(tokenizer)} (a checkpoint's word embeddings must then have that many rows too)"
    )


def _has_validation(trainer: pl.Trainer, datamodule: Any) -> bool:
    """Whether the fit loop will validate (assumed when the data do not come from a DataModule)."""
    if not trainer.limit_val_batches:
        return False
    if datamodule is None or not is_overridden("val_dataloader", datamodule, pl.LightningDataModule):
        return datamodule is None
    return bool(datamodule.val_dataloader())


def monitor_problems(trainer: pl.Trainer, module: Any, datamodule: Any, stage: str) -> Problems:
    """A checkpoint callback monitoring a ``val/`` metric needs a validation loop."""
    if stage != "fit":
        return
    monitored = [
        cb.monitor for cb in trainer.checkpoint_callbacks
        if isinstance(getattr(cb, "monitor", None), str) and cb.monitor.startswith("val/")
    ]
    if monitored and not _has_validation(trainer, datamodule):
        yield (
            f"a ModelCheckpoint monitors {monitored[0]} but this run has no validation (no validation file in the "
            "DataModule, or trainer.limit_val_batches: 0), so it would fail at its first save: give a validation "
            "file, or set the callback's monitor: null"
        )
