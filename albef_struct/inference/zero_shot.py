"""Zero-shot classification by prompts, ITM re-ranking of the top classes, and k-shot linear probes."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from albef_struct.inference.errors import InferenceInputError
from albef_struct.inference.inputs import Images, image_list
from albef_struct.inference.model import InferenceModel
from albef_struct.metrics.probe import linear_probe_accuracy

#: generic prompts; a dataset's own phrasing (its captions' style) usually does better
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image with a {}.", "{}")


def prompts(class_name: str, templates: Sequence[str]) -> list[str]:
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InferenceInputError(f"prompt templates need a '{{}}' where the class name goes: {bad}")
    return [t.format(class_name) for t in templates]


def class_embeddings(model: InferenceModel, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, E]``: per class, the normalised mean of its prompts' normalised ITC text embeddings."""
    texts = [p for name in classes for p in prompts(name, templates)]
    feats = model.encode_text(texts).view(len(classes), len(templates), -1)
    return F.normalize(feats.mean(dim=1), dim=-1)


def zero_shot_scores(model: InferenceModel, images: Images | torch.Tensor, classes: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES, rerank_k: int = 0,
                     image_feats: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores ``[N, C]`` (``images`` may be precomputed ITC embeddings ``[N, E]``, or pass them as
    ``image_feats`` beside the images): ITC cosine to each class embedding; with ``rerank_k`` the top-k
    classes of each image are re-ordered by their mean ITM probability over the prompts (they stay above
    the other classes)."""
    if image_feats is None:
        image_feats = images if _embeddings(images) else model.encode_image(images)
    scores = image_feats @ class_embeddings(model, classes, templates).T
    if rerank_k <= 0:
        return scores
    if _embeddings(images):
        raise InferenceInputError("ITM re-ranking needs the images themselves, not their embeddings")
    k = min(rerank_k, len(classes))
    top = scores.topk(k, dim=1).indices
    n = scores.shape[0]
    rows = torch.arange(n).repeat_interleave(k * len(templates))
    texts = [p for i in range(n) for c in top[i].tolist() for p in prompts(classes[c], templates)]
    items = image_list(images)
    picked = items[rows] if isinstance(items, torch.Tensor) else [items[r] for r in rows.tolist()]
    itm = model.match(picked, texts).view(n, k, len(templates)).mean(dim=2)
    reranked = scores.clone()
    reranked.scatter_(1, top, 2.0 + itm)  # cosines are <= 1: the re-ranked classes stay on top
    return reranked


def _embeddings(images) -> bool:
    return isinstance(images, torch.Tensor) and images.dim() == 2


def topk_accuracy(scores: torch.Tensor, labels: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the ``k`` highest scores, for each ``k`` up to the class count."""
    target = torch.as_tensor(list(labels)).view(-1, 1)
    return {f"top{k}": 100.0 * (scores.topk(k, dim=1).indices == target).any(dim=1).float().mean().item()
            for k in ks if k <= scores.shape[1]}


def few_shot_accuracy(train_feats: torch.Tensor, train_labels: Sequence[int], test_feats: torch.Tensor,
                      test_labels: Sequence[int], shots: Sequence[int] = (1, 5, 10),
                      seeds: Sequence[int] = (0, 1, 2)) -> dict[int, dict[str, float]]:
    """k-shot linear probes: per seed, ``k`` random training images per class, logistic regression on their
    embeddings, accuracy (percent) on the test set. Classes with fewer than ``k`` training images are refused."""
    train_y = torch.as_tensor(list(train_labels))
    test_y = torch.as_tensor(list(test_labels))
    out: dict[int, dict[str, float]] = {}
    for k in shots:
        runs = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            chosen = []
            for label in sorted(set(train_y.tolist())):
                members = (train_y == label).nonzero().flatten()
                if len(members) < k:
                    raise InferenceInputError(f"class {label} has {len(members)} training images, fewer than {k} shots")
                chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
            rows = torch.cat(chosen)
            runs.append(100.0 * linear_probe_accuracy(train_feats[rows], train_y[rows], test_feats, test_y, seed=seed))
        out[k] = {"mean": statistics.fmean(runs), "std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
                  "runs": runs}
    return out
