"""Every speed switch against the plain path: same numbers (or a stated tolerance), and it really switches.

Dropout is off in the equivalence tests (``hidden_dropout = attention_dropout = 0``)
and every random draw (MLM masking, hard negatives) is seeded identically on both sides.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from albef_struct.lit.base import fused_adamw_fits
from albef_struct.lit.compile import ENCODERS, CompileEncoders, compile_encoders
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.lit.schedule import OptimConfig
from albef_struct.models import ALBEF, ALBEFConfig
from albef_struct.models.recompute import GeluLinear, gelu_linear
from tests.conftest import tiny_config


def quiet_arch(**overrides) -> ALBEFConfig:
    """The tiny test architecture without dropout."""
    arch = tiny_config(**overrides)
    return replace(arch, text=replace(arch.text, hidden_dropout=0.0, attention_dropout=0.0))


def make_module(arch: ALBEFConfig | None = None, **kwargs) -> PretrainModule:
    torch.manual_seed(0)
    module = PretrainModule(arch=arch or quiet_arch(), queue_size=64, alpha_warmup=False, **kwargs)
    return module.train()


def make_batch(n: int = 4, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, length), generator=g)
    ids[:, 0] = 101
    lengths = torch.tensor([length] + [length - 2 - (i % 3) for i in range(1, n)])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "input_ids": ids * mask,
        "attention_mask": mask,
        "index": torch.arange(n),
    }


def seeded_losses(module: PretrainModule, batch: dict, seed: int = 1, alpha: float = 0.4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # MLM masking and hard negatives draw from the global generator
    return module.pretrain_losses(batch, alpha)


def grads_of(module: PretrainModule, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=retain_graph)
    return {n: g for n, g in zip(params, grads) if g is not None}


def assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m, n=name: f"{n}: {m}", **tol)


class OpRecorder(TorchDispatchMode):
    """Records the names of the aten ops that run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def saved_activation_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


# --- SDPA vs eager attention -------------------------------------------------------------------------
def set_attention(module: PretrainModule, implementation: str) -> None:
    module.model.set_attention(implementation)
    module.teacher.model.set_attention(implementation)


def test_sdpa_and_eager_attention_give_the_same_outputs_loss_and_gradients():
    sdpa = make_module()
    eager = copy.deepcopy(sdpa)
    set_attention(eager, "eager")
    batch = make_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    recorders = {}
    outputs = {}
    for name, module in (("sdpa", sdpa), ("eager", eager)):
        model = module.model
        with OpRecorder() as recorder:
            image = model.encode_image(batch["image"])
            text = model.encode_text(ids, mask)
            fused = model.fuse(text.embeds, mask, image.embeds)
            mlm = model.mlm_logits(ids, mask, image.embeds)
        recorders[name] = recorder.ops
        outputs[name] = (image.embeds, image.feat, text.embeds, text.feat, fused, mlm)
    for a, b in zip(outputs["sdpa"], outputs["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the switch is real: only the SDPA model calls the fused attention kernel
    assert any("scaled_dot_product" in op for op in recorders["sdpa"])
    assert not any("scaled_dot_product" in op for op in recorders["eager"])

    loss_sdpa = seeded_losses(sdpa, batch)["loss"]
    loss_eager = seeded_losses(eager, batch)["loss"]
    torch.testing.assert_close(loss_sdpa, loss_eager, rtol=1e-5, atol=1e-5)
    assert_same_grads(grads_of(sdpa, loss_sdpa), grads_of(eager, loss_eager), rtol=1e-4, atol=1e-6)


# --- one fusion call for ITM ---------------------------------------------------------------------------
def test_single_fusion_call_itm_equals_two_calls():
    module = make_module()
    batch = make_batch(n=6)
    enc = module.encode_batch(batch)
    itc = module.contrastive_step(enc, batch, alpha=0.4)
    calls = []
    hook = module.model.fusion_encoder.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    results = {}
    for single in (True, False):
        module.itm_single_fusion_call = single
        calls.clear()
        torch.manual_seed(3)  # the same hard negatives on both paths
        loss = module.itm(enc.image, enc.text, batch["attention_mask"], itc.sim_i2t.detach(), itc.sim_t2i.detach())
        results[single] = (loss, list(calls), grads_of(module, loss, retain_graph=True))
    hook.remove()
    assert results[True][1] == [18] and results[False][1] == [6, 12]
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=1e-6)
    assert_same_grads(results[True][2], results[False][2], rtol=1e-5, atol=1e-7)


# --- MLM logits at masked positions only ------------------------------------------------------------
def test_mlm_on_masked_positions_only_equals_full_projection():
    module = make_module()
    batch = make_batch()
    enc = module.encode_batch(batch)
    shapes = []
    hooks = [
        head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
        for head in (module.model.mlm_head, module.teacher.model.mlm_head)
    ]
    results = {}
    for masked_only in (True, False):
        module.mlm_masked_positions_only = masked_only
        shapes.clear()
        torch.manual_seed(4)  # the same masked tokens on both paths
        loss = module.mlm(batch["input_ids"], batch["attention_mask"], enc.image, enc.image_m, alpha=0.4)
        results[masked_only] = (loss, list(shapes), grads_of(module, loss, retain_graph=True))
    for hook in hooks:
        hook.remove()
    vocab = module.model.config.text.vocab_size
    n_masked = results[True][1][0][0]
    assert 0 < n_masked < batch["input_ids"].numel()
    assert results[True][1] == [(n_masked, vocab)] * 2  # teacher and student
    assert results[False][1] == [(*batch["input_ids"].shape, vocab)] * 2
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=1e-6)
    assert_same_grads(results[True][2], results[False][2], rtol=1e-5, atol=1e-7)


