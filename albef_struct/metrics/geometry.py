"""Latent-geometry measures of paired image/text embeddings and a 2-D plot of them.

All measures take L2-normalised embeddings ``[N, D]`` with row ``i`` of ``image``
paired with row ``i`` of ``text`` (as ALBEF's ``vision_proj`` / ``text_proj`` outputs
after normalisation), and return Python floats computed in float64.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "modality_gap",
    "alignment",
    "uniformity",
    "matched_cosine",
    "mean_cosine_unmatched",
    "geometry_report",
    "pca_2d",
    "plot_embeddings",
]


def _as_2d(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a non-empty [N, D] tensor of embeddings, got {shape}")
    return x.detach().to(torch.float64)


def _pair(image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    image, text = _as_2d(image, "image"), _as_2d(text, "text")
    if image.shape != text.shape:
        raise ValueError(
            f"image {tuple(image.shape)} and text {tuple(text.shape)} embeddings must have the same "
            "shape [N, D], row i of one paired with row i of the other"
        )
    return image, text


def modality_gap(image: torch.Tensor, text: torch.Tensor) -> float:
    """Distance between the modality centroids, ``||mean(image) - mean(text)||``."""
    image, text = _pair(image, text)
    return (image.mean(0) - text.mean(0)).norm().item()


def alignment(image: torch.Tensor, text: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ``||x_i - y_i||^alpha`` over matched pairs (Wang & Isola, 2020); lower is more aligned."""
    image, text = _pair(image, text)
    return (image - text).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """``log mean_{i != j} exp(-t ||x_i - x_j||^2)`` (Wang & Isola, 2020); lower is more uniform.

    0 for a collapsed set; memory grows as N^2 / 2.
    """
    x = _as_2d(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 points, got {n}")
    sq = torch.pdist(x).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


def matched_cosine(image: torch.Tensor, text: torch.Tensor) -> float:
    """Mean cosine similarity of matched pairs ``(image_i, text_i)``."""
    image, text = _pair(image, text)
    return F.cosine_similarity(image, text, dim=1).mean().item()


def mean_cosine_unmatched(image: torch.Tensor, text: torch.Tensor) -> float:
    """Mean cosine similarity of unmatched pairs ``(image_i, text_j)``, ``i != j``."""
    image, text = _pair(image, text)
    n = image.shape[0]
    if n < 2:
        raise ValueError(f"unmatched pairs need at least 2 rows, got {n}")
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_pairs = image.sum(0) @ text.sum(0)  # sum of every image-text cosine, without an N x N matrix
    matched = (image * text).sum()
    return ((all_pairs - matched) / (n * (n - 1))).item()


def geometry_report(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Every measure above: gap, alignment, uniformity (image, text, both), cosines."""
    image, text = _pair(image, text)
    return {
        "modality_gap": modality_gap(image, text),
        "alignment": alignment(image, text),
        "uniformity_image": uniformity(image),
        "uniformity_text": uniformity(text),
        "uniformity_all": uniformity(torch.cat([image, text])),
        "matched_cosine": matched_cosine(image, text),
        "unmatched_cosine": mean_cosine_unmatched(image, text),
    }


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Projection of ``points [N, D]`` onto their first two principal axes, ``[N, 2]``.

    Axis signs are fixed (largest-magnitude loading positive) so the result is
    deterministic; a missing second axis (D = 1 or one distinct point) is all zeros.
    """
    x = _as_2d(points, "points")
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]
    rows = torch.arange(axes.shape[0])
    signs = torch.sign(axes[rows, axes.abs().argmax(dim=1)])
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
    out = x @ axes.T
    if out.shape[1] < 2:
        out = torch.cat([out, out.new_zeros(out.shape[0], 2 - out.shape[1])], dim=1)
    return out


def plot_embeddings(
    image: torch.Tensor,
    text: torch.Tensor,
    path: str | os.PathLike,
    *,
    n_pairs: int = 10,
    title: str | None = None,
) -> Path:
    """Save a PNG scatter of image and text embeddings in one shared 2-D PCA projection.

    Points are coloured by modality; ``n_pairs`` matched pairs (evenly spread over the
    rows) are joined by grey lines; the modality gap is in the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image, text = _pair(image, text)
    n = image.shape[0]
    xy = pca_2d(torch.cat([image, text])).numpy()
    img_xy, txt_xy = xy[:n], xy[n:]
    gap = modality_gap(image, text)

    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shown = torch.linspace(0, n - 1, min(n_pairs, n)).round().long().unique().tolist() if n_pairs > 0 else []
    for i in shown:
        ax.plot([img_xy[i, 0], txt_xy[i, 0]], [img_xy[i, 1], txt_xy[i, 1]], color="0.6", linewidth=0.8, zorder=1)
    ax.scatter(img_xy[:, 0], img_xy[:, 1], s=12, c="tab:blue", label="image", zorder=2)
    ax.scatter(txt_xy[:, 0], txt_xy[:, 1], s=12, c="tab:orange", label="text", zorder=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best")
    heading = f"modality gap {gap:.3f}"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
