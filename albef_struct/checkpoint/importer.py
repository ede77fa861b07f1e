"""Importing any checkpoint onto a task's weights, with a report of every tensor loaded, fresh or dropped."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from albef_struct.checkpoint.arch import infer_arch
from albef_struct.checkpoint.export import albef_names
from albef_struct.checkpoint.fit import AdaptReport, adapt_state_dict
from albef_struct.checkpoint.keymap import ImportReport
from albef_struct.checkpoint.layout import Layout, Source, check_fits
from albef_struct.checkpoint.source import read_source
from albef_struct.checkpoint.weights import TaskWeights, task_spec
from albef_struct.tasks.registry import TASKS, task_of

if TYPE_CHECKING:  # checkpoint I/O stays importable without the models (timm, transformers)
    from albef_struct.models import ALBEFConfig

# Module state that may start fresh whatever the source (the image-id queue is not in ALBEF's files).
ALWAYS_FRESH_OK = {"queue.idx": "ALBEF's pretraining checkpoints carry no image-id queue; it starts empty (-100)"}
# What an official file can never hold: this project's additions to ALBEF.
OFFICIAL_FRESH_OK = {
    "vision_private_proj.": "ALBEF has no modality-private (feature-separation) heads; they start fresh",
    "text_private_proj.": "ALBEF has no modality-private (feature-separation) heads; they start fresh",
}


@dataclass
class AlbefImport:
    """Everything :func:`import_albef` did: the layout found and the fate of every tensor, with reasons."""

    source: str
    layout: Layout
    task: str
    adapt: AdaptReport
    conversion: ImportReport | None
    names: dict[str, str]  # our key -> the file's key (loaded/dropped) or ALBEF's name (fresh/from_online)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # resized key -> (file shape, model shape)

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    @property
    def dropped(self) -> dict[str, str]:
        """The file's keys that were not loaded, under the file's own names, with the reason."""
        out = dict(self.conversion.dropped) if self.conversion else {}
        out.update({self.name(k): why for k, why in self.adapt.dropped.items()})
        return out

    @property
    def fresh(self) -> dict[str, str]:
        """Target keys left at initialisation, with the reason."""
        return dict(self.adapt.fresh)

    @property
    def initialised(self) -> dict[str, str]:
        """Everything not taken from the file as is, under ALBEF's names: fresh keys and momentum copies."""
        out = {self.name(k): why for k, why in self.adapt.fresh.items()}
        for key in self.adapt.from_online:
            out[self.name(key)] = "momentum copy made from the online weights (the file has none)"
        return out

    def summary(self) -> str:
        adapt = self.adapt
        return (
            f"layout {self.layout.name}, task {self.task}: {len(adapt.loaded)} tensors loaded ({len(adapt.resized)} "
            f"resized, {len(adapt.from_online)} momentum copies made from online weights), {len(adapt.fresh)} "
            f"initialised fresh, {len(self.dropped)} of the file's tensors dropped"
        )

    def format(self) -> str:
        """The report as text: layout, counts, resized, fresh and dropped keys grouped by reason."""
        lines = [f"ALBEF checkpoint import: {self.source}", f"  layout: {self.layout.name} ({self.layout.describe()})",
                 f"  task: {self.task} ({TASKS[self.task].description})", f"  {self.summary().split(': ', 1)[1]}"]
        if self.shapes:
            lines.append("  resized (position embeddings resampled bicubically to the model's grid):")
            lines += [f"    {self.name(k)}: {list(a)} -> {list(b)}" for k, (a, b) in self.shapes.items()]
        if self.adapt.from_online:
            lines.append(f"  momentum copies made from the online weights ({len(self.adapt.from_online)}): "
                         + ", ".join(_compact(self.name(k) for k in self.adapt.from_online)))
        lines += _grouped("initialised fresh", {self.name(k): why for k, why in self.adapt.fresh.items()})
        lines += _grouped("dropped (in the file, not used)", self.dropped)
        return "\n".join(lines)


