"""GELU recomputed inside the following linear layer: each MLP keeps its pre-activation for backward, not both.

A transformer MLP ``fc2(gelu(fc1(x)))`` normally stores two ``[tokens, 4 * width]`` tensors for
the backward pass: GELU's input (for GELU's derivative) and GELU's output (for ``fc2``'s weight
gradient). :class:`GeluLinear` takes the pre-activation, stores only that, and recomputes the
GELU in backward, an elementwise pass that costs far less than the matrix products around it.
The arithmetic is unchanged: the forward pass and the gradients are bit-identical (tested in fp32
and under bf16 autocast).

:func:`set_gelu_recompute` switches every ViT block (timm ``Mlp``) and every BERT layer
(``BertIntermediate`` + ``BertOutput``) of an ALBEF model between the two forms in place; the
parameters, their names and the state dict stay the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# BertConfig.hidden_act values this module can fuse, and the matching ``approximate`` of F.gelu
BERT_GELU = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


class _GeluLinearFunction(torch.autograd.Function):
    """``linear(gelu(pre), weight, bias)`` saving ``pre`` only; autocast is applied as the eager ops would."""

    @staticmethod
    def forward(ctx, pre, weight, bias, approximate, compute_dtype):  # type: ignore[override]
        hidden = F.gelu(pre, approximate=approximate)
        ctx.save_for_backward(pre, weight)
        ctx.approximate, ctx.compute_dtype, ctx.has_bias = approximate, compute_dtype, bias is not None
        return F.linear(hidden.to(compute_dtype), weight.to(compute_dtype), None if bias is None else bias.to(compute_dtype))

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        pre, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        hidden = F.gelu(pre, approximate=ctx.approximate).to(dtype)
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        grad_weight = (grad_2d.T @ hidden.reshape(-1, hidden.shape[-1])).to(weight.dtype)
        grad_bias = grad_2d.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_hidden = (grad_out.to(dtype) @ weight.to(dtype)).to(pre.dtype)
        grad_pre = torch.ops.aten.gelu_backward(grad_hidden, pre, approximate=ctx.approximate)
        return grad_pre, grad_weight, grad_bias, None, None


def gelu_linear(pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    """``F.linear(F.gelu(pre), weight, bias)`` that keeps only ``pre`` for the backward pass."""
    device_type = pre.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    with torch.autocast(device_type, enabled=False):
        return _GeluLinearFunction.apply(pre, weight, bias, approximate, dtype)


class GeluLinear(nn.Linear):
    """A linear layer whose input is the pre-activation: it applies GELU first (see module docstring)."""

    approximate: str = "none"

    def forward(self, pre: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return gelu_linear(pre, self.weight, self.bias, self.approximate)


def _retype(linear: nn.Linear, cls: type[nn.Linear], approximate: str | None = None) -> None:
    """Change the class of ``linear`` in place (parameters, hooks and names are kept)."""
    linear.__class__ = cls
    if cls is GeluLinear:
        linear.approximate = approximate  # type: ignore[attr-defined]
    elif "approximate" in linear.__dict__:
        del linear.approximate  # type: ignore[attr-defined]


def _timm_mlps(encoder: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in encoder.named_modules():
        if hasattr(module, "fc1") and hasattr(module, "fc2") and hasattr(module, "act"):
            yield name, module


def _set_timm_mlp(name: str, mlp: nn.Module, enabled: bool) -> None:
    fused = isinstance(mlp.fc2, GeluLinear)
    if enabled == fused:
        return
    if not enabled:
        mlp.act = nn.GELU(approximate=mlp.fc2.approximate)
        _retype(mlp.fc2, nn.Linear)
        return
    if not isinstance(mlp.act, nn.GELU) or type(mlp.fc2) is not nn.Linear:
        raise ValueError(
            f"arch.recompute_gelu: the image encoder's {name} is {type(mlp.act).__name__} -> "
            f"{type(mlp.fc2).__name__}, not GELU -> Linear; set arch.recompute_gelu: false for this encoder"
        )
    between = [m for m in (getattr(mlp, "drop1", None), getattr(mlp, "norm", None)) if m is not None]
    if any(not isinstance(m, nn.Identity) and not (isinstance(m, nn.Dropout) and m.p == 0) for m in between):
        raise ValueError(
            f"arch.recompute_gelu: the image encoder's {name} has dropout or a norm between GELU and fc2; "
            "set arch.recompute_gelu: false for this encoder"
        )
    _retype(mlp.fc2, GeluLinear, mlp.act.approximate)
    mlp.act = nn.Identity()


def _bert_pairs(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, layer in module.named_modules():
        if hasattr(layer, "intermediate") and hasattr(layer, "output") and hasattr(layer.intermediate, "intermediate_act_fn"):
            yield name, layer


def _set_bert_layer(name: str, layer: nn.Module, enabled: bool, hidden_act: str) -> None:
    dense = layer.output.dense
    if enabled == isinstance(dense, GeluLinear):
        return
    if not enabled:
        layer.intermediate.intermediate_act_fn = layer.intermediate.__dict__.pop("_gelu_act")
        _retype(dense, nn.Linear)
        return
    if hidden_act not in BERT_GELU:
        raise ValueError(
            f"arch.recompute_gelu: text layer {name} uses hidden_act {hidden_act!r}; it fuses {sorted(BERT_GELU)} "
            "only, so set arch.recompute_gelu: false"
        )
    # kept out of the module tree (and so out of state dicts) to restore when switched off
    layer.intermediate.__dict__["_gelu_act"] = layer.intermediate.intermediate_act_fn
    layer.intermediate.intermediate_act_fn = nn.Identity()
    _retype(dense, GeluLinear, BERT_GELU[hidden_act])


def set_gelu_recompute(model: nn.Module, enabled: bool, hidden_act: str = "gelu") -> None:
    """Switch every ViT MLP and BERT FFN under ``model`` to :class:`GeluLinear` (or back)."""
    visual = getattr(model, "visual_encoder", None)
    if visual is not None:
        for name, mlp in _timm_mlps(visual):
            _set_timm_mlp(name, mlp, enabled)
    for name, layer in _bert_pairs(model):
        _set_bert_layer(name, layer, enabled, hidden_act)