# --- the teacher stores no activations ------------------------------------------------------------
def test_teacher_forward_has_no_graph_and_saves_no_activations():
    module = make_module()
    batch = make_batch()
    enc = module.encode_batch(batch)
    for teacher_out in (enc.image_m, enc.text_m):
        for t in teacher_out:
            assert t.grad_fn is None and not t.requires_grad
    assert enc.image.embeds.grad_fn is not None and enc.text.feat.grad_fn is not None

    teacher = module.teacher.model

    def teacher_forward() -> None:
        teacher.encode_image(batch["image"])
        teacher.encode_text(batch["input_ids"], batch["attention_mask"])

    with torch.no_grad():  # as encode_batch runs it
        no_grad_bytes = saved_activation_bytes(teacher_forward)
    trainable = copy.deepcopy(teacher).requires_grad_(True)  # the same forward if the teacher were trained

    def trainable_forward() -> None:
        trainable.encode_image(batch["image"])
        trainable.encode_text(batch["input_ids"], batch["attention_mask"])

    with_grad_bytes = saved_activation_bytes(trainable_forward)
    assert no_grad_bytes == 0
    assert with_grad_bytes > 100_000  # activations (and weights) autograd would keep until backward


# --- in-place queue ------------------------------------------------------------------------------------
def test_queue_update_is_in_place():
    module = make_module()
    queue = module.queue
    pointers = {name: getattr(queue, name).data_ptr() for name in ("image_feats", "text_feats", "idx", "ptr")}
    before = queue.image_feats.clone()
    for step in range(3):
        enc_feats = []
        hook = module.teacher.model.vision_proj.register_forward_hook(lambda m, a, out: enc_feats.append(out))
        seeded_losses(module, make_batch(seed=step))
        hook.remove()
        assert {name: getattr(queue, name).data_ptr() for name in pointers} == pointers
    module.flush_enqueue()  # the last batch waits for a backward pass, which this loop does not run
    assert int(queue.ptr) == 12
    assert not torch.equal(queue.image_feats[:, :12], before[:, :12])
    torch.testing.assert_close(queue.image_feats[:, 12:], before[:, 12:])
    torch.testing.assert_close(queue.image_feats[:, 8:12], torch.nn.functional.normalize(enc_feats[0], dim=-1).T)


