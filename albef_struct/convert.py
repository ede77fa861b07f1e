"""``albef-struct convert``: an official ALBEF checkpoint -> this project's Lightning checkpoint + safetensors.

    albef-struct convert ALBEF_4M.pth checkpoints/albef_4m                  # task and sizes from the file
    albef-struct convert mscoco.pth checkpoints/coco --task retrieval --image-res 384
    albef-struct convert vqa.pth checkpoints/vqa --arch-from-config configs/vqa.yaml

Writes ``OUT.ckpt`` (``state_dict``, ``hyper_parameters`` with ``arch``; loads with
``torch.load(weights_only=True)``, :func:`~albef_struct.lit.checkpoints.load_model`,
``--model.init_args.init_from`` and ``--ckpt_path``) and ``OUT.safetensors``, then
prints the import report: the layout found and every tensor dropped or
initialised fresh, with the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from albef_struct.checkpoint.arch import guess_task, infer_arch
from albef_struct.checkpoint.errors import CheckpointError
from albef_struct.checkpoint.importer import AlbefImport, import_albef
from albef_struct.checkpoint.layout import Source
from albef_struct.checkpoint.safetensors_io import save_safetensors
from albef_struct.checkpoint.source import read_source
from albef_struct.checkpoint.weights import TaskWeights, task_spec
from albef_struct.lit.checkpoints import save_lightning_checkpoint
from albef_struct.models import ALBEFConfig
from albef_struct.tasks.registry import TASKS, task_of_class_path


@dataclass
class Converted:
    """What :func:`convert_file` wrote and how."""

    ckpt: Path
    safetensors: Path
    task: str
    arch: ALBEFConfig
    report: AlbefImport


@dataclass
class ConfigArch:
    """What a task YAML says about the model: its sizes, its task and its queue length."""

    arch: ALBEFConfig
    task: str | None
    queue_size: int | None


def read_config_arch(path: str | Path) -> ConfigArch:
    """``model.init_args.arch`` (and the task, from ``model.class_path``) of a task YAML."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config {path} does not exist")
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    init_args = model.get("init_args") or {}
    if "arch" not in init_args:
        raise CheckpointError(f"{path} has no model.init_args.arch; pass a task config such as configs/ve.yaml")
    try:
        arch = ALBEFConfig.from_dict(init_args["arch"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: model.init_args.arch is invalid: {err}") from err
    return ConfigArch(arch, task_of_class_path(model.get("class_path", "")), init_args.get("queue_size"))


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """``OUT`` (with or without a suffix) -> ``OUT.ckpt``, ``OUT.safetensors``."""
    out = Path(out)
    if out.suffix in (".ckpt", ".safetensors", ".pth", ".pt"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".ckpt"), out.with_name(out.name + ".safetensors")


def resolve_arch(
    source: Source,
    config: ConfigArch | None,
    image_res: int | None,
    heads_vision: int | None,
    heads_text: int | None,
) -> ALBEFConfig:
    """Sizes from the config, else from the file's shapes; then the requested resolution and heads."""
    arch = config.arch if config is not None else infer_arch(source, heads_vision, heads_text)
    if source.layout.decoder_layers and not arch.answer_decoder_layers:
        arch = replace(arch, answer_decoder_layers=source.layout.decoder_layers)
    vision, text = arch.vision, arch.text
    if heads_vision:
        vision = replace(vision, heads=heads_vision)
    if heads_text:
        text = replace(text, heads=heads_text)
    if image_res:
        if image_res % vision.patch_size:
            raise CheckpointError(f"--image-res {image_res} is not a multiple of the patch size {vision.patch_size}")
        vision = replace(vision, img_size=image_res)
    for name, width, heads in (("vision", vision.width, vision.heads), ("text", text.hidden, text.heads)):
        if width % heads:
            raise CheckpointError(
                f"{name} width {width} is not divisible by {heads} attention heads; pass --heads-{name}"
            )
    return replace(arch, vision=vision, text=text)


def convert_file(
    src: str | Path,
    out: str | Path,
    task: str | None = None,
    config: ConfigArch | None = None,
    image_res: int | None = None,
    heads_vision: int | None = None,
    heads_text: int | None = None,
    queue_size: int | None = None,
    seed: int = 0,
) -> Converted:
    """Convert ``src`` into ``OUT.ckpt`` + ``OUT.safetensors`` for ``task`` (default: the file's own task)."""
    source = read_source(src)
    task = task or (config.task if config else None) or guess_task(source)
    spec = task_spec(task)
    arch = resolve_arch(source, config, image_res, heads_vision, heads_text)
    queue = queue_size or (config.queue_size if config else None) or source.queue_size
    torch.manual_seed(seed)  # fresh heads and queues are reproducible
    weights = TaskWeights.for_task(task, arch, queue)
    state, report = import_albef(source, weights, fresh_ok=spec.fresh_ok)
    weights.load_state_dict(state, strict=True)
    ckpt, safetensors = output_paths(out)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    extra = {"source": str(src), "layout": report.layout.name, "report": report.summary()}
    save_lightning_checkpoint(weights, task, ckpt, extra)
    save_safetensors(weights, safetensors, task)
    return Converted(ckpt, safetensors, task, weights.model.config, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albef-struct convert",
        description="Convert an official ALBEF checkpoint (any layout) into this project's OUT.ckpt + OUT.safetensors.",
    )
    parser.add_argument(
        "input", help="ALBEF .pth (ALBEF_4M.pth, mscoco.pth, vqa.pth, ...) or a checkpoint of this project"
    )
    parser.add_argument("output", help="output path without suffix: writes OUT.ckpt and OUT.safetensors")
    parser.add_argument("--task", choices=sorted(TASKS), help="task module to convert for (default: the file's task)")
    parser.add_argument(
        "--arch-from-config", metavar="CONFIG.yaml",
        help="take the sizes from a task config's model.init_args.arch (default: inferred from the file)",
    )
    parser.add_argument("--image-res", type=int, help="resample the position embeddings to this resolution")
    parser.add_argument("--heads-vision", type=int, help="ViT attention heads (shapes cannot tell; default width/64)")
    parser.add_argument("--heads-text", type=int, help="BERT attention heads (shapes cannot tell; default hidden/64)")
    parser.add_argument("--queue-size", type=int, help="queue length when the file has no queue (default 65536)")
    parser.add_argument("--seed", type=int, default=0, help="seed of freshly initialised heads (default 0)")
    return parser


def _arch_line(converted: Converted, inferred: bool) -> str:
    vision, text = converted.arch.vision, converted.arch.text
    line = (f"  architecture ({'inferred from the file' if inferred else 'from the config'}): ViT {vision.width}x"
            f"{vision.depth} patch {vision.patch_size} @ {vision.img_size}px, {vision.heads} heads; BERT {text.hidden}x"
            f"{text.layers} (fusion from layer {text.fusion_layer}), {text.heads} heads, vocab {text.vocab_size}; "
            f"embed_dim {converted.arch.embed_dim}")
    if inferred:
        line += "\n  (attention heads cannot be read from shapes: pass --heads-vision/--heads-text if they differ)"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``albef-struct convert``."""
    args = build_parser().parse_args(argv)
    try:
        config = read_config_arch(args.arch_from_config) if args.arch_from_config else None
        converted = convert_file(
            args.input, args.output, args.task, config, args.image_res, args.heads_vision, args.heads_text,
            args.queue_size, args.seed,
        )
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(converted.report.format())
    print(_arch_line(converted, inferred=config is None))
    print(f"wrote {converted.ckpt} and {converted.safetensors}")
    module = TASKS[converted.task].class_path
    print(f"use it with --model.init_args.init_from {converted.ckpt} (model.class_path: {module})")
    return 0

