"""Image tokens computed once by a frozen image encoder, read instead of the images.

When the image encoder is frozen (``optim.freeze: [visual_encoder]``) and images are not
augmented, its output is a fixed function of each image file: computing it once for every
image and reading it back turns the most expensive part of a small model's step into a
table lookup. A cache file holds, for the image files under one folder,

* ``tokens`` ``[N, T, D]`` (float16): the encoder's output tokens, [CLS] first, for the
  evaluation transform at ``image_res``; or, for a *partial* cache (``frozen_blocks`` k), the
  output of the ViT's first k blocks, which the model's remaining blocks then encode in every
  step, so the top of the image encoder still trains;
* ``paths``: each image's path relative to that folder (the DataModule's ``image_root``);
* ``fingerprint``: a SHA-256 of the weights that made the tokens (the whole encoder, or the
  patch and position embeddings plus the first k blocks), so a run whose encoder differs
  (another checkpoint, a trained encoder) is refused instead of silently mixing the two.

Build one with ``albef-struct cache-images`` (:func:`main`, ``--frozen-blocks k`` for a partial
cache); use it with ``data.init_args.image_cache: <file>``. A partial cache keeps the embeddings
and first k blocks fixed (:meth:`ImageTokenCache.attach` freezes them: they are never run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albef_struct.errors import ProjectError

__all__ = ["ImageCacheError", "ImageTokenCache", "encoder_fingerprint", "build_image_cache"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1


class ImageCacheError(ProjectError, ValueError):
    """An image-token cache that does not fit the run (another encoder, size, or image set)."""


def encoder_fingerprint(encoder: nn.Module, frozen_blocks: int | None = None) -> str:
    """SHA-256 over the encoder's state (names, shapes and float32 values), in name order; with
    ``frozen_blocks`` k, over the weights a partial cache's tokens come from (the first k blocks)."""
    from albef_struct.models.vision import vit_prefix_state

    state = encoder.state_dict() if frozen_blocks is None else vit_prefix_state(encoder, frozen_blocks)
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class ImageTokenCache:
    """Image path (relative to ``image_root``) -> the encoder's tokens ``[T, D]`` (float32).

    ``frozen_blocks``: None when the tokens are the encoder's output; k when they are the output of
    its first k blocks (a partial cache).
    """

    def __init__(self, paths: Sequence[str], tokens: torch.Tensor, fingerprint: str, image_res: int,
                 source: str = "", frozen_blocks: int | None = None) -> None:
        if tokens.dim() != 3 or tokens.shape[0] != len(paths):
            raise ImageCacheError(f"image cache {source}: tokens {tuple(tokens.shape)} do not fit {len(paths)} paths")
        self.rows = {path: row for row, path in enumerate(paths)}
        self.tokens, self.fingerprint, self.image_res, self.source = tokens, fingerprint, image_res, source
        self.frozen_blocks = frozen_blocks

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageTokenCache":
        path = Path(path)
        if not path.is_file():
            raise ImageCacheError(f"image cache {path} does not exist: build it with `albef-struct cache-images` "
                                  "or remove data.init_args.image_cache")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
            raise ImageCacheError(f"{path} is not an image cache of this version: rebuild it with `albef-struct cache-images`")
        return cls(payload["paths"], payload["tokens"], payload["fingerprint"], int(payload["image_res"]), str(path),
                   payload.get("frozen_blocks"))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        paths = sorted(self.rows, key=self.rows.get)
        payload = {"version": CACHE_VERSION, "paths": paths, "tokens": self.tokens,
                   "fingerprint": self.fingerprint, "image_res": self.image_res, "frozen_blocks": self.frozen_blocks}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, image_path: str | os.PathLike, image_root: str | os.PathLike) -> torch.Tensor:
        """The tokens of ``image_path`` (absolute, under ``image_root``), as float32."""
        try:
            key = Path(image_path).resolve().relative_to(Path(image_root).resolve()).as_posix()
        except ValueError:
            raise ImageCacheError(f"{image_path} is not under image_root {image_root}, which {self.source} is "
                                  "keyed by") from None
        row = self.rows.get(key)
        if row is None:
            raise ImageCacheError(f"{key} is not in the image cache {self.source} ({len(self)} images): rebuild it "
                                  "over the folder that holds every image of the run")
        return self.tokens[row].float()

    def describe(self) -> str:
        """What the tokens are, for messages: the encoder's output or the output of its first k blocks."""
        return "the encoder's output" if self.frozen_blocks is None else f"the output of its first {self.frozen_blocks} blocks"

    def attach(self, module: nn.Module) -> None:
        """Make every ALBEF model in ``module`` (the student and its teacher) read this cache's tokens.

        For a partial cache the models run their remaining blocks on the tokens, and the embeddings and
        first k blocks, which are then never run, are frozen so that no optimizer holds them. Call it
        before the optimizers are built; :meth:`check_encoder` checks the weights once they are loaded.
        """
        from albef_struct.models.albef import ALBEF
        from albef_struct.models.vision import vit_prefix_state

        for model in module.modules():
            if not isinstance(model, ALBEF):
                continue
            if self.frozen_blocks is not None:
                depth = len(model.visual_encoder.blocks)
                if self.frozen_blocks > depth:
                    raise ImageCacheError(f"{self.source} holds the output of {self.frozen_blocks} ViT blocks but the "
                                          f"model's image encoder has {depth}: rebuild it with --frozen-blocks {depth} "
                                          "or fewer")
                frozen = vit_prefix_state(model.visual_encoder, self.frozen_blocks)
                for name, param in model.visual_encoder.named_parameters():
                    if name in frozen:
                        param.requires_grad_(False)
            model.cached_image_blocks = self.frozen_blocks

    def check_encoder(self, encoder: nn.Module, image_res: int) -> None:
        """Refuse an encoder or image size other than the cache's (naming both and the fix)."""
        if image_res != self.image_res:
            raise ImageCacheError(f"{self.source} holds {self.image_res} px tokens but the model takes {image_res} px: "
                                  "rebuild the cache at the model's size")
        if self.frozen_blocks is None and any(p.requires_grad for p in encoder.parameters()):
            raise ImageCacheError(f"data.init_args.image_cache ({self.source}) stands in for a frozen image encoder, "
                                  "but this one is trained: add visual_encoder to model.init_args.optim.freeze")
        found = encoder_fingerprint(encoder, self.frozen_blocks)
        if found != self.fingerprint:
            raise ImageCacheError(f"{self.source} holds {self.describe()}, built with other image-encoder weights (fingerprint "
                                  f"{self.fingerprint[:12]}, the model's is {found[:12]}): rebuild it from this "
                                  "model's weights, or remove data.init_args.image_cache")


