"""Frozen-feature protocol for contrastive-loss experiments: train projection heads on cached features.

    python -m experiments.frozen_features --data data/demo [--cache PATH] [--image-res 98] [--check]

Pretraining the small preset end to end costs seconds per step on a CPU, too much for a
(loss x batch size x seed) grid. This protocol keeps the small preset's encoders frozen
and trains only what the contrastive loss sees first:

1. :func:`cache_features` encodes the demo data once (eval mode, no gradients, the
   project's eval image transform, caption cleaning and tokenizer): the pre-projection
   pooled vectors of the small preset, i.e. DINOv2's image [CLS] state and MiniLM's
   mean-pooled text state (3 text layers), both 384-d. Every training image is encoded
   once; every one of its captions (3000 images x 5 on the demo) becomes a pair.
   The retrieval test split and per-image shape/colour labels are stored with them.
2. :class:`ProjectionHeads` maps both modalities to L2-normalised 256-d embeddings
   (linear, or a 2-layer GELU MLP) with ALBEF's learnable temperature (0.07, clamped to
   [0.001, 0.5]).
3. :func:`train_heads` trains the heads with any registered contrastive loss
   (``infonce``, ``siglip``, ``decomposable``, ``infonce_queue`` with an EMA teacher and
   a feature queue), each epoch one seeded permutation of all pairs (drop_last), AdamW,
   5 % linear warm-up then cosine to 0; then it measures zero-shot test retrieval
   (ITC cosine), the full-data training InfoNCE and linear probes of the projected
   image embedding.

Caveat: an image has five captions, so two pairs of one batch can share their image;
the in-batch losses then count the other caption as a negative (``infonce_queue`` can
treat it as a positive with ``same_image_positives=True``, since image ids are passed).
The full-data InfoNCE likewise counts an image's other four captions as negatives.
``infonce_queue`` learns slowly here: its EMA teacher (momentum 0.995) starts from the
same random heads, so runs of a few hundred steps compare it at a disadvantage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from albef_struct.losses.contrastive import ContrastiveInputs, ContrastiveLoss, build_contrastive_loss
from albef_struct.metrics.probe import linear_probe_accuracy
from albef_struct.metrics.retrieval import retrieval_metrics
from albef_struct.models.albef import TEMP_MAX, TEMP_MIN
from albef_struct.models.momentum import FeatureQueue, MomentumTeacher
from albef_struct.structure import LatentFeatures, StructureLosses

CACHE_VERSION = 1
#: attributes of ``attributes_{split}.json`` used as probe labels, under the names reported
PROBE_ATTRIBUTES = {"shape": "first_shape", "colour": "first_colour"}
ENCODE_BATCH = 64


# ------------------------------------------------------------------------------ features

@dataclass
class FrozenFeatures:
    """Cached encoder features of a train split (pairs) and a retrieval test split.

    ``pair_image[p]`` is the row of ``train_image`` that pair ``p``'s caption describes;
    ``test_txt2img[t]`` the row of ``test_image`` of test caption ``t``. Labels are
    integer ids per image into ``label_names[attribute]``.
    """

    train_image: torch.Tensor  # [N_img, D_img]
    pair_image: torch.Tensor  # [N_pairs] long
    train_text: torch.Tensor  # [N_pairs, D_txt]
    test_image: torch.Tensor  # [M_img, D_img]
    test_text: torch.Tensor  # [M_txt, D_txt]
    test_txt2img: torch.Tensor  # [M_txt] long
    train_labels: dict[str, torch.Tensor] = field(default_factory=dict)  # attribute -> [N_img] long
    test_labels: dict[str, torch.Tensor] = field(default_factory=dict)  # attribute -> [M_img] long
    label_names: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: optional: one train-transform (augmented) view per train image, ``[N_img, D_img]``
    train_image_aug: torch.Tensor | None = None
    #: optional: for each pair, another pair (caption) of the same image, ``[N_pairs]`` long
    pair_sibling: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return self.pair_image.shape[0]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(asdict(self), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FrozenFeatures:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def default_cache_path(data_dir: Path, image_res: int = 98) -> Path:
    """Where the CLI keeps the cache: next to the data it was computed from."""
    return Path(data_dir) / f"frozen_features_small_r{image_res}.pt"


def cache_metadata(data_dir: Path, image_res: int, max_tokens: int,
                   attributes: dict[str, str] | None = None) -> dict[str, Any]:
    """What a cache depends on; a stored cache is reused only when all of it matches."""
    from experiments.common import small_preset

    arch, text_init = small_preset()
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing: run `python -m albef_struct.data_prep.demo_data --out {data_dir}`")
    return {
        "version": CACHE_VERSION,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "image_res": int(image_res),
        "max_tokens": int(max_tokens),
        "vision": arch.vision.timm_model,
        "text_init": text_init,
        "text_pooling": arch.text_pooling,
        **({"attributes": dict(attributes)} if attributes and attributes != PROBE_ATTRIBUTES else {}),
    }


def cache_features(data_dir: Path, cache: Path, image_res: int = 98, max_tokens: int = 40,
                   device: str | torch.device = "cpu", batch_size: int = ENCODE_BATCH,
                   attributes: dict[str, str] | None = None) -> Path:
    """Encode ``data_dir``'s pretraining pairs and retrieval test split once; return ``cache``.

    Idempotent: an existing ``cache`` whose metadata (manifest hash, ``image_res``,
    ``max_tokens``, encoders) matches is returned untouched. Texts of both splits are
    tokenized alike (``max_tokens`` counts [CLS]; 40 keeps every demo caption whole).
    Probe labels: shape and colour of each image's first object (``first_shape`` /
    ``first_colour``: the occupied grid cell first in reading order, which the long
    captions also name first); every image has one.
    """
    data_dir, cache = Path(data_dir), Path(cache)
    meta = cache_metadata(data_dir, image_res, max_tokens, attributes)
    if cache.is_file() and _stored_meta(cache) == meta:
        print(f"frozen features: {cache} is up to date")
        return cache
    start = time.perf_counter()
    features = _encode_all(data_dir, image_res, max_tokens, torch.device(device), batch_size,
                           attributes or PROBE_ATTRIBUTES)
    seconds = time.perf_counter() - start
    features.meta = {**meta, "encode_seconds": seconds, "data_dir": str(data_dir)}
    features.save(cache)
    print(f"frozen features: encoded {features.train_image.shape[0]} + {features.test_image.shape[0]} images, "
          f"{features.num_pairs} + {features.test_text.shape[0]} captions in {seconds:.1f}s -> {cache}")
    return cache


def _stored_meta(cache: Path) -> dict[str, Any] | None:
    try:
        meta = dict(torch.load(cache, map_location="cpu", weights_only=True).get("meta", {}))
    except Exception:  # unreadable or foreign file: recompute
        return None
    meta.pop("encode_seconds", None)
    meta.pop("data_dir", None)
    return meta


def demo_splits(data_dir: Path, image_res: int, max_tokens: int, train_transform: bool = False,
                ) -> tuple[Any, Any, Any, list[int]]:
    """The demo data's DataModule, training pairs, retrieval test set and each image's first record.

    ``train_transform`` picks the augmenting training transform for the training images
    instead of the eval transform.
    """
    from albef_struct.data import PretrainDataModule, PretrainDataset

    dm = PretrainDataModule(train_files=[str(data_dir / "pretrain.json")],
                            test_file=str(data_dir / "retrieval_test.json"), image_root=str(data_dir),
                            image_res=image_res, num_workers=0, max_tokens=max_tokens)
    transform = dm.train_image_transform() if train_transform else dm.eval_image_transform()
    train = PretrainDataset(dm.train_files, dm.image_root, transform, dm.max_words)
    dm.setup("test")
    first_record = {img: rec for rec, img in reversed(list(enumerate(train.image_idx)))}
    return dm, train, dm.eval_sets["test"], [first_record[i] for i in range(len(first_record))]


def _encode_all(data_dir: Path, image_res: int, max_tokens: int, device: torch.device,
                batch_size: int, attributes: dict[str, str]) -> FrozenFeatures:
    from albef_struct.data.text import pre_caption

    dm, train, test, train_rows = demo_splits(data_dir, image_res, max_tokens)
    captions, pair_image = [], []
    for rec, img in enumerate(train.image_idx):
        caption = train.records[rec]["caption"]
        for text in [caption] if isinstance(caption, str) else caption:
            captions.append(pre_caption(text, dm.max_words))
            pair_image.append(img)

    model = _frozen_encoders(image_res).to(device)
    tokenize = lambda texts: dm.tokenizer(texts, max_length=max_tokens, padding="longest", truncation=True)  # noqa: E731
    labels, names = _probe_labels(data_dir, [train.records[r]["image"] for r in train_rows],
                                  [r["image"] for r in test.records], attributes)
    return FrozenFeatures(
        train_image=_encode_images(model, lambda i: train.load(train_rows[i]), len(train_rows), device, batch_size),
        pair_image=torch.tensor(pair_image, dtype=torch.long),
        train_text=_encode_texts(model, tokenize, captions, device, batch_size),
        test_image=_encode_images(model, test.load, len(test), device, batch_size),
        test_text=_encode_texts(model, tokenize, test.texts, device, batch_size),
        test_txt2img=torch.tensor(test.txt2img, dtype=torch.long),
        train_labels=labels["train"], test_labels=labels["test"], label_names=names,
    )


def _frozen_encoders(image_res: int) -> nn.Module:
    """The small preset's ALBEF, built as ``PretrainModule`` builds it (DINOv2 file + MiniLM text init)."""
    from albef_struct.models import ALBEF
    from albef_struct.models.hf_init import init_text_from_hf
    from experiments.common import experiment_arch

    arch, text_init = experiment_arch("small", image_res)
    model = ALBEF(arch)
    if text_init:
        init_text_from_hf(model, text_init)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _encode_images(model: nn.Module, load: Callable[[int], torch.Tensor], n: int, device: torch.device,
                   batch_size: int) -> torch.Tensor:
    """Pre-projection image features (the ViT's [CLS] state) of items ``0..n-1``."""
    out = []
    for start in range(0, n, batch_size):
        images = torch.stack([load(i) for i in range(start, min(n, start + batch_size))]).to(device)
        out.append(model.encode_image(images).pooled.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def _encode_texts(model: nn.Module, tokenize: Callable[[list[str]], dict[str, torch.Tensor]], texts: list[str],
                  device: torch.device, batch_size: int) -> torch.Tensor:
    """Pre-projection text features (the configured pooling of the text encoder's states)."""
    out = []
    for start in range(0, len(texts), 4 * batch_size):
        tokens = tokenize(texts[start:start + 4 * batch_size])
        encoded = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        out.append(encoded.pooled.float().cpu())
    return torch.cat(out)


def _probe_labels(data_dir: Path, train_images: list[str], test_images: list[str], attributes: dict[str, str],
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[str]]]:
    """Per-image integer labels of ``attributes`` (probe name -> attribute key), one vocabulary across both splits."""
    records = {}
    for split, images in (("train", train_images), ("test", test_images)):
        by_image = {r["image"]: r for r in json.loads((data_dir / f"attributes_{split}.json").read_text())}
        records[split] = [by_image[image] for image in images]
    labels: dict[str, dict[str, torch.Tensor]] = {"train": {}, "test": {}}
    names: dict[str, list[str]] = {}
    for name, key in attributes.items():
        names[name] = sorted({str(r[key]) for split in records.values() for r in split})
        for split, recs in records.items():
            labels[split][name] = torch.tensor([names[name].index(str(r[key])) for r in recs], dtype=torch.long)
    return labels, names


