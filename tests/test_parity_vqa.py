"""Parity with the original ALBEF code: VQA answer ranking, training loss and decoder conversion (fixture A).

The module starts from ALBEF's pretraining checkpoint through this project's
converter, as ALBEF's VQA.py does: ``bert.`` stripped, position embeddings
resampled from the 64-px to the 96-px grid, and the answer decoder (online and
momentum) built from the fusion layers, embeddings and MLM head. Ranking uses
ALBEF's scoring (``albef_first_token_double_count=True``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.models import ALBEFConfig
from albef_struct.tasks.vqa import VQAModule
from albef_struct.tasks.vqa_answers import question_states, rank_answers
from tests.conftest import PARITY_DIR, load_fixture, parity_config

ATOL = 1e-5
PRETRAIN_CKPT = str(PARITY_DIR / "pretrain_checkpoint.pth")


def task_config() -> ALBEFConfig:
    config = parity_config()
    task_res = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["task_res"]
    return replace(config, vision=replace(config.vision, img_size=task_res),
                   answer_decoder_layers=config.text.fusion_layers)


def close(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Assert equality to ATOL; returns the max abs difference (shown with ``pytest -s``)."""
    assert actual.shape == reference.shape
    torch.testing.assert_close(actual.float(), reference.float(), atol=ATOL, rtol=0)
    return float((actual.float() - reference.float()).abs().max())


@pytest.fixture(scope="module")
def vqa() -> VQAModule:
    return VQAModule(arch=task_config(), init_from=PRETRAIN_CKPT, albef_first_token_double_count=True).eval()


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_fixture("vqa_outputs.pt")


def test_loads_like_albef(vqa):
    report = vqa.init_report
    tasks = json.loads((PARITY_DIR / "config.json").read_text())["tasks"]["vqa"]
    assert not report.fresh and not tasks["missing"]  # nothing starts fresh, as in ALBEF
    # ALBEF's unexpected keys (queues, temp, projections, ITM head), in this project's names, are what we drop
    albef_unexpected, _ = convert_albef_state_dict({k: torch.zeros(1) for k in tasks["unexpected"]}, 6)
    assert set(report.dropped) == set(albef_unexpected)
    assert set(report.resized) == {"model.visual_encoder.pos_embed", "teacher.model.visual_encoder.pos_embed"}
    assert report.loaded["model.answer_decoder.layer.0.crossattention.self.key.weight"] == (
        "model.fusion_encoder.layer.0.crossattention.self.key.weight")
    assert report.loaded["teacher.model.answer_decoder.head.transform.dense.weight"] == (
        "teacher.model.mlm_head.transform.dense.weight")


def test_converted_weights_equal_albefs_vqa_model(vqa):
    """ALBEF's VQA model state after its own conversion (``vqa_checkpoint.pth``) equals ours, key by key."""
    albef_state, _ = convert_albef_state_dict(load_fixture("vqa_checkpoint.pth"), task_config().text.fusion_layer)
    ours = vqa.state_dict()
    assert set(albef_state) <= set(ours)
    decoder_keys = [k for k in albef_state if ".answer_decoder." in f".{k}"]
    assert len([k for k in decoder_keys if k.startswith("model.")]) > 100  # layers, embeddings and head
    assert any(k.startswith("teacher.model.answer_decoder.") for k in decoder_keys)
    worst: dict[str, float] = {}
    for key, value in albef_state.items():
        torch.testing.assert_close(ours[key], value, atol=ATOL, rtol=0, msg=key)
        group = ".".join(key.split(".")[:3 if key.startswith("teacher.") else 2])
        worst[group] = max(worst.get(group, 0.0), float((ours[key].float() - value.float()).abs().max()))
    print("max abs diff per module:", worst)


def test_rank_answer_matches(vqa, expected):
    vqa.set_answer_list([f"answer {i}" for i in range(expected["answer_list_ids"].shape[0])],
                        {"input_ids": expected["answer_list_ids"], "attention_mask": expected["answer_list_mask"]})
    with torch.no_grad():
        ranked = vqa(expected["images"], expected["question_ids"], expected["question_mask"], k=expected["k"])
    assert torch.equal(ranked.ids, expected["topk_ids"])
    print(f"topk_probs max abs diff {close(ranked.probs, expected['topk_probs']):.2e}")


def test_fixed_ranking_scores_each_token_once(vqa, expected):
    """The default drops only the repeated first token: its scores differ from ALBEF's by exactly that term."""
    with torch.no_grad():
        states = question_states(vqa.model, expected["images"], expected["question_ids"], expected["question_mask"])
        args = (vqa.model.answer_decoder, states, expected["question_mask"],
                expected["answer_list_ids"], expected["answer_list_mask"])
        k = expected["answer_list_ids"].shape[0]  # every candidate: compare the full distributions
        albef = rank_answers(*args, k=k, albef_first_token_double_count=True)
        fixed = rank_answers(*args, k=k)
        first = torch.softmax(vqa.model.answer_decoder(
            expected["answer_list_ids"][:1, :1].expand(4, 1), torch.ones(4, 1, dtype=torch.long),
            states, expected["question_mask"])[:, 0], dim=-1)[:, expected["answer_list_ids"][:, 1]]
    # ALBEF's score = fixed score + log p(first token), so p_albef ∝ p_fixed · p(first token)
    p_fixed = torch.zeros(4, k).scatter(1, fixed.ids, fixed.probs)
    p_albef = torch.zeros(4, k).scatter(1, albef.ids, albef.probs)
    reweighted = p_fixed * first
    torch.testing.assert_close(p_albef, reweighted / reweighted.sum(1, keepdim=True), atol=1e-6, rtol=1e-4)


def test_training_loss_alpha0_matches(vqa, expected):
    index = expected["train_answer_index"]
    batch = {
        "image": expected["images"],
        "question_ids": expected["question_ids"],
        "question_mask": expected["question_mask"],
        "answer_ids": expected["answer_list_ids"][index],
        "answer_mask": expected["answer_list_mask"][index],
        "answer_weights": expected["train_weights"],
        "answers_per_question": torch.tensor(expected["train_answers_per_question"]),
    }
    with torch.no_grad():
        loss = vqa.vqa_training_loss(batch, alpha=0.0)  # eval mode: no EMA step, dropout off
    print(f"train_loss_alpha0 abs diff {close(loss, expected['train_loss_alpha0']):.2e}")
