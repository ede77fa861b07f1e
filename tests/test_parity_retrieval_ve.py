"""Parity with the original ALBEF code: retrieval and SNLI-VE outputs of fixture A.

Both modules start from ALBEF's pretraining checkpoint through this project's
converter (strip ``bert.``, resample the online and momentum position
embeddings from the 64-px to the 96-px grid), as ALBEF's Retrieval.py and VE.py do.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from albef_struct.checkpoint.keymap import convert_albef_state_dict
from albef_struct.lit.retrieval_eval import EncodedGallery, itm_match_scores, rerank
from albef_struct.metrics.retrieval import retrieval_metrics
from albef_struct.models import ALBEFConfig
from albef_struct.tasks.retrieval import RetrievalModule
from albef_struct.tasks.ve import VEModule
from tests.conftest import PARITY_DIR, load_fixture, parity_config

ATOL = 1e-5
PRETRAIN_CKPT = str(PARITY_DIR / "pretrain_checkpoint.pth")


def task_config() -> ALBEFConfig:
    config = parity_config()
    task_res = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["task_res"]
    return replace(config, vision=replace(config.vision, img_size=task_res))


def close(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Assert equality to ATOL; returns the max abs difference (shown with ``pytest -s``)."""
    assert actual.shape == reference.shape
    torch.testing.assert_close(actual, reference, atol=ATOL, rtol=0)
    return float((actual - reference).abs().max())


# --- retrieval -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def retrieval() -> RetrievalModule:
    queue = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["queue"]
    return RetrievalModule(arch=task_config(), queue_size=queue, init_from=PRETRAIN_CKPT).eval()


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_fixture("retrieval_outputs.pt")


@pytest.fixture(scope="module")
def gallery(retrieval, expected) -> EncodedGallery:
    model = retrieval.model
    with torch.no_grad():
        image = model.encode_image(expected["images"])
        text = model.encode_text(expected["input_ids"], expected["attention_mask"])
    txt2img = torch.tensor([expected["txt2img"][j] for j in range(len(expected["txt2img"]))])
    return EncodedGallery(image.embeds, image.feat, text.embeds, expected["attention_mask"], text.feat, txt2img)


def test_retrieval_loads_like_albef(retrieval):
    report = retrieval.init_report
    assert set(report.fresh) == {"queue.idx"}  # ALBEF: missing idx_queue
    assert set(report.resized) == {"model.visual_encoder.pos_embed", "teacher.model.visual_encoder.pos_embed"}
    # ALBEF: unexpected text_encoder(_m).cls.predictions.* -> our MLM head, dropped with its reason
    assert report.dropped and all("MLM head" in why for why in report.dropped.values())
    assert not hasattr(retrieval.model, "mlm_head")


def test_itc_similarities_match(gallery, expected):
    diff = close(gallery.image_feats @ gallery.text_feats.T, expected["itc_sims"])
    print(f"itc_sims max abs diff {diff:.2e}")


def test_itm_scores_of_every_pair_match(retrieval, gallery, expected):
    n_img, n_txt = expected["itm_scores"].shape
    images = torch.arange(n_img).repeat_interleave(n_txt)
    texts = torch.arange(n_txt).repeat(n_img)
    scores = itm_match_scores(
        retrieval.model, gallery.image_embeds[images], gallery.text_embeds[texts], gallery.text_masks[texts], 5
    ).view(n_img, n_txt)
    diff = close(scores, expected["itm_scores"])
    print(f"itm_scores max abs diff {diff:.2e}")


def test_top_k_reranked_scores_match(retrieval, gallery, expected):
    score_i2t, score_t2i = rerank(retrieval.model, gallery, k_test=expected["k_test"], batch_size=4)
    diff_i2t = close(score_i2t, expected["score_i2t"])
    diff_t2i = close(score_t2i, expected["score_t2i"])
    print(f"score_i2t max abs diff {diff_i2t:.2e}, score_t2i {diff_t2i:.2e}")


def test_recall_metrics_match_itm_eval(gallery, expected):
    metrics = retrieval_metrics(expected["score_i2t_all"], expected["score_t2i_all"], gallery.txt2img)
    assert metrics == pytest.approx(expected["itm_eval"], abs=1e-9)
    assert set(metrics) == set(expected["itm_eval"])


# --- SNLI-VE ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ve_state() -> dict[str, torch.Tensor]:
    """ALBEF's VE model state after loading, in this project's key layout."""
    state = load_fixture("ve_checkpoint.pth")
    converted, _ = convert_albef_state_dict(state, task_config().text.fusion_layer)
    return converted


@pytest.fixture(scope="module")
def ve(ve_state) -> VEModule:
    module = VEModule(arch=task_config(), init_from=PRETRAIN_CKPT)
    heads = {k: v for k, v in ve_state.items() if "cls_head." in k}  # online and momentum classifier
    assert set(heads) == {k for k in module.state_dict() if "cls_head." in k}
    module.load_state_dict({**module.state_dict(), **heads})
    return module.eval()


def test_ve_non_head_weights_equal_albefs_loaded_state(ve, ve_state):
    ours = ve.state_dict()
    assert set(ours) == set(ve_state), "the VE module's keys differ from ALBEF's VE model"
    worst = {}
    for key, reference in ve_state.items():
        if "cls_head." in key:
            continue
        worst[key] = close(ours[key], reference)
    # the interpolated position embeddings are the converter's only computed tensors
    assert "model.visual_encoder.pos_embed" in worst and "teacher.model.visual_encoder.pos_embed" in worst
    print(f"VE weights: {len(worst)} tensors, max abs diff {max(worst.values()):.2e}")


def test_ve_logits_match(ve):
    expected = load_fixture("ve_outputs.pt")
    with torch.no_grad():
        logits = ve(expected["images"], expected["input_ids"], expected["attention_mask"])
        teacher = ve.logits(ve.teacher.model, {"image": expected["images"], "input_ids": expected["input_ids"],
                                                "attention_mask": expected["attention_mask"]})
    diff = close(logits, expected["logits"])
    print(f"VE logits max abs diff {diff:.2e}")
    assert teacher.shape == logits.shape  # the teacher runs the same path with its own cls_head copy
