"""Parity with the original ALBEF code: fixture A's pretraining checkpoint and stored outputs."""

from __future__ import annotations

import json

import pytest
import torch

from albef_struct.lit.pretrain import PretrainModule
from albef_struct.losses import ContrastiveInputs, InfoNCEQueueLoss, mlm_distill_loss
from tests.conftest import PARITY_DIR, load_fixture, parity_config

ATOL = 1e-5


@pytest.fixture(scope="module")
def loaded() -> PretrainModule:
    queue = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["queue"]
    module = PretrainModule(arch=parity_config(), queue_size=queue, init_from=str(PARITY_DIR / "pretrain_checkpoint.pth"))
    return module.eval()


@pytest.fixture(scope="module")
def inputs() -> dict:
    return load_fixture("inputs.pt")


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_fixture("pretrain_outputs.pt")


def close(actual: torch.Tensor, reference: torch.Tensor) -> None:
    assert actual.shape == reference.shape
    torch.testing.assert_close(actual, reference, atol=ATOL, rtol=0)


@torch.no_grad()
def test_unimodal_encoders_match(loaded, inputs, expected):
    model = loaded.model
    image = model.encode_image(inputs["images"])
    text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    close(image.embeds, expected["image_embeds"])
    close(image.feat, expected["image_feat"])
    close(text.embeds, expected["text_embeds"])
    close(text.feat, expected["text_feat"])
    close(model.temp, expected["temp"])
    close(image.feat @ text.feat.T / model.temp, expected["sim_i2t"])
    close(text.feat @ image.feat.T / model.temp, expected["sim_t2i"])


@torch.no_grad()
def test_fusion_itm_and_mlm_logits_match(loaded, inputs, expected):
    model = loaded.model
    image = model.encode_image(inputs["images"])
    text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    fused = model.fuse(text.embeds, inputs["attention_mask"], image.embeds)
    close(fused, expected["fusion_last_hidden"])
    close(fused[:, 0], expected["fusion_cls"])
    close(model.itm_logits(fused), expected["itm_logits"])
    close(model.mlm_logits(inputs["input_ids"], inputs["attention_mask"], image.embeds), expected["mlm_logits"])


@torch.no_grad()
def test_momentum_features_match(loaded, inputs, expected):
    teacher = loaded.teacher.model
    close(teacher.encode_image(inputs["images"]).feat, expected["image_feat_m"])
    close(teacher.encode_text(inputs["input_ids"], inputs["attention_mask"]).feat, expected["text_feat_m"])


def _itc(module: PretrainModule, inputs: dict) -> torch.Tensor:
    model, teacher = module.model, module.teacher.model
    image = model.encode_image(inputs["images"])
    text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    return InfoNCEQueueLoss()(
        ContrastiveInputs(
            image_feat=image.feat,
            text_feat=text.feat,
            temp=model.temp,
            image_feat_m=teacher.encode_image(inputs["images"]).feat,
            text_feat_m=teacher.encode_text(inputs["input_ids"], inputs["attention_mask"]).feat,
            image_queue=module.queue.image_feats,
            text_queue=module.queue.text_feats,
            alpha=0.4,
        )
    ).loss


@torch.no_grad()
def test_itc_loss_with_queue_and_distillation_matches(loaded, inputs, expected):
    close(_itc(loaded, inputs), expected["loss_ita"])


@torch.no_grad()
def test_itc_loss_after_momentum_update_matches(inputs, expected):
    queue = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["queue"]
    module = PretrainModule(arch=parity_config(), queue_size=queue, init_from=str(PARITY_DIR / "pretrain_checkpoint.pth")).eval()
    module.teacher.update(module.model)
    module.model.clamp_temperature()
    close(_itc(module, inputs), expected["loss_ita_after_momentum_update"])


@torch.no_grad()
def test_mlm_loss_with_distillation_matches(loaded, inputs, expected):
    model, teacher = loaded.model, loaded.teacher.model
    ids, mask = expected["mlm_masked_input_ids"], inputs["attention_mask"]
    teacher_logits = teacher.mlm_logits(ids, mask, teacher.encode_image(inputs["images"]).embeds)
    logits = model.mlm_logits(ids, mask, model.encode_image(inputs["images"]).embeds)
    close(mlm_distill_loss(logits, expected["mlm_labels"], teacher_logits, 0.4), expected["loss_mlm"])


def test_checkpoint_queues_and_pointer_are_loaded(loaded):
    state = load_fixture("pretrain_checkpoint.pth")["model"]
    torch.testing.assert_close(loaded.queue.image_feats, state["image_queue"])
    torch.testing.assert_close(loaded.queue.text_feats, state["text_queue"])
    assert int(loaded.queue.ptr) == int(state["queue_ptr"])


def test_mlm_decoder_stays_tied_after_loading(loaded):
    model = loaded.model
    assert model.mlm_head.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight
    teacher = loaded.teacher.model
    assert teacher.mlm_head.decoder.weight is teacher.text_encoder.embeddings.word_embeddings.weight