# ------------------------------------------------------------------------------ heads

class ProjectionHeads(nn.Module):
    """Image and text projections to L2-normalised ``embed_dim`` vectors, plus ALBEF's temperature.

    ``hidden=0``: one linear layer per modality; else ``Linear -> GELU -> Linear``. The
    temperature starts at ``temp`` and is a parameter (``learn_temp``) or a fixed buffer;
    :meth:`clamp_temperature` keeps it in ALBEF's [0.001, 0.5].
    """

    temp: torch.Tensor

    def __init__(self, image_dim: int = 384, text_dim: int = 384, embed_dim: int = 256, hidden: int = 0,
                 learn_temp: bool = True, temp: float = 0.07, private: bool = False) -> None:
        super().__init__()
        self.image_head = _head(image_dim, embed_dim, hidden)
        self.text_head = _head(text_dim, embed_dim, hidden)
        # feature separation's private ("independent") heads, parallel to the shared ones
        self.image_private_head = _head(image_dim, embed_dim, hidden) if private else None
        self.text_private_head = _head(text_dim, embed_dim, hidden) if private else None
        if learn_temp:
            self.temp = nn.Parameter(torch.tensor(float(temp)))
        else:
            self.register_buffer("temp", torch.tensor(float(temp)))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(x), dim=-1)

    def embed_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(x), dim=-1)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_image(image), self.embed_text(text)

    def private(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised private features (needs ``private=True``)."""
        if self.image_private_head is None or self.text_private_head is None:
            raise ValueError("these heads were built without private heads (private=False)")
        return F.normalize(self.image_private_head(image), dim=-1), F.normalize(self.text_private_head(text), dim=-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared projections' parameters (what the contrastive loss trains)."""
        return [*self.image_head.parameters(), *self.text_head.parameters()]

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        self.temp.clamp_(TEMP_MIN, TEMP_MAX)


def _head(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


# ------------------------------------------------------------------------------ training

@dataclass
class _Queued:
    """The EMA teacher of the heads, and (``infonce_queue``) its feature queue and distillation weight."""

    teacher: MomentumTeacher
    queue: FeatureQueue | None
    alpha: float
    alpha_warmup_steps: int


@dataclass
class Regularization:
    """A latent-structure regularizer added to the contrastive loss of :func:`train_heads`.

    ``view`` is where the regularizer's augmented features come from: ``"teacher"``, the
    EMA of the heads on the same inputs (ALBEF's momentum features, no gradient), or
    ``"second_view"``, the online heads on a second train-transform view of the image
    (``FrozenFeatures.train_image_aug``) and another caption of the same image
    (``pair_sibling``), with gradient. ``grad_norm_steps``: steps at which the gradient
    norm of the contrastive loss and of each weighted regularizer term on the shared
    heads is recorded (``grad_norms`` in the result).
    """

    losses: StructureLosses
    view: str = "teacher"
    grad_norm_steps: tuple[int, ...] = (0, 100)

    def __post_init__(self) -> None:
        if self.view not in ("teacher", "second_view"):
            raise ValueError(f"Regularization.view must be 'teacher' or 'second_view', got {self.view!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.losses.needs_aug and self.view == "teacher"


def train_heads(features: FrozenFeatures, loss: ContrastiveLoss, batch_size: int, epochs: float, seed: int,
                lr: float = 1e-3, weight_decay: float = 0.02, hidden: int = 0, learn_temp: bool = True, *,
                embed_dim: int = 256, queue_size: int = 4096, alpha: float = 0.4, alpha_warmup: bool = True,
                momentum: float = 0.995, probe: bool = True, device: str | torch.device = "cpu",
                regularization: Regularization | None = None,
                evaluate: Callable[[ProjectionHeads, FrozenFeatures], dict[str, Any]] | None = None,
                ) -> dict[str, Any]:
    """Train fresh :class:`ProjectionHeads` on ``features`` with ``loss``; return test and train metrics.

    ``round(epochs * steps_per_epoch)`` AdamW steps of ``batch_size`` pairs
    (``steps_per_epoch = num_pairs // batch_size``; each epoch one seeded permutation),
    learning rate linear from 0 over the first 5 % of steps, then cosine to 0. Weight
    decay applies to weight matrices only (not biases, temperature or loss parameters
    such as SigLIP's scale and bias, which are trained too). ``loss`` is deep-copied, so
    one instance can serve many runs; per-sample state is sized with ``loss.resize``.
    ``infonce_queue`` (``loss.uses_queue``) also keeps an EMA teacher (``momentum``) of
    the heads and a ``queue_size`` feature queue; its distillation weight ramps from 0 to
    ``alpha`` over the first epoch when ``alpha_warmup`` (ALBEF's schedule).
    ``regularization`` adds a latent-structure regularizer (private heads and an EMA
    teacher are built when it needs them); ``evaluate(heads, features)`` adds its own
    metrics to the result after training.

    Returns (recalls in percent): ``i2t_r1/r5`` (an image's hit: any of its captions at
    rank <= k), ``t2i_r1/r5``, ``r1`` (their R@1 mean), ``train_infonce`` (symmetric CE
    over all training pairs as candidates, final temperature), ``probe_shape`` and
    ``probe_colour`` (linear-probe accuracy of the projected test image embeddings, fit on
    the train images; with ``probe``), ``temp`` (a loss that ignores ``inputs.temp``, such
    as SigLIP, leaves it at 0.07, where ``train_infonce`` is then taken), ``steps``,
    ``steps_per_epoch``, ``train_seconds``, ``seconds_per_epoch``, ``eval_seconds``, ``last_loss`` (mean loss over
    the last 10 % of steps) and the memory of one step: ``step_saved_bytes``, the bytes of
    the distinct tensor storages autograd saves for backward in the first step, parameters
    excluded (the batch-dependent activations: features, logits, softmax outputs; exact on
    any device), and on CUDA ``cuda_peak_bytes`` (peak allocation during that step).
    """
    device = torch.device(device)
    steps_per_epoch = features.num_pairs // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {features.num_pairs} training pairs")
    total_steps = max(0, round(epochs * steps_per_epoch))
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        private = regularization is not None and regularization.losses.needs_private
        heads = ProjectionHeads(features.train_image.shape[1], features.train_text.shape[1], embed_dim,
                                hidden, learn_temp, private=private).to(device)
        loss = _prepared_loss(loss, features.num_pairs, embed_dim, device)
        queued = None
        if loss.uses_queue or loss.uses_teacher or (regularization is not None and regularization.needs_teacher):
            warm = steps_per_epoch if alpha_warmup else 0
            queue = FeatureQueue(embed_dim, queue_size, generator=generator).to(device) if loss.uses_queue else None
            queued = _Queued(MomentumTeacher(heads, momentum, exclude=("temp",)), queue, alpha, warm)
        data = _on_device(features, device)
        start = time.perf_counter()
        stats = _train_loop(heads, loss, queued, data, batch_size, total_steps, generator,
                            lr, weight_decay, device, regularization)
        train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    heads.clamp_temperature()
    metrics = evaluate_heads(heads, data, probe=probe)
    if evaluate is not None:
        metrics.update(evaluate(heads, data))
    epochs_done = total_steps / steps_per_epoch
    return {
        **metrics, **stats,
        "temp": float(heads.temp.detach()),
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs_done,
        "batch_size": batch_size,
        "seed": seed,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / epochs_done if total_steps else 0.0,
        "eval_seconds": time.perf_counter() - start,
    }


def _prepared_loss(loss: ContrastiveLoss, num_pairs: int, feature_dim: int, device: torch.device) -> ContrastiveLoss:
    """A private copy of ``loss`` on ``device``, with per-sample state sized to the pairs."""
    loss = copy.deepcopy(loss).to(device).train()
    resize = getattr(loss, "resize", None)
    if resize is not None:
        if "feature_dim" in inspect.signature(resize).parameters:
            resize(num_pairs, feature_dim=feature_dim)
        else:
            resize(num_pairs)
    return loss


def _on_device(features: FrozenFeatures, device: torch.device) -> FrozenFeatures:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(features).items()}
    return FrozenFeatures(**moved)


def _optimizer(heads: ProjectionHeads, loss: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    params = [p for p in list(heads.parameters()) + list(loss.parameters()) if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float = 0.05) -> float:
    """Learning-rate factor of ``step``: linear up over the first ``warmup_fraction`` of steps, then cosine to 0."""
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pair_batches(num_pairs: int, batch_size: int, total_steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``total_steps`` index batches: per epoch a fresh permutation, cut into full batches."""
    steps_per_epoch = num_pairs // batch_size
    step = 0
    while step < total_steps:
        order = torch.randperm(num_pairs, generator=generator)
        for i in range(min(steps_per_epoch, total_steps - step)):
            yield order[i * batch_size:(i + 1) * batch_size]
        step += steps_per_epoch


def _train_loop(heads: ProjectionHeads, loss: ContrastiveLoss, queued: _Queued | None, data: FrozenFeatures,
                batch_size: int, total_steps: int, generator: torch.Generator, lr: float, weight_decay: float,
                device: torch.device, regularization: Regularization | None = None) -> dict[str, Any]:
    extra = regularization.losses if regularization is not None else nn.Module()
    optimizer = _optimizer(heads, nn.ModuleList([loss, extra]), lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps))
    heads.train()
    tail_from = total_steps - max(1, total_steps // 10)
    tail_sum, memory, grad_norms = torch.zeros((), device=device), {}, {}
    record = set(regularization.grad_norm_steps) if regularization is not None else set()
    for step, index in enumerate(pair_batches(data.num_pairs, batch_size, total_steps, generator)):
        index = index.to(device)
        with _SavedTensorMeter(heads, loss, device) if step == 0 else contextlib.nullcontext() as meter:
            parts = _loss_step(heads, loss, queued, data, index, step, regularization)
            if step in record:
                grad_norms[str(step)] = shared_gradient_norms(heads, parts)
            value = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            value.backward()
        if step == 0:
            memory = meter.result()
        optimizer.step()
        schedule.step()
        if step >= tail_from:
            tail_sum += value.detach()
    heads.clamp_temperature()
    last = float(tail_sum) / max(1, total_steps - tail_from) if total_steps else float("nan")
    return {"last_loss": last, **memory, **({"grad_norms": grad_norms} if grad_norms else {})}


def shared_gradient_norms(heads: ProjectionHeads, parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The L2 norm of each loss part's gradient on the shared heads (graph kept for the real backward)."""
    params = heads.shared_parameters()
    norms = {}
    for name, part in parts.items():
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros(()))))
    return norms


def _loss_step(heads: ProjectionHeads, loss: ContrastiveLoss, queued: _Queued | None, data: FrozenFeatures,
               index: torch.Tensor, step: int, regularization: Regularization | None = None,
               ) -> dict[str, torch.Tensor]:
    """The loss parts of one batch of pair indices: ``contrastive`` and each weighted regularizer term.

    Updates the teacher before and the queue after, as ALBEF.
    """
    heads.clamp_temperature()
    image_x, text_x = data.train_image[data.pair_image[index]], data.train_text[index]
    image_feat, text_feat = heads(image_x, text_x)
    inputs = ContrastiveInputs(image_feat=image_feat, text_feat=text_feat, temp=heads.temp, sample_index=index)
    if queued is not None:
        with torch.no_grad():
            queued.teacher.update(heads)
            teacher = queued.teacher.model
            inputs.image_feat_m, inputs.text_feat_m = teacher.embed_image(image_x), teacher.embed_text(text_x)
    parts = {}
    if queued is not None and queued.queue is not None:
        ramp = min(1.0, step / queued.alpha_warmup_steps) if queued.alpha_warmup_steps else 1.0
        image_ids = data.pair_image[index]
        # copies: the queue is updated below, before the caller's backward pass reads the loss's inputs
        inputs.image_queue, inputs.text_queue = queued.queue.image_feats.clone(), queued.queue.text_feats.clone()
        inputs.alpha, inputs.image_ids, inputs.queue_ids = queued.alpha * ramp, image_ids, queued.queue.idx
        parts["contrastive"] = loss(inputs).loss
        queued.queue.enqueue(inputs.image_feat_m, inputs.text_feat_m, image_ids)
    else:
        parts["contrastive"] = loss(inputs).loss
    if regularization is not None:
        feats = _latent_features(heads, queued, data, index, inputs, regularization)
        parts.update(regularization.losses.weighted_terms(feats))
    return parts


def _latent_features(heads: ProjectionHeads, queued: _Queued | None, data: FrozenFeatures, index: torch.Tensor,
                     inputs: ContrastiveInputs, regularization: Regularization) -> LatentFeatures:
    """What the regularizer sees: shared embeddings, the augmented view and (if needed) private features."""
    losses = regularization.losses
    image_x, text_x = data.train_image[data.pair_image[index]], data.train_text[index]
    feats = LatentFeatures(image=inputs.image_feat, text=inputs.text_feat, temp=heads.temp)
    if losses.needs_private:
        feats.image_private, feats.text_private = heads.private(image_x, text_x)
    if not losses.needs_aug:
        return feats
    if regularization.view == "teacher":
        assert queued is not None
        feats.image_aug, feats.text_aug = inputs.image_feat_m, inputs.text_feat_m
        if losses.needs_private:
            with torch.no_grad():
                feats.image_private_aug, feats.text_private_aug = queued.teacher.model.private(image_x, text_x)
        return feats
    if data.train_image_aug is None or data.pair_sibling is None:
        raise ValueError("view='second_view' needs FrozenFeatures.train_image_aug and pair_sibling; "
                         "build the features with experiments.regularizers (it caches both)")
    image_xa = data.train_image_aug[data.pair_image[index]]
    text_xa = data.train_text[data.pair_sibling[index]]
    feats.image_aug, feats.text_aug = heads(image_xa, text_xa)
    if losses.needs_private:
        feats.image_private_aug, feats.text_private_aug = heads.private(image_xa, text_xa)
    return feats


class _SavedTensorMeter:
    """Sums the distinct storages autograd saves for backward (parameters excluded); CUDA peak too."""

    def __init__(self, heads: nn.Module, loss: nn.Module, device: torch.device) -> None:
        self.skip = {p.untyped_storage().data_ptr() for m in (heads, loss) for p in m.parameters()}
        self.storages: dict[int, int] = {}
        self.device = device
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> _SavedTensorMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    def result(self) -> dict[str, int]:
        out = {"step_saved_bytes": sum(self.storages.values())}
        if self.device.type == "cuda":
            out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(self.device) - self.base
        return out


# ------------------------------------------------------------------------------ evaluation

def retrieval_recall(sim: torch.Tensor, txt2img: torch.Tensor) -> dict[str, float]:
    """R@1/R@5 (percent) from ``[N_img, N_txt]`` similarities; ``r1`` = mean of the two R@1.

    Image->text: a hit when any caption of the image ranks within k; text->image: its image.
    """
    m = retrieval_metrics(sim, sim.T, txt2img)
    out = {"i2t_r1": m["txt_r1"], "i2t_r5": m["txt_r5"], "t2i_r1": m["img_r1"], "t2i_r5": m["img_r5"]}
    out["r1"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
    return out


@torch.no_grad()
def full_infonce(image_emb: torch.Tensor, text_emb: torch.Tensor, pair_image: torch.Tensor, temp: float,
                 chunk: int = 4096) -> float:
    """Mean symmetric InfoNCE over all ``N`` pairs, each anchor against all ``N`` pairs' candidates.

    ``image_emb`` holds each distinct image once (pair ``p`` shows row ``pair_image[p]``), so
    one ``[N, N_img]`` similarity matrix serves both directions: an image's candidates are
    all ``N`` texts, a text's are the ``N`` pair images (an image with ``c`` pairs counts ``c`` times).
    """
    log_count = torch.bincount(pair_image, minlength=image_emb.shape[0]).to(image_emb.dtype).log()
    lse_image = torch.full((image_emb.shape[0],), float("-inf"), device=image_emb.device)
    total_t2i, positives = 0.0, 0.0
    for start in range(0, text_emb.shape[0], chunk):
        logits = text_emb[start:start + chunk] @ image_emb.T / temp  # [chunk, N_img]
        rows = pair_image[start:start + chunk]
        positive = logits.gather(1, rows[:, None]).squeeze(1)
        total_t2i += (torch.logsumexp(logits + log_count, dim=1) - positive).sum().item()
        positives += positive.sum().item()
        lse_image = torch.logaddexp(lse_image, torch.logsumexp(logits, dim=0))
    total_i2t = lse_image[pair_image].sum().item() - positives
    return (total_i2t + total_t2i) / (2 * text_emb.shape[0])


@torch.no_grad()
def evaluate_heads(heads: ProjectionHeads, data: FrozenFeatures, probe: bool = True) -> dict[str, float]:
    """Test retrieval, full-data training InfoNCE and (``probe``) linear probes of the projected images."""
    heads.eval()
    test_image, test_text = heads(data.test_image, data.test_text)
    out = retrieval_recall((test_image @ test_text.T).float().cpu(), data.test_txt2img.cpu())
    train_image = heads.embed_image(data.train_image)
    out["train_infonce"] = full_infonce(train_image, heads.embed_text(data.train_text), data.pair_image,
                                        float(heads.temp.detach()))
    if probe:
        for name, train_y in data.train_labels.items():
            out[f"probe_{name}"] = linear_probe_accuracy(train_image.cpu(), train_y.cpu(), test_image.cpu(),
                                                         data.test_labels[name].cpu())
    return out


# ------------------------------------------------------------------------------ CLI

def _check(features: FrozenFeatures, batch_size: int, epochs: float) -> None:
    """One short run per loss without per-sample state; prints R@1 and time per epoch."""
    for name in ("infonce", "siglip", "infonce_queue"):
        result = train_heads(features, build_contrastive_loss(name), batch_size, epochs, seed=0)
        print(f"{name:<14} batch {batch_size} x {epochs} epochs: R@1 {result['r1']:5.1f}% "
              f"(i2t {result['i2t_r1']:.1f}, t2i {result['t2i_r1']:.1f}), train InfoNCE {result['train_infonce']:.3f}, "
              f"temp {result['temp']:.4f}, probe shape {result.get('probe_shape', float('nan')):.3f} "
              f"colour {result.get('probe_colour', float('nan')):.3f}, {result['seconds_per_epoch']:.1f}s/epoch",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--cache", type=Path, default=None, help="default: <data>/frozen_features_small_r<res>.pt")
    parser.add_argument("--image-res", type=int, default=98)
    parser.add_argument("--check", action="store_true", help="then train infonce, siglip and infonce_queue heads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=3)
    args = parser.parse_args(argv)
    cache = cache_features(args.data, args.cache or default_cache_path(args.data, args.image_res), args.image_res)
    if args.check:
        _check(FrozenFeatures.load(cache), args.batch_size, args.epochs)


if __name__ == "__main__":
    main()