def image_files(root: str | os.PathLike, exclude: Sequence[str] = ()) -> list[str]:
    """Every image file under ``root``, relative to it, sorted, except those under the subfolders ``exclude``."""
    root = Path(root)
    for folder in exclude:
        if not (root / folder).is_dir():
            raise ImageCacheError(f"--exclude {folder}: {root / folder} is not a folder under {root}")
    skipped = tuple(Path(folder).as_posix().rstrip("/") + "/" for folder in exclude)
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(f for f in files if not f.startswith(skipped))


@torch.inference_mode()
def build_image_cache(encoder: nn.Module, image_root: str | os.PathLike, image_res: int,
                      batch_size: int = 64, progress: bool = True, frozen_blocks: int | None = None,
                      exclude: Sequence[str] = ()) -> ImageTokenCache:
    """Encode every image under ``image_root`` (but its subfolders ``exclude``) with ``encoder`` (evaluation
    transform, ``image_res`` px); with ``frozen_blocks`` k, keep the output of its first k blocks instead."""
    from albef_struct.data.images import load_image
    from albef_struct.data.transforms import test_transform
    from albef_struct.models.vision import vit_input_tokens

    if frozen_blocks is not None and not 0 <= frozen_blocks <= len(getattr(encoder, "blocks", ())):
        raise ImageCacheError(f"--frozen-blocks {frozen_blocks}: the image encoder has "
                              f"{len(getattr(encoder, 'blocks', ()))} blocks")

    def encode(images: torch.Tensor) -> torch.Tensor:
        if frozen_blocks is None:
            return encoder(images)
        tokens = vit_input_tokens(encoder, images)
        for block in encoder.blocks[:frozen_blocks]:
            tokens = block(tokens)
        return tokens

    paths = image_files(image_root, exclude)
    if not paths:
        raise ImageCacheError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {image_root}")
    transform, encoder = test_transform(image_res), encoder.eval()
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [transform(load_image(Path(image_root) / p, source=str(image_root), record_index=start + i))
                 for i, p in enumerate(paths[start : start + batch_size])]
        chunks.append(encode(torch.stack(batch)).to(torch.float16))
        if progress:
            print(f"\rcache-images: {min(start + batch_size, len(paths))}/{len(paths)} images", end="", flush=True)
    if progress:
        print()
    return ImageTokenCache(paths, torch.cat(chunks), encoder_fingerprint(encoder, frozen_blocks), image_res, "(new)",
                           frozen_blocks)


