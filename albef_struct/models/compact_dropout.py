"""Dropout that keeps a one-byte mask on CPU tensors, and BERT eager attention that uses it.

On a CPU, ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_`` into a tensor of the
input's dtype, scales it, multiplies, and autograd keeps that float mask for the backward pass:
four bytes per element in fp32. :func:`compact_dropout` draws the same Bernoulli(1 - p) mask by
comparing uniform integer draws with a threshold (``random_`` on int32 took 13 ms for 4.9 M
elements where ``bernoulli_`` with a scalar probability took 29; 2 threads, AMD EPYC), keeps it as
``bool`` (one byte per element) and multiplies by the mask, then by the scale. What differs from
torch's dropout is the random stream, and under bf16 the rounding (the scale is a Python float
here, a bf16 value in torch's mask). Evaluation and ``p = 0`` are untouched; on CUDA it calls
torch's fused kernel, which already keeps a one-byte mask, and under ``torch.compile`` torch's
dropout, which the compiler fuses into its own kernels. In a pretraining step this is worth
1-3 % of the time and 12-19 MB of peak heap (README, "Speed, memory and scale").

BERT's eager attention (``transformers``' ``eager_attention_forward``) calls
``F.dropout`` on the attention probabilities itself; :data:`EAGER_MODULE_DROPOUT` names the same
attention that applies the attention block's own ``dropout`` module instead, so that switching the
modules (:func:`set_compact_dropout`) covers the probabilities too. With ``nn.Dropout`` modules it
computes what ``eager_attention_forward`` computes, random stream included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

# the attention implementation name BERT blocks get for arch.attention: eager (registered below)
EAGER_MODULE_DROPOUT = "albef_eager"


class _MaskAndScale(torch.autograd.Function):
    """``x * keep * scale`` keeping the boolean ``keep`` (not a float mask) for backward."""

    @staticmethod
    def forward(ctx, x, keep, scale):  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked(x, keep, scale)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return _masked(grad_out, keep, ctx.scale), None, None


def _masked(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # a product, not a select: NaN and Inf at dropped positions stay visible, as with torch's dropout
    return x.mul(keep).mul_(scale)


# uniform int32 draws from ``random_()`` cover [0, 2**31): one comparison gives Bernoulli(1 - p) to 2**-32
_DRAW_RANGE = 2**31


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask, each element True with probability 1 - p (independently)."""
    draws = torch.empty(shape, dtype=torch.int32, device=device).random_()
    return draws >= round(p * _DRAW_RANGE)


def compact_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with probability ``p``: as ``F.dropout(x, p, training)``, with a one-byte mask on CPU."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    # CUDA's fused kernel keeps a one-byte mask already; torch.compile traces no Tensor.random_ and
    # generates its own dropout kernel from F.dropout
    if x.device.type != "cpu" or p == 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    keep = keep_mask(x.shape, p, x.device)
    scale = 1.0 / (1.0 - p)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _masked(x, keep, scale)
    return _MaskAndScale.apply(x, keep, scale)


class CompactDropout(nn.Dropout):
    """``nn.Dropout`` computed by :func:`compact_dropout` (same parameters, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compact_dropout(x, self.p, self.training)


def set_compact_dropout(model: nn.Module, enabled: bool) -> int:
    """Switch every ``nn.Dropout`` with ``p > 0`` under ``model`` to :class:`CompactDropout` (or back)
    in place; returns how many were switched. Attention probabilities follow where the blocks use
    :data:`EAGER_MODULE_DROPOUT` (``arch.attention: eager``); SDPA draws its own mask inside the kernel."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.Dropout and enabled and module.p > 0:
            module.__class__ = CompactDropout
            switched += 1
        elif type(module) is CompactDropout and not enabled:
            module.__class__ = nn.Dropout
            switched += 1
    return switched


def eager_attention_module_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's eager attention with the probabilities' dropout done by ``module.dropout`` (see module docstring).

    ``dropout`` is what the caller passes (its probability while training, 0 in evaluation); the
    module's own dropout, of that probability, applies it, so a :class:`CompactDropout` there keeps a
    one-byte mask."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = F.softmax(scores, dim=-1)
    if dropout > 0.0:
        drop = getattr(module, "dropout", None)
        if not isinstance(drop, nn.Dropout) or drop.p != dropout:
            raise ValueError(f"attention {EAGER_MODULE_DROPOUT!r} drops the probabilities through the block's own "
                             f"dropout module, so it must be an nn.Dropout of p={dropout}; "
                             f"{type(module).__name__}.dropout is {drop!r}")
        probabilities = drop(probabilities)
    output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(EAGER_MODULE_DROPOUT, eager_attention_module_dropout)
