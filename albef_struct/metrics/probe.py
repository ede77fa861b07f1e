"""Linear-probe accuracy: how much of an attribute a frozen feature set encodes linearly.

Used to probe image-only, text-only and concatenated features on the same attributes
(the "information gap" of perfectly aligned modalities shows up as text or image
features missing what the other modality knows).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["linear_probe_accuracy", "probe_report"]


def _features(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a non-empty [N, D] feature tensor, got {shape}")
    return x.detach().to(device="cpu", dtype=torch.float64)


def _labels(y: torch.Tensor, n: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y).detach().cpu()
    if y.dim() != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"{name}: expected {n} integer labels (shape [{n}]), got {y.dtype} {tuple(y.shape)}")
    return y.long()


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 200,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Test accuracy in [0, 1] of multinomial logistic regression on standardised features.

    Trained full-batch with L-BFGS (``epochs`` iterations at most, step size ``lr``) on the
    mean cross-entropy plus ``weight_decay * ||W||^2`` (bias not decayed). Labels may be any
    integers; test labels never seen in training count as errors. Runs on CPU in float64,
    so the result depends only on the inputs and ``seed`` (the initial weights).
    """
    train_x, test_x = _features(train_x, "train_x"), _features(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} features but test_x has {test_x.shape[1]}")
    train_y = _labels(train_y, train_x.shape[0], "train_y")
    test_y = _labels(test_y, test_x.shape[0], "test_y")

    classes, train_t = torch.unique(train_y, return_inverse=True)
    if len(classes) == 1:  # a single class: the probe can only ever predict it
        return (test_y == classes[0]).double().mean().item()
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std

    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(train_z.shape[1], len(classes), generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(train_z @ weight + bias, train_t) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = classes[(test_z @ weight + bias).argmax(dim=1)]
    return (predicted == test_y).double().mean().item()


def probe_report(
    features: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    labels: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    **probe_kwargs,
) -> dict[str, dict[str, float]]:
    """Probe accuracy for every feature set x attribute: ``{feature: {attribute: acc}}``.

    ``features[name] = (train_x, test_x)`` (e.g. ``image``, ``text``, ``concat``) and
    ``labels[attribute] = (train_y, test_y)``, rows aligned across all of them; extra
    keyword arguments go to :func:`linear_probe_accuracy`.
    """
    return {
        fname: {
            attr: linear_probe_accuracy(train_x, train_y, test_x, test_y, **probe_kwargs)
            for attr, (train_y, test_y) in labels.items()
        }
        for fname, (train_x, test_x) in features.items()
    }