def main(argv: Sequence[str] | None = None) -> int:
    """``albef-struct cache-images``: encode a folder of images once with a model's (frozen) image encoder."""
    parser = argparse.ArgumentParser(prog="albef-struct cache-images", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="a YAML file of the model's arch whose vision block names its weights "
                                       "(e.g. configs/model/small_arch.yaml)")
    source.add_argument("--ckpt", help="a checkpoint of this project whose image encoder to use")
    parser.add_argument("--img-size", type=int, default=None, help="image size (default: the arch's vision.img_size)")
    parser.add_argument("--images", required=True, help="the folder of images (the runs' data.init_args.image_root)")
    parser.add_argument("--out", required=True, help="the cache file to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frozen-blocks", type=int, default=None, metavar="K",
                        help="keep the output of the ViT's first K blocks instead of its output: runs then train the "
                             "remaining blocks on them (default: the whole encoder is cached and must stay frozen)")
    parser.add_argument("--exclude", action="append", default=[], metavar="DIR",
                        help="a subfolder of --images whose images the runs do not read (repeatable), e.g. another "
                             "dataset kept under the same root")
    args = parser.parse_args(argv)
    encoder, image_res = _encoder_from_ckpt(args.ckpt, args.img_size) if args.ckpt else _encoder_from_arch(args.arch, args.img_size)
    cache = build_image_cache(encoder, args.images, image_res, args.batch_size, frozen_blocks=args.frozen_blocks,
                              exclude=args.exclude)
    tokens: Any = cache.tokens
    print(f"wrote {cache.save(args.out)}: {len(cache)} images, tokens {tuple(tokens.shape[1:])} each "
          f"({cache.describe()}), encoder {cache.fingerprint[:12]}")
    return 0


def _encoder_from_arch(path: str, img_size: int | None) -> tuple[nn.Module, int]:
    import yaml

    from albef_struct.models import ALBEFConfig
    from albef_struct.models.vision import build_image_encoder

    vision = ALBEFConfig.from_dict(yaml.safe_load(Path(path).read_text())).vision
    vision = vision if img_size is None else replace(vision, img_size=img_size)
    return build_image_encoder(vision), vision.img_size


def _encoder_from_ckpt(path: str, img_size: int | None) -> tuple[nn.Module, int]:
    from albef_struct.checkpoint.files import load_checkpoint_file
    from albef_struct.models import ALBEFConfig
    from albef_struct.models.vision import build_image_encoder

    payload = load_checkpoint_file(path)
    arch = (payload.get("hyper_parameters") or {}).get("arch") if isinstance(payload, dict) else None
    if arch is None:
        raise ImageCacheError(f"{path} names no architecture (hyper_parameters.arch): pass --arch instead")
    vision = ALBEFConfig.from_dict(arch).vision
    if img_size not in (None, vision.img_size):
        raise ImageCacheError(f"{path} was trained at {vision.img_size} px; --img-size {img_size} would not fit its "
                              "position embeddings")
    encoder = build_image_encoder(replace(vision, pretrained=False, pretrained_file=None))
    prefix = "model.visual_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)})
    return encoder, vision.img_size
