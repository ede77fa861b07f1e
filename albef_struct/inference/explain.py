"""``albef-struct explain``: where a model looks for a text in an image, as a picture (Grad-CAM overlays).

    albef-struct explain --ckpt runs/demo_quick/pretrain/checkpoints/last.ckpt --image data/demo/images/x.jpg \\
        --text "a red circle above a blue square" --out explain.png

The first panel is the image, the second the whole text's map over it, then one panel per
WordPiece of the text (``[CLS]`` included). ``--arch`` changes architecture keys of the file
(e.g. the attention heads of an official one), as for ``classify``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from albef_struct.inference.inputs import open_image
from albef_struct.inference.model import Explanation

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS_PER_ROW = 6


def upsample(heatmap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map resized to ``(width, height)`` and scaled to [0, 1]."""
    full = F.interpolate(heatmap[None, None].float(), size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
    full = full - full.min()
    return (full / full.max().clamp_min(1e-12)).numpy()


def explanation_figure(image, explanation: Explanation, text: str, out: str | Path) -> Path:
    """Write the image, the whole text's map and each token's map as one PNG."""
    picture = open_image(image).convert("RGB")
    score = (f"match p={explanation.match_probability:.2f}" if explanation.match_probability is not None
             else f"ITC cosine {explanation.score:.2f}")
    panels = [("image", None), (f"whole text ({score})", explanation.text_map)]
    if explanation.mode == "itm":
        panels += [(token, explanation.token_maps[i]) for i, token in enumerate(explanation.tokens)]
    columns = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, heatmap) in zip(axes.flat, panels):
        ax.imshow(picture)
        if heatmap is not None:
            ax.imshow(upsample(heatmap, picture.size), cmap="jet", alpha=0.5)
        ax.set_title(title, fontsize=8)
    where = f"ITM score, fusion layer {explanation.layer}" if explanation.mode == "itm" else \
        f"ITC similarity, ViT block {explanation.layer}"
    fig.suptitle(f'"{text}" (Grad-CAM of the {where})', fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def explain_main(argv: Sequence[str]) -> int:
    """Grad-CAM of an image-text match, whole text and per token, written as a PNG."""
    from albef_struct.inference.commands import _load, _model_arguments

    parser = argparse.ArgumentParser(prog="albef-struct explain", description=explain_main.__doc__)
    _model_arguments(parser)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--mode", choices=["itm", "itc"], default="itm",
                        help="itm: the ITM score through a fusion layer's cross-attention (per token too); itc: the "
                             "ITC similarity through a ViT block's [CLS] attention")
    parser.add_argument("--layer", type=int, help="fusion layer (itm, from 0; default the third) or ViT block (itc; "
                                                  "default two thirds up) to explain")
    parser.add_argument("--maps", type=Path, help="also save the maps as tensors (torch.save) here")
    args = parser.parse_args(list(argv))
    model = _load(args)
    explanation = model.explain(args.image, args.text, args.layer, args.mode)
    path = explanation_figure(args.image, explanation, args.text, args.out)
    if args.maps:
        torch.save(explanation._asdict(), args.maps)
    score = (f"match probability {explanation.match_probability:.3f}" if explanation.match_probability is not None
             else f"ITC cosine {explanation.score:.3f}")
    print(f"{score}; {len(explanation.tokens)} token map(s) ({explanation.mode}, layer {explanation.layer}) "
          f"written to {path}")
    return 0
