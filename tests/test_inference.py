"""albef_struct.inference: official files reproduce the original code's outputs; this project's checkpoints
score as the evaluators do; bad input is named."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

from albef_struct import inference
from albef_struct.analysis import embed_split
from albef_struct.data import ALBEFTokenizer
from tests.conftest import PARITY_DIR, load_fixture, parity_config, tiny_config

TASK_RES = json.loads((PARITY_DIR / "config.json").read_text())["architecture"]["task_res"]


def official(name: str, **heads) -> inference.InferenceModel:
    """An official-layout fixture file at the fixture's task resolution (its head counts are not width/64)."""
    arch = parity_config()
    return inference.load(PARITY_DIR / name, arch=replace(arch, vision=replace(arch.vision, img_size=TASK_RES), **heads))


def tokens(outputs: dict, ids: str = "input_ids", mask: str = "attention_mask") -> dict[str, torch.Tensor]:
    return {"input_ids": outputs[ids], "attention_mask": outputs[mask]}


# --- official files: the original ALBEF code's outputs -----------------------------------------------------
def test_similarity_and_match_of_an_official_pretraining_file_equal_albef() -> None:
    expected = load_fixture("retrieval_outputs.pt")
    model = official("pretrain_checkpoint.pth")
    assert model.kind == "pretrain"
    torch.testing.assert_close(model.similarity(expected["images"], tokens(expected)), expected["itc_sims"],
                               atol=1e-5, rtol=0)
    n_img, n_txt = expected["itc_sims"].shape
    images = expected["images"].repeat_interleave(n_txt, 0)
    texts = {k: v.repeat(n_img, 1) for k, v in tokens(expected).items()}
    logits = model.match(images, texts, logit=True).view(n_img, n_txt)
    torch.testing.assert_close(logits, expected["itm_scores"], atol=1e-5, rtol=0)
    probs = model.match(images, texts).view(n_img, n_txt)
    assert torch.all((probs > 0) & (probs < 1))


def test_predict_of_official_ve_and_nlvr_files_equals_albef() -> None:
    ve = load_fixture("ve_outputs.pt")
    model = official("ve_checkpoint.pth", projections=False, itm_head=False, mlm_head=False, classifier_classes=3)
    predictions = model.predict(ve["images"], tokens(ve))
    probs = torch.tensor([[p.probabilities[label] for label in ("contradiction", "neutral", "entailment")]
                          for p in predictions])
    torch.testing.assert_close(probs, ve["logits"].softmax(-1), atol=1e-6, rtol=0)
    assert [p.label for p in predictions] == [("contradiction", "neutral", "entailment")[i]
                                              for i in ve["logits"].argmax(-1)]
    nlvr = load_fixture("nlvr_outputs.pt")
    model = official("nlvr_checkpoint.pth", projections=False, itm_head=False, mlm_head=False, classifier_classes=2,
                     fusion_streams=2)
    assert model.kind == "nlvr"
    predictions = model.predict(list(zip(nlvr["images0"], nlvr["images1"])), tokens(nlvr))
    probs = torch.tensor([[p.probabilities["False"], p.probabilities["True"]] for p in predictions])
    torch.testing.assert_close(probs, nlvr["logits"].softmax(-1), atol=1e-6, rtol=0)


def test_answer_of_an_official_vqa_file_equals_albef() -> None:
    expected = load_fixture("vqa_outputs.pt")
    model = official("vqa_checkpoint.pth", projections=False, itm_head=False, mlm_head=False,
                     answer_decoder_layers=parity_config().text.fusion_layers)
    k = int(expected["k"])
    ranked = model.answer(expected["images"], tokens(expected, "question_ids", "question_mask"),
                          tokens(expected, "answer_list_ids", "answer_list_mask"), k=k, top=k,
                          albef_first_token_double_count=True)
    assert [[int(a.answer) for a in row] for row in ranked] == expected["topk_ids"].tolist()
    torch.testing.assert_close(torch.tensor([[a.probability for a in row] for row in ranked]), expected["topk_probs"],
                               atol=1e-5, rtol=0)