def test_itc_reading_the_queue_in_place_equals_albefs_copy_and_keeps_no_copy():
    copying = make_module(itc_queue_in_place=False)
    in_place = copy.deepcopy(copying)
    in_place.itc_queue_in_place = True
    queue_bytes = 2 * copying.queue.image_feats.numel() * copying.queue.image_feats.element_size()
    losses, saved = {}, {}
    for name, module in (("copy", copying), ("in_place", in_place)):
        own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor, own=own, storages=storages) -> torch.Tensor:
            if tensor.untyped_storage().data_ptr() not in own:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            losses[name] = seeded_losses(module, make_batch())["loss"]
        saved[name] = sum(storages.values())
        assert int(module.queue.ptr) == (4 if name == "copy" else 0)  # the copy path enqueued at once
    torch.testing.assert_close(losses["copy"], losses["in_place"], rtol=1e-6, atol=0)
    assert_same_grads(grads_of(copying, losses["copy"]), grads_of(in_place, losses["in_place"]), rtol=1e-5, atol=1e-8)
    in_place.on_after_backward()
    for name in ("image_feats", "text_feats", "idx", "ptr"):
        assert torch.equal(getattr(in_place.queue, name), getattr(copying.queue, name)), name
    assert saved["copy"] - saved["in_place"] >= queue_bytes  # the two copies autograd no longer keeps


