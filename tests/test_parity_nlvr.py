"""Parity with the original ALBEF code on NLVR2 (fixture A): logits, teacher initialisation, TA conversion."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.models import VisionConfig
from albef_struct.tasks.nlvr import NLVRModule, TextAssignmentModule
from tests.conftest import PARITY_DIR, load_fixture, parity_config

ATOL = 1e-5
TA_FILE = PARITY_DIR / "nlvr_ta_checkpoint.pth"


def task_arch():
    """Fixture A's architecture at the task resolution (ALBEF interpolates the TA pos-embed to it)."""
    arch = parity_config()
    return replace(arch, vision=VisionConfig(**{**vars(arch.vision), "img_size": 96}))


def albef_state(name: str) -> dict[str, torch.Tensor]:
    """A fixture file converted to this project's keys (``model.*``, ``teacher.model.*``)."""
    payload = load_fixture(name)
    return convert_albef_state_dict(payload.get("model", payload), parity_config().text.fusion_layer)[0]


def close(actual: torch.Tensor, reference: torch.Tensor) -> None:
    assert actual.shape == reference.shape
    torch.testing.assert_close(actual, reference, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def albef_nlvr() -> dict[str, torch.Tensor]:
    """ALBEF's full NLVR model state right after loading the TA checkpoint."""
    return albef_state("nlvr_checkpoint.pth")


@pytest.fixture(scope="module")
def loaded(albef_nlvr) -> NLVRModule:
    module = NLVRModule(arch=task_arch(), init_from=str(TA_FILE))
    with torch.no_grad():  # ALBEF's classifier is freshly initialised: take its values
        for name, param in module.model.cls_head.named_parameters():
            param.copy_(albef_nlvr[f"model.cls_head.{name}"])
    return module.eval()


@torch.no_grad()
def test_nlvr_logits_match_albef(loaded):
    data = load_fixture("nlvr_outputs.pt")
    logits = loaded(data["images0"], data["images1"], data["input_ids"], data["attention_mask"])
    close(logits, data["logits"])


def test_online_weights_match_albefs_after_loading_the_ta_checkpoint(loaded, albef_nlvr):
    ours = loaded.model.state_dict()
    online = {k[len("model."):]: v for k, v in albef_nlvr.items() if k.startswith("model.")}
    assert set(ours) == set(online)
    for key, value in online.items():
        close(ours[key], value)  # the pos-embed interpolated from 4x4 to 6x6 patches, the rest copied


def test_albef_momentum_before_load_keeps_the_initial_teacher(albef_nlvr):
    torch.manual_seed(0)
    initial = NLVRModule(arch=task_arch())
    torch.manual_seed(0)
    module = NLVRModule(arch=task_arch(), init_from=str(TA_FILE), albef_momentum_before_load=True)
    teacher, online = module.teacher.model.state_dict(), module.model.state_dict()
    for key, value in initial.model.state_dict().items():
        assert torch.equal(teacher[key], value), key  # the pre-load weights ...
    vit = "visual_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(teacher[vit], online[vit])  # ... not the TA weights
    # ALBEF's record shows the same: its momentum ViT is not the loaded one, its momentum
    # classifier equals the (fresh) online classifier.
    assert not torch.equal(albef_nlvr[f"teacher.model.{vit}"], albef_nlvr[f"model.{vit}"])
    assert torch.equal(teacher["cls_head.0.weight"], online["cls_head.0.weight"])
    assert torch.equal(albef_nlvr["teacher.model.cls_head.0.weight"], albef_nlvr["model.cls_head.0.weight"])


def test_default_teacher_is_made_from_the_loaded_weights(tmp_path, albef_nlvr):
    # ALBEF's released TA file has no momentum keys (visual_encoder, text_encoder, proj, temp, ta_head)
    ta = load_fixture("nlvr_ta_checkpoint.pth")["model"]
    official = {k: v for k, v in ta.items() if "_m." not in k}
    path = tmp_path / "pretrain_model_nlvr.pth"
    torch.save(official, path)
    module = NLVRModule(arch=task_arch(), init_from=str(path))
    teacher, online = module.teacher.model.state_dict(), module.model.state_dict()
    for key, value in teacher.items():
        assert torch.equal(value, online[key]), key

    # Fixture A's TA file also carries the momentum text encoder: ALBEF loaded it into its
    # teacher, and so does this project; the momentum ViT, absent from the file, is the
    # loaded online ViT here (the fix) but a random one in ALBEF.
    module = NLVRModule(arch=task_arch(), init_from=str(TA_FILE))
    teacher, online = module.teacher.model.state_dict(), module.model.state_dict()
    for key, value in teacher.items():
        if key.startswith(("text_encoder.", "fusion_encoder.")):
            assert torch.equal(value, albef_nlvr[f"teacher.model.{key}"]), key
        elif key.startswith("visual_encoder."):
            assert torch.equal(value, online[key]), key


def test_ta_conversion_of_the_pretraining_checkpoint_matches_albef():
    module = TextAssignmentModule(arch=parity_config(), init_from=str(PARITY_DIR / "pretrain_checkpoint.pth"))
    converted = albef_state("nlvr_ta_checkpoint.pth")
    reference = {k[len("model."):]: v for k, v in converted.items() if k.startswith("model.")}
    ours = module.model.state_dict()
    assert set(ours) - set(reference) == {"ta_head.weight", "ta_head.bias"}  # fresh, as in ALBEF
    for key, value in ours.items():
        if key in reference:
            assert torch.equal(value, reference[key]), key  # layer k of the pretraining BERT -> pair (k-6)
    layers = module.model.fusion_encoder.layer
    assert len(layers) == 12 and layers[4].crossattention.self.key is layers[5].crossattention.self.key
