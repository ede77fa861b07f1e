"""How much a checkpoint's image-encoder output varies from image to image: a collapsed encoder shows up here.

    python -m experiments.image_token_spread --images data/demo/images/test --limit 32 \
        --ckpt runs/demo/pretrain_small/checkpoints/last.ckpt runs/demo/vqa/checkpoints/best.ckpt

For each checkpoint it encodes the same images (the checkpoint's own test transform) and prints the
mean norm of the output tokens and their spread: the mean distance of each image's token from that
token position's mean over the images. The ratio of the two is near 0 when every image gives the same
output, so a task head downstream cannot tell the images apart (README: the VQA demo recipe that
trained its image encoder collapsed it to 3-5 % from 59-78 %). Writes ``--out`` (JSON) too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from albef_struct import inference
from albef_struct.inference.inputs import image_batch
from albef_struct.metrics.report import format_table, write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def token_spread(tokens: torch.Tensor) -> dict[str, float]:
    """``tokens`` ``[images, positions, width]``: the mean token norm, the mean distance of a token from its
    position's mean over the images, and their ratio."""
    if tokens.shape[0] < 2:
        raise ValueError(f"the spread across images needs at least 2 images, got {tokens.shape[0]}")
    tokens = tokens.float()
    norm = tokens.norm(dim=-1).mean()
    spread = (tokens - tokens.mean(dim=0, keepdim=True)).norm(dim=-1).mean()
    return {"token_norm": norm.item(), "spread": spread.item(), "ratio": (spread / norm).item()}


def image_files(folder: Path, limit: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if len(files) < 2:
        raise SystemExit(f"{folder}: found {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); the spread needs at least 2")
    return files


@torch.no_grad()
def checkpoint_spread(ckpt: str, files: list[Path], batch_size: int = 64) -> dict[str, float]:
    """:func:`token_spread` of the image encoder's output tokens (every position, [CLS] included), each
    image through the checkpoint's own test transform."""
    loaded = inference.load(ckpt)
    tokens = [loaded.model.encode_image(image_batch(files[start:start + batch_size], loaded.transform)).embeds
              for start in range(0, len(files), batch_size)]
    return token_spread(torch.cat(tokens))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", nargs="+", required=True, help="checkpoints (any format inference.load reads)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--limit", type=int, default=32, help="the first N images in name order")
    parser.add_argument("--out", default="results/image_token_spread.json")
    args = parser.parse_args(argv)
    files = image_files(args.images, args.limit)
    results = {ckpt: checkpoint_spread(ckpt, files) for ckpt in args.ckpt}
    rows = [(ckpt, r["token_norm"], r["spread"], r["ratio"]) for ckpt, r in results.items()]
    print(f"image-encoder output over {len(files)} images of {args.images}")
    print(format_table(("checkpoint", "token norm", "spread across images", "ratio"), rows))
    write_json(args.out, {"images": [str(f) for f in files], "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
