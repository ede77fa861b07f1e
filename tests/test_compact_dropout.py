"""Compact dropout (one-byte mask, quicker draws on CPU) and the eager attention that routes through it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import eager_attention_forward

from albef_struct.models import ALBEF
from albef_struct.models.compact_dropout import (
    CompactDropout,
    compact_dropout,
    eager_attention_module_dropout,
    keep_mask,
    set_compact_dropout,
)
from albef_struct.models.text import bert_attention
from tests.conftest import tiny_config


def saved_dtypes(fn) -> list[torch.dtype]:
    """The dtypes of the tensors autograd saves for backward while ``fn`` runs."""
    dtypes: list[torch.dtype] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        dtypes.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return dtypes


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    kept = keep_mask(torch.Size([2_000_000]), p, torch.device("cpu")).double().mean().item()
    sd = (p * (1 - p) / 2_000_000) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_elements_are_scaled_and_the_gradient_uses_the_same_mask(dtype):
    torch.manual_seed(1)
    x = (torch.rand(64, 300) + 0.5).to(dtype).requires_grad_()
    out = compact_dropout(x, 0.2)
    dropped = out == 0
    assert 0.15 < dropped.double().mean().item() < 0.25
    torch.testing.assert_close(out[~dropped], (x.detach() * 1.25)[~dropped], rtol=0, atol=0)
    grad_out = torch.randn(64, 300, dtype=dtype)
    out.backward(grad_out)
    expected = torch.where(dropped, torch.zeros((), dtype=dtype), grad_out * 1.25)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_only_a_bool_mask_is_saved_where_torch_saves_a_float_one():
    x = torch.randn(8, 16, requires_grad=True)
    assert saved_dtypes(lambda: compact_dropout(x, 0.1)) == [torch.bool]
    # what it replaces on a CPU: a mask of the input's dtype (4 bytes per element in fp32)
    assert torch.float32 in saved_dtypes(lambda: F.dropout(x, 0.1, training=True))


def test_evaluation_and_edge_probabilities():
    x = torch.randn(4, 5)
    assert compact_dropout(x, 0.3, training=False) is x
    assert compact_dropout(x, 0.0) is x
    assert torch.equal(compact_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1, got 1.5"):
        compact_dropout(x, 1.5)
    # as with torch's dropout, a NaN stays visible: the mask multiplies, it does not select
    x[0, 0] = float("nan")
    torch.manual_seed(0)
    assert compact_dropout(x, 0.5).isnan().sum() == 1
    # without autograd it runs the same arithmetic
    torch.manual_seed(3)
    a = compact_dropout(x.requires_grad_(), 0.5).detach()
    torch.manual_seed(3)
    with torch.no_grad():
        b = compact_dropout(x, 0.5)
    assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_the_model_switches_every_dropout_and_back():
    model = ALBEF(tiny_config())
    compact = [m for m in model.modules() if isinstance(m, CompactDropout)]
    plain = [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
    assert compact and not plain  # arch.compact_dropout defaults to true
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_compact_dropout(model, False) == len(compact)
    assert not any(isinstance(m, CompactDropout) for m in model.modules())
    assert ALBEF(replace(tiny_config(), compact_dropout=False)).state_dict().keys() == state.keys()
    model.set_compact_dropout(True)
    assert sum(isinstance(m, CompactDropout) for m in model.modules()) == len(compact)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def attention_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., 3:] = -1e4
    return query, key, value, mask


@pytest.mark.parametrize("training", [False, True])
def test_module_dropout_attention_equals_transformers_eager_with_torch_dropout(training):
    """With ``nn.Dropout`` (torch's dropout) the attention equals transformers' own eager function,
    random stream included; with the model's compact dropout only the mask's draws differ."""
    holder = nn.Module()
    holder.dropout = nn.Dropout(0.25)
    holder.train(training)
    p = 0.25 if training else 0.0
    query, key, value, mask = attention_inputs()
    torch.manual_seed(5)
    ours, ours_probs = eager_attention_module_dropout(holder, query, key, value, mask, scaling=0.5, dropout=p)
    torch.manual_seed(5)
    theirs, theirs_probs = eager_attention_forward(holder, query, key, value, mask, scaling=0.5, dropout=p)
    assert torch.equal(ours, theirs) and torch.equal(ours_probs, theirs_probs)
    if training:
        set_compact_dropout(holder, True)
        _, compact_probs = eager_attention_module_dropout(holder, query, key, value, mask, scaling=0.5, dropout=p)
        undropped = F.softmax(query @ key.transpose(2, 3) * 0.5 + mask, dim=-1)
        kept = compact_probs != 0
        torch.testing.assert_close(compact_probs[kept], (undropped / 0.75)[kept])
        assert 0 < (~kept).sum() < kept.sum()


def test_module_dropout_attention_refuses_a_block_without_that_dropout():
    holder = nn.Module()
    holder.dropout = nn.Dropout(0.1)
    with pytest.raises(ValueError, match=r"nn.Dropout of p=0.25; Module.dropout is Dropout\(p=0.1"):
        eager_attention_module_dropout(holder, *attention_inputs(), dropout=0.25)


def test_eager_blocks_drop_attention_probabilities_through_their_modules():
    model = ALBEF(replace(tiny_config(), attention="eager"))
    assert bert_attention(model) == "eager"
    drops = []
    for layer in model.fusion_encoder.layer:
        layer.crossattention.self.dropout.register_forward_hook(lambda m, i, o: drops.append(o.shape))
    model.train()
    image = model.encode_image(torch.randn(2, 3, 32, 32))
    ids = torch.randint(1000, 2000, (2, 6))
    text = model.encode_text(ids, torch.ones_like(ids))
    model.fuse(text.embeds, torch.ones_like(ids), image.embeds)
    # one call per fusion layer, on [batch, heads, text length, image tokens] probabilities
    assert drops == [torch.Size([2, 2, 6, 5])] * len(model.fusion_encoder.layer)
    model.set_attention("sdpa")
    assert bert_attention(model) == "sdpa"


def test_compiled_encoders_train_with_dropout_in_one_graph():
    """Under torch.compile, dropout is torch's (the compiler traces no Tensor.random_): fullgraph holds."""
    from albef_struct.lit.compile import compile_encoders

    torch.manual_seed(0)
    model = ALBEF(tiny_config()).train()
    compile_encoders(model, backend="aot_eager", fullgraph=True, encoders=("text_encoder",))
    ids = torch.randint(1000, 2000, (2, 6))
    first = model.encode_text(ids, torch.ones_like(ids)).embeds
    second = model.encode_text(ids, torch.ones_like(ids)).embeds
    assert not torch.equal(first, second)  # dropout is on
    second.sum().backward()
    assert model.text_encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_activation_checkpointing_recomputes_the_same_masks():
    """Recomputed blocks draw their dropout masks again from the restored random state: the gradients
    equal those of the run that kept its activations."""
    ids = torch.randint(1000, 2000, (2, 6), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = ALBEF(replace(tiny_config(), grad_checkpointing=checkpointed)).train()
        torch.manual_seed(7)
        model.encode_text(ids, torch.ones_like(ids)).embeds.square().sum().backward()
        grads.append(model.text_encoder.layer[0].intermediate.dense.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