def test_a_call_the_heads_cannot_serve_is_refused_by_name() -> None:
    model = official("pretrain_checkpoint.pth")
    with pytest.raises(ValueError, match=r"pretrain_checkpoint.pth is a pretrain model without a classifier head; "
                                         r"this call needs a fine-tuned SNLI-VE or NLVR2 checkpoint"):
        model.predict(torch.zeros(1, 3, TASK_RES, TASK_RES), {"input_ids": torch.ones(1, 3, dtype=torch.long),
                                                               "attention_mask": torch.ones(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="without an answer decoder"):
        model.answer(torch.zeros(1, 3, TASK_RES, TASK_RES), "what colour")
    # a 120-token fixture vocabulary cannot take the 30522-token tokenizer's ids
    with pytest.raises(ValueError, match=r"has 30522 tokens but .*pretrain_checkpoint.pth's word embeddings have 120"):
        model.encode_text("a red circle")


def test_loading_needs_no_lightning() -> None:
    script = (
        "import sys; from dataclasses import replace; import albef_struct.inference as inf; "
        "from tests.conftest import PARITY_DIR, parity_config; a = parity_config(); "
        "inf.load(PARITY_DIR / 've_checkpoint.pth', arch=replace(a, classifier_classes=3, projections=False, "
        "itm_head=False, mlm_head=False)); print(sorted(m for m in sys.modules if 'lightning' in m.split('.')[0]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


# --- this project's checkpoints ---------------------------------------------------------------------------
def test_similarity_equals_the_retrieval_evaluators_itc_scores(pretrain_ckpt, demo_dir) -> None:
    model = inference.load(pretrain_ckpt)
    records = json.loads((demo_dir / "retrieval_test.json").read_text())
    images = [demo_dir / r["image"] for r in records]
    captions = [c for r in records for c in r["caption"]]
    evaluator = embed_split(model.model, demo_dir / "retrieval_test.json", demo_dir, ALBEFTokenizer())
    torch.testing.assert_close(model.similarity(images, captions),
                               evaluator.image_feats @ evaluator.text_feats.T, atol=1e-5, rtol=0)
    # PIL images and paths give the same embeddings; batching does not change them
    pil = [Image.open(p) for p in images[:3]]
    torch.testing.assert_close(model.encode_image(pil), model.encode_image(images[:3]), atol=0, rtol=0)
    small_batches = inference.load(pretrain_ckpt, batch_size=2)
    torch.testing.assert_close(small_batches.encode_text(captions), model.encode_text(captions), atol=1e-6, rtol=0)


def test_match_shares_one_image_or_one_text(pretrain_ckpt, demo_dir) -> None:
    model = inference.load(pretrain_ckpt)
    image = demo_dir / json.loads((demo_dir / "retrieval_test.json").read_text())[0]["image"]
    texts = ["a red circle", "two blue squares in the top left", "a star"]
    shared = model.match(image, texts)
    assert shared.shape == (3,)
    torch.testing.assert_close(shared, model.match([image] * 3, texts), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="2 images and 3 texts: pass one text per image"):
        model.match([image, image], texts)


def test_bfloat16_stays_close_to_float32(pretrain_ckpt, demo_dir) -> None:
    images = sorted((demo_dir / "images" / "test").iterdir())[:4]
    texts = ["a red circle", "a blue square", "a green star", "a yellow cross"]
    full = inference.load(pretrain_ckpt).similarity(images, texts)
    half = inference.load(pretrain_ckpt, dtype=torch.bfloat16).similarity(images, texts)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0)


def test_bad_images_and_answer_lists_are_named(pretrain_ckpt, tmp_path) -> None:
    model = inference.load(pretrain_ckpt)
    with pytest.raises(FileNotFoundError, match=r"missing.jpg: no such image file"):
        model.encode_image(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"broken.jpg: not a readable image"):
        model.encode_image(tmp_path / "broken.jpg")
    (tmp_path / "answers.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"answers.json: cannot read the answer list"):
        inference.load(pretrain_ckpt, answer_list=tmp_path / "answers.json")


def test_a_vqa_checkpoint_carries_its_answer_list(tmp_path, demo_dir) -> None:
    from albef_struct.tasks.vqa import VQAModule

    torch.manual_seed(0)
    module = VQAModule(arch=tiny_config(vision=replace(tiny_config().vision, img_size=64)), distill=False)
    answers = ["red", "blue", "two", "yes"]
    module.set_answer_list(answers, ALBEFTokenizer().encode_answers(answers))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"arch": module.model.config.to_dict()},
                  "pytorch-lightning_version": "2.6.6"}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[inference.ANSWER_LIST_KEY] == answers
    torch.save(checkpoint, tmp_path / "vqa.ckpt")
    model = inference.load(tmp_path / "vqa.ckpt")
    image = sorted((demo_dir / "images" / "test").iterdir())[0]
    ranked = model.answer([image, image], ["what colour is the circle?", "how many shapes are there?"], top=4)
    assert [sorted(a.answer for a in row) for row in ranked] == [sorted(answers)] * 2
    assert all(abs(sum(a.probability for a in row) - 1) < 1e-4 for row in ranked)
    # the same ranking as the module's own evaluation
    batch = model._images([image])[0]
    question = model._texts(["what colour is the circle?"], "question", None)[0]
    with torch.inference_mode():
        own = module.eval()(batch, question["input_ids"], question["attention_mask"], k=4)
    assert [answers[i] for i in own.ids[0].tolist()] == [a.answer for a in ranked[0]]