def _compact(keys: Any, limit: int = 6) -> list[str]:
    """Key names with layer numbers collapsed (``blocks.*``); by top-level module when still too many."""
    keys = list(keys)
    patterns = Counter(re.sub(r"\.\d+(?=\.)", ".*", k) for k in keys)
    if len(patterns) > limit:
        patterns = Counter(k.split(".", 1)[0] + ".*" for k in keys)
    return [p if n == 1 else f"{p} ({n})" for p, n in sorted(patterns.items())]


def _grouped(title: str, entries: Mapping[str, str]) -> list[str]:
    if not entries:
        return [f"  {title}: none"]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for key, why in entries.items():
        by_reason[why].append(key)
    lines = [f"  {title} ({len(entries)}):"]
    for why, keys in by_reason.items():
        lines.append(f"    {why} ({len(keys)}): " + ", ".join(_compact(keys)))
    return lines


def import_albef(
    source: str | Path | Mapping[str, Any] | Source,
    target: nn.Module | str,
    arch: ALBEFConfig | Mapping[str, Any] | None = None,
    fresh_ok: Mapping[str, str] | None = None,
    keep: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], AlbefImport]:
    """Import a checkpoint in any official ALBEF layout (or this project's) onto a task's weights.

    ``source``: a path (``.pth``, ``.ckpt``, ``.safetensors``), a loaded payload or
    a state dict. ``target``: a module with ``.model`` (an ALBEF; e.g. a task
    LightningModule) or a task name (``pretrain``, ``retrieval``, ``vqa``, ``nlvr``,
    ``nlvr_pretrain``, ``ve``), built at ``arch`` (default: inferred from the file).
    ``fresh_ok``: target prefixes the file may lack, with the reason (a task name
    brings its own); ``keep``: target prefixes that keep their current values.

    Returns the target's complete state dict (file weights where they exist,
    position embeddings resampled, momentum copies made from online weights where
    the file has none, the target's own values for fresh/kept keys) and the report.
    Anything the report cannot explain raises :class:`CheckpointError`.
    """
    src = read_source(source)
    if isinstance(target, str):
        spec = task_spec(target)
        fresh_ok = {**spec.fresh_ok, **(fresh_ok or {})}
        target = TaskWeights.for_task(target, arch if arch is not None else infer_arch(src), src.queue_size)
    config = target.model.config
    check_fits(src.layout, config, src.name)
    allowed = {**ALWAYS_FRESH_OK, **(OFFICIAL_FRESH_OK if src.official else {}), **(fresh_ok or {})}
    current = target.state_dict()
    kept = {k: why for k in current for prefix, why in (keep or {}).items() if k.startswith(prefix)}
    template = {k: v for k, v in current.items() if k not in kept}
    file_names = src.original_names()
    adapted, adapt = adapt_state_dict(src.state, template, allowed, names=file_names)
    adapt.fresh.update(kept)
    task = task_of(config)
    report = AlbefImport(src.name, src.layout, task, adapt, src.conversion,
                         _report_names(adapt, file_names, task, config.text.fusion_layer),
                         {k: (tuple(src.state[adapt.loaded[k]].shape), tuple(current[k].shape)) for k in adapt.resized})
    return {k: adapted.get(k, v) for k, v in current.items()}, report


def _report_names(adapt: AdaptReport, file_names: Mapping[str, str], task: str, fusion_layer: int) -> dict[str, str]:
    """Names to show: the file's key for loaded/dropped tensors, ALBEF's for fresh ones and copies."""
    if not file_names:
        return {}
    names = dict(file_names)
    for key, found in adapt.loaded.items():
        names[key] = file_names.get(found, found)
    for key in [*adapt.fresh, *adapt.from_online]:
        official = albef_names(key, task, fusion_layer)
        names[key] = official[0] if official else key
    return names