# --- ITM: the last fusion layer at [CLS] only ---------------------------------------------------------
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("streams", [1, 2])
def test_first_token_only_fusion_equals_the_full_fusion_at_cls(attention, streams):
    torch.manual_seed(0)
    model = ALBEF(quiet_arch(attention=attention, fusion_streams=streams, grad_checkpointing=True)).train()
    batch = make_batch()
    image = model.encode_image(batch["image"]).embeds
    images = image if streams == 1 else [image, image.flip(0)]
    text = model.encode_text(batch["input_ids"], batch["attention_mask"]).embeds
    full = model.fuse(text, batch["attention_mask"], images)
    first = model.fuse(text, batch["attention_mask"], images, first_token_only=True)
    assert first.shape == (4, 1, text.shape[-1])
    torch.testing.assert_close(first, full[:, :1], rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(out[:, 0].square().sum(), model.fusion_encoder.layer[-1].attention.self.key.weight)[0]
             for out in (full, first)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)  # the last layer's keys still see every token


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fusion_on_indexed_images_equals_fusion_on_their_copies(attention):
    """Distinct images + a row index (keys/values projected once per image) = every row's own image copy."""
    torch.manual_seed(0)
    model = ALBEF(quiet_arch(attention=attention)).train()
    batch = make_batch()
    image = model.encode_image(batch["image"]).embeds
    text = model.encode_text(batch["input_ids"], batch["attention_mask"]).embeds
    image_mask = torch.ones(image.shape[:2], dtype=torch.long)
    image_mask[2, -1] = 0  # one padded image token, which its rows must not attend
    for index in (torch.tensor([2, 0, 0, 3]), torch.zeros(4, dtype=torch.long)):
        copies = model.fuse(text, batch["attention_mask"], image[index], image_mask[index])
        indexed = model.fuse(text, batch["attention_mask"], image, image_mask, image_index=index)
        torch.testing.assert_close(indexed, copies, rtol=1e-6, atol=1e-6)
        grads = [torch.autograd.grad(out.square().sum(), image, retain_graph=True)[0] for out in (copies, indexed)]
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    one = model.fuse(text, batch["attention_mask"], image[1:2], image_index=torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(one, model.fuse(text, batch["attention_mask"], image[1:2].expand(4, -1, -1)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one-stream"):
        ALBEF(quiet_arch(fusion_streams=2)).fuse(text, batch["attention_mask"], [image, image], image_index=torch.zeros(4, dtype=torch.long))


def test_itm_first_token_only_gives_the_same_loss_and_gradients_and_saves_less():
    every = make_module(itm_first_token_only=False)
    first = copy.deepcopy(every)
    first.itm_first_token_only = True
    batch = make_batch()
    losses, saved = {}, {}
    for name, module in (("every", every), ("first", first)):
        saved[name] = saved_activation_bytes(lambda m=module, n=name: losses.__setitem__(n, seeded_losses(m, batch)))
    for term in ("itm", "loss"):
        torch.testing.assert_close(losses["first"][term], losses["every"][term], rtol=1e-6, atol=1e-7)
    assert_same_grads(grads_of(every, losses["every"]["loss"]), grads_of(first, losses["first"]["loss"]), rtol=1e-4, atol=1e-7)
    # the last layer's FFN no longer keeps its text positions for the 3B ITM pairs: [3B, L - 1, intermediate]
    intermediate = every.model.config.text.intermediate
    ffn_bytes = 3 * 4 * (batch["input_ids"].shape[1] - 1) * intermediate * 4
    assert saved["first"] <= saved["every"] - ffn_bytes


# --- fused AdamW ------------------------------------------------------------------------------------------
def optimizer_for(module: PretrainModule) -> torch.optim.Optimizer:
    """``configure_optimizers`` with a stand-in trainer (it only reads the step counts)."""
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=10, max_epochs=1, num_training_batches=10, accumulate_grad_batches=1
    )
    try:
        return module.configure_optimizers()["optimizer"]
    finally:
        module._trainer = None


def test_fused_adamw_matches_unfused():
    """Same parameters after a few steps on the same gradients.

    The gradients are fixed random tensors rather than the model's: some real
    gradients are zero up to rounding (attention key biases), and Adam turns a
    rounding-level difference there into an lr-sized one (``lr * g / eps``).
    """
    optim = OptimConfig(lr=1e-3, warmup_steps=0, fused=False)
    plain = make_module(optim=optim)
    fused = copy.deepcopy(plain)
    fused.optim = replace(optim, fused=True)  # OptimConfig(fused=True): supported on CPU by this torch
    opt_plain, opt_fused = optimizer_for(plain), optimizer_for(fused)
    assert opt_fused.defaults["fused"] is True and not opt_plain.defaults.get("fused")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
        opt_plain.step()
        opt_fused.step()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    start = make_module(optim=optim)
    assert not torch.equal(start.model.itm_head.weight, fused.model.itm_head.weight)  # the steps did move weights


def test_fused_adamw_is_the_default_where_it_takes_every_parameter():
    """``optim.fused: null`` picks the fused kernel for plain CPU parameters; false keeps torch's loop."""
    assert optimizer_for(make_module(optim=OptimConfig())).defaults["fused"] is True
    assert not optimizer_for(make_module(optim=OptimConfig(fused=False))).defaults.get("fused")
    param = torch.nn.Parameter(torch.zeros(2))
    assert fused_adamw_fits([{"params": [param]}])
    assert not fused_adamw_fits([{"params": []}])
    assert not fused_adamw_fits([{"params": [param, torch.nn.Parameter(torch.zeros(2, device="meta"))]}])


# --- bf16 autocast ----------------------------------------------------------------------------------
BF16_RTOL = 0.03  # bf16 keeps 8 significand bits (~0.4% per rounding); observed differences are < 1%


def test_bf16_autocast_runs_the_full_step_within_tolerance_of_fp32():
    fp32 = make_module()
    bf16 = copy.deepcopy(fp32)
    batch = make_batch()
    ref = seeded_losses(fp32, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = seeded_losses(bf16, batch)
    for term in ("itc", "itm", "mlm", "loss"):
        torch.testing.assert_close(low[term].float(), ref[term], rtol=BF16_RTOL, atol=1e-3, msg=term)
    low["loss"].backward()
    grads = [p.grad for p in bf16.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


# --- activation checkpointing ------------------------------------------------------------------------
def test_activation_checkpointing_gives_identical_gradients_and_saves_less():
    plain = make_module()
    ckpt = copy.deepcopy(plain)
    ckpt.model.set_grad_checkpointing(True)
    batch = make_batch()
    losses, saved = {}, {}
    for name, module in (("plain", plain), ("ckpt", ckpt)):
        saved[name] = saved_activation_bytes(lambda m=module, n=name: losses.__setitem__(n, seeded_losses(m, batch)["loss"]))
    torch.testing.assert_close(losses["plain"], losses["ckpt"], rtol=0, atol=0)
    assert_same_grads(grads_of(plain, losses["plain"]), grads_of(ckpt, losses["ckpt"]), rtol=1e-6, atol=1e-8)
    assert saved["ckpt"] < saved["plain"]


def test_checkpointing_only_the_named_encoders_keeps_the_numbers_and_saves_in_between():
    plain = make_module()
    everything, fusion_only = copy.deepcopy(plain), make_module(quiet_arch(grad_checkpointing=["fusion"]))
    everything.model.set_grad_checkpointing(True)
    model = fusion_only.model
    flags = {"vision": model.visual_encoder.grad_checkpointing, "text": model.text_encoder.grad_checkpointing,
             "fusion": model.fusion_encoder.grad_checkpointing}
    assert flags == {"vision": False, "text": False, "fusion": True}
    batch = make_batch()
    losses, saved = {}, {}
    for name, module in (("plain", plain), ("all", everything), ("fusion", fusion_only)):
        saved[name] = saved_activation_bytes(lambda m=module, n=name: losses.__setitem__(n, seeded_losses(m, batch)["loss"]))
    torch.testing.assert_close(losses["fusion"], losses["plain"], rtol=0, atol=0)
    assert_same_grads(grads_of(plain, losses["plain"]), grads_of(fusion_only, losses["fusion"]), rtol=1e-6, atol=1e-8)
    assert saved["all"] < saved["fusion"] < saved["plain"]
    model.set_grad_checkpointing(["vision", "text"])
    assert model.visual_encoder.grad_checkpointing and model.text_encoder.grad_checkpointing
    assert not model.fusion_encoder.grad_checkpointing


@pytest.mark.parametrize("setting", [["vit"], "fusion", ["fusion", "mlp"]])
def test_an_unknown_checkpointing_choice_names_the_key_and_the_encoders(setting):
    with pytest.raises(ValueError, match=r"arch\.grad_checkpointing.*\['vision', 'text', 'fusion', 'decoder'\]"):
        quiet_arch(grad_checkpointing=setting)


# --- GELU recomputed inside the next linear layer (arch.recompute_gelu) -----------------------------------
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_linear_gradients_are_exact_in_float64(approximate):
    g = torch.Generator().manual_seed(0)
    pre, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                         for shape in ((2, 3, 6), (4, 6), (4,)))
    assert torch.autograd.gradcheck(lambda p, w, b: gelu_linear(p, w, b, approximate), (pre, weight, bias))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gelu_linear_matches_linear_of_gelu_bit_for_bit(precision):
    """Forward and every gradient equal the two eager ops, under bf16 autocast too (same casts, same products)."""
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(4, 7, 48, generator=g, requires_grad=True)
    weight, bias = torch.randn(12, 48, generator=g, requires_grad=True), torch.randn(12, generator=g, requires_grad=True)
    upstream = torch.randn(4, 7, 12, generator=g)

    def run(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fn(pre.to(torch.bfloat16) if precision == "bf16" else pre, weight, bias)
        grads = torch.autograd.grad(out, (pre, weight, bias), upstream.to(out.dtype))
        return out, grads

    out_eager, grads_eager = run(lambda p, w, b: torch.nn.functional.linear(torch.nn.functional.gelu(p), w, b))
    out_fused, grads_fused = run(gelu_linear)
    assert out_fused.dtype == out_eager.dtype and torch.equal(out_fused, out_eager)
    for eager, fused in zip(grads_eager, grads_fused):
        assert fused.dtype == eager.dtype and torch.equal(fused, eager)


def test_recompute_gelu_gives_identical_losses_and_gradients_and_saves_the_gelu_outputs():
    plain = make_module()
    fused = copy.deepcopy(plain)
    fused.model.set_gelu_recompute(True)
    assert list(fused.state_dict()) == list(plain.state_dict())
    batch = make_batch()
    losses, saved = {}, {}
    for name, module in (("plain", plain), ("fused", fused)):
        saved[name] = saved_activation_bytes(lambda m=module, n=name: losses.__setitem__(n, seeded_losses(m, batch)["loss"]))
    torch.testing.assert_close(losses["plain"], losses["fused"], rtol=0, atol=0)
    assert_same_grads(grads_of(plain, losses["plain"]), grads_of(fused, losses["fused"]), rtol=0, atol=0)
    # at least the image encoder's one MLP output is no longer kept: [B, tokens, 4 * width] floats
    vit = plain.model.visual_encoder
    vit_gelu_bytes = batch["image"].shape[0] * (vit.patch_embed.num_patches + 1) * vit.blocks[0].mlp.fc1.out_features * 4
    assert saved["fused"] <= saved["plain"] - vit_gelu_bytes


def test_recompute_gelu_switches_every_mlp_both_ways_from_the_arch_key():
    torch.manual_seed(0)
    model = ALBEF(quiet_arch(recompute_gelu=True, answer_decoder_layers=1)).eval()
    mlps = [block.mlp for block in model.visual_encoder.blocks]
    ffns = [m for m in model.modules() if hasattr(m, "intermediate") and hasattr(m, "output")]
    assert len(ffns) == 3  # text, fusion and answer-decoder layers
    assert all(type(m.fc2) is GeluLinear and isinstance(m.act, torch.nn.Identity) for m in mlps)
    assert all(type(f.output.dense) is GeluLinear for f in ffns)
    batch = make_batch()
    with torch.no_grad():
        image = model.encode_image(batch["image"]).embeds
        fused = model.fuse(model.encode_text(batch["input_ids"], batch["attention_mask"]).embeds, batch["attention_mask"], image)
    keys = list(model.state_dict())
    model.set_gelu_recompute(False)
    assert all(type(m.fc2) is torch.nn.Linear and isinstance(m.act, torch.nn.GELU) for m in mlps)
    assert all(type(f.output.dense) is torch.nn.Linear and not isinstance(f.intermediate.intermediate_act_fn, torch.nn.Identity)
               for f in ffns)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model.encode_image(batch["image"]).embeds, image)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).embeds
        assert torch.equal(model.fuse(text, batch["attention_mask"], image), fused)


def test_recompute_gelu_refuses_activations_it_cannot_fuse():
    arch = quiet_arch()
    with pytest.raises(ValueError, match=r"hidden_act 'relu'.*arch.recompute_gelu: false"):
        ALBEF(replace(arch, text=replace(arch.text, hidden_act="relu"), recompute_gelu=True))
    model = ALBEF(arch)
    model.visual_encoder.blocks[0].mlp.act = torch.nn.SiLU()
    with pytest.raises(ValueError, match=r"blocks.0.mlp is SiLU -> Linear, not GELU -> Linear"):
        model.set_gelu_recompute(True)


# --- torch.compile of the encoders ---------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_encoders_match_eager():
    torch.manual_seed(0)
    model = ALBEF(quiet_arch()).eval()
    keys = list(model.state_dict())
    batches = [make_batch(length=9), make_batch(length=13, seed=1)]  # two text lengths: one dynamic graph

    def outputs() -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for batch in batches:
                image = model.encode_image(batch["image"])
                text = model.encode_text(batch["input_ids"], batch["attention_mask"])
                out += [image.embeds, text.embeds, model.fuse(text.embeds, batch["attention_mask"], image.embeds)]
        return out

    eager = outputs()
    assert compile_encoders(model, dynamic=True) == list(ENCODERS)
    compiled = outputs()
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints keep their names
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_callback_marks_student_and_teacher_encoders():
    """Compilation is lazy: the callback only wraps the modules (the slow test above runs them)."""
    module = make_module()
    keys = list(module.state_dict())
    callback = CompileEncoders(mode="default")
    callback.setup(None, module, "fit")
    callback.setup(None, module, "fit")  # idempotent
    assert callback.compiled == [f"{owner}.{name}" for owner in ("model", "teacher.model") for name in ENCODERS]
    for owner in (module.model, module.teacher.model):
        assert all(getattr(owner, name)._compiled_call_impl is not None for name in ENCODERS)
    assert list(module.state_dict()) == keys
