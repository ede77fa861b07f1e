"""VQA: answer ranking, the answer loss, question repetition, overfitting, EvalAI output, configs and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from albef_struct.cli import main
from albef_struct.data import ALBEFTokenizer
from albef_struct.data.collate import VQATestCollate, VQATrainCollate
from albef_struct.data.datasets import VQADataset, vqa_answer_weights
from albef_struct.data.transforms import test_transform as eval_transform
from albef_struct.lit.pretrain import PretrainModule
from albef_struct.metrics import normalize_answer, vqa_accuracy
from albef_struct.metrics.vqa import MajorityAnswerAccuracy
from albef_struct.models import TextConfig
from albef_struct.tasks.vqa import VQA_OPTIM, VQAModule
from albef_struct.tasks.vqa_answers import (
    answer_losses,
    answer_token_nll,
    question_states,
    rank_answers,
    repeat_per_answer,
    vqa_loss,
)
from tests.conftest import REPO, tiny_config

CONFIGS = [REPO / "configs" / "vqa.yaml", REPO / "configs" / "demo" / "vqa.yaml"]
NO_DROPOUT = TextConfig(hidden=32, layers=2, fusion_layer=1, heads=2, intermediate=64, max_position=40,
                        hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def tokenizer() -> ALBEFTokenizer:
    return ALBEFTokenizer()


# --- ranking ------------------------------------------------------------------------------------------------
CLS, SEP = 1, 2


def markov_decoder(transitions: torch.Tensor):
    """A fake decoder whose next-token distribution depends only on the current token."""
    log_table = transitions.log()

    def decoder(ids, mask, states, state_mask):
        return log_table[ids]  # logits = log-probabilities: softmax returns the table rows

    return decoder


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two candidates: A has the likelier first token (0.6 vs 0.3), B the likelier sequence (0.21 vs 0.18)."""
    vocab = 8
    table = torch.full((vocab, vocab), 1e-9)
    table[CLS, 3], table[CLS, 4], table[CLS, 7] = 0.6, 0.3, 0.1  # first tokens: A=3, B=4
    table[3, 5], table[3, 7] = 0.3, 0.7  # A's second token 5 has p 0.3
    table[4, 6], table[4, 7] = 0.7, 0.3  # B's second token 6 has p 0.7
    table[5, SEP] = table[6, SEP] = table[7, SEP] = table[SEP, SEP] = 1.0
    table[0, 0] = 1.0
    table = table / table.sum(dim=1, keepdim=True)
    answers = torch.tensor([[CLS, 3, 5, SEP], [CLS, 4, 6, SEP]])
    return table, answers, torch.ones_like(answers)


def test_fixed_ranking_counts_each_token_once_albef_counts_the_first_twice():
    table, answers, mask = hand_case()
    states, state_mask = torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.long)
    fixed = rank_answers(markov_decoder(table), states, state_mask, answers, mask, k=2)
    albef = rank_answers(markov_decoder(table), states, state_mask, answers, mask, k=2,
                         albef_first_token_double_count=True)
    # fixed: p(A) = 0.6·0.3 = 0.18, p(B) = 0.3·0.7 = 0.21 -> B first
    assert fixed.ids.tolist() == [[1, 0]]
    torch.testing.assert_close(fixed.probs, torch.tensor([[0.21, 0.18]]) / 0.39, atol=1e-6, rtol=0)
    # ALBEF: 0.6²·0.3 = 0.108 vs 0.3²·0.7 = 0.063 -> A first
    assert albef.ids.tolist() == [[0, 1]]
    torch.testing.assert_close(albef.probs, torch.tensor([[0.108, 0.063]]) / 0.171, atol=1e-6, rtol=0)


def test_ranking_keeps_the_first_token_top_k_and_clamps_k():
    table, answers, mask = hand_case()
    # a third candidate with an unlikely first token (7) and a padded, shorter sequence
    answers = torch.cat([answers, torch.tensor([[CLS, 7, SEP, 0]])])
    mask = torch.cat([mask, torch.tensor([[1, 1, 1, 0]])])
    states, state_mask = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.long)
    top2 = rank_answers(markov_decoder(table), states, state_mask, answers, mask, k=2)
    assert top2.ids.tolist() == [[1, 0], [1, 0]]  # candidate 2 never leaves the first-token top-2
    everything = rank_answers(markov_decoder(table), states, state_mask, answers, mask, k=128)
    assert everything.ids.shape == (2, 3)  # k clamped to the list size
    # p(C) = 0.1 (first token) · 1 ([SEP]); padding adds nothing
    torch.testing.assert_close(everything.probs[0], torch.tensor([0.21, 0.18, 0.1]) / 0.49, atol=1e-6, rtol=0)
    chunked = rank_answers(markov_decoder(table), states, state_mask, answers, mask, k=128, chunk_size=4)
    assert torch.equal(chunked.ids, everything.ids) and torch.allclose(chunked.probs, everything.probs)


# --- the loss --------------------------------------------------------------------------------------------------
def test_repeat_per_answer_follows_answers_per_question():
    states = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 4)
    mask = torch.tensor([[1, 0], [1, 1], [1, 0]])
    repeated, repeated_mask = repeat_per_answer(states, mask, torch.tensor([2, 1, 3]), total=6)
    assert repeated[:, 0, 0].tolist() == [0, 0, 1, 2, 2, 2]
    assert repeated_mask.tolist() == [[1, 0], [1, 0], [1, 1], [1, 0], [1, 0], [1, 0]]
    assert torch.equal(repeat_per_answer(states, mask, [2, 1, 3])[0], repeated)  # lists work too


def test_answer_loss_alpha0_is_the_summed_token_nll_of_a_tiny_decoder():
    torch.manual_seed(0)
    module = VQAModule(arch=tiny_config(text=NO_DROPOUT), distill=False).eval()
    ids = torch.tensor([[101, 2003, 102, 0], [101, 2748, 2003, 102]])
    mask = (ids != 0).long()
    states, state_mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        logits = module.model.answer_decoder(ids, mask, states, state_mask)
    expected = []
    for row in range(2):  # by hand: -log p(token t | tokens < t) for every real token after [CLS]
        log_probs = F.log_softmax(logits[row], dim=-1)
        expected.append(-sum(log_probs[t - 1, ids[row, t]] for t in range(1, int(mask[row].sum()))))
    expected = torch.stack(expected)
    torch.testing.assert_close(answer_losses(logits, ids, mask), expected)
    torch.testing.assert_close(answer_token_nll(logits, ids, mask)[0, 2], torch.tensor(0.0))  # padding
    weights = torch.tensor([0.7, 0.3])
    torch.testing.assert_close(vqa_loss(answer_losses(logits, ids, mask), weights, batch_size=2),
                               (0.7 * expected[0] + 0.3 * expected[1]) / 2)


def test_distilled_answer_loss_is_albefs_formula():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(2, 4, 9, generator=gen), torch.randn(2, 4, 9, generator=gen)
    ids = torch.tensor([[1, 5, 2, 0], [1, 6, 7, 2]])
    mask = (ids != 0).long()
    nll = answer_losses(logits, ids, mask)
    soft = -(F.softmax(teacher[:, :-1], -1) * F.log_softmax(logits[:, :-1], -1)).sum(-1)  # [2, 3]
    distill = (soft * mask[:, 1:]).sum(1)
    torch.testing.assert_close(answer_losses(logits, ids, mask, teacher, 0.4), 0.6 * nll + 0.4 * distill)
    torch.testing.assert_close(answer_losses(logits, ids, mask, teacher, 0.0), nll)


def make_train_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    questions = torch.randint(1000, 2000, (3, 6), generator=gen)
    questions[:, 0] = 101
    answers = torch.tensor([[101, 2003, 102, 0], [101, 2748, 2003, 102], [101, 2053, 102, 0],
                            [101, 2417, 102, 0], [101, 2630, 102, 0], [101, 2665, 2003, 102]])
    return {"image": torch.randn(3, 3, 32, 32, generator=gen), "question_ids": questions,
            "question_mask": torch.ones_like(questions), "answer_ids": answers, "answer_mask": (answers != 0).long(),
            "answer_weights": torch.tensor([0.7, 0.3, 1.0, 0.5, 0.3, 0.2]),
            "answers_per_question": torch.tensor([2, 1, 3])}


def test_training_loss_distils_from_the_teacher_updated_first():
    torch.manual_seed(0)
    module = VQAModule(arch=tiny_config(text=NO_DROPOUT), momentum=0.5)
    with torch.no_grad():
        module.model.answer_decoder.head.decoder.bias.add_(1.0)  # online and teacher now differ
    expected_bias = 0.5 * module.teacher.model.answer_decoder.head.decoder.bias + 0.5 * module.model.answer_decoder.head.decoder.bias
    batch = make_train_batch()
    module.train()
    loss = module.vqa_training_loss(batch, alpha=0.4)
    torch.testing.assert_close(module.teacher.model.answer_decoder.head.decoder.bias, expected_bias)
    with torch.no_grad():  # recompute by hand, each question's answers with that question's states
        per_answer = []
        for q, (start, n) in enumerate([(0, 2), (2, 1), (3, 3)]):
            rows = slice(start, start + n)
            decoded = []
            for model in (module.model, module.teacher.model):
                states = question_states(model, batch["image"][q:q + 1], batch["question_ids"][q:q + 1],
                                         batch["question_mask"][q:q + 1]).expand(n, -1, -1)
                decoded.append(model.answer_decoder(batch["answer_ids"][rows], batch["answer_mask"][rows], states,
                                                    batch["question_mask"][q:q + 1].expand(n, -1)))
            per_answer.append(answer_losses(decoded[0], batch["answer_ids"][rows], batch["answer_mask"][rows],
                                            decoded[1], 0.4))
        expected = (batch["answer_weights"] * torch.cat(per_answer)).sum() / 3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert module.model.answer_decoder.layer[0].crossattention.self.query.weight.grad is not None
    assert module.model.visual_encoder.patch_embed.proj.weight.grad is not None
    assert module.alpha_warmup is True and module.k_test == 128 and module.optim == VQA_OPTIM


# --- construction and checkpoint import ------------------------------------------------------------------------
def test_heads_and_pretraining_checkpoint_import(tmp_path):
    module = VQAModule(arch=tiny_config(mlm_head=True))
    config = module.model.config
    assert config.answer_decoder_layers == config.text.fusion_layers == 1
    assert not (config.projections or config.itm_head or config.mlm_head or config.classifier_classes)
    decoder = module.model.answer_decoder
    assert decoder.head.decoder.weight is decoder.embeddings.word_embeddings.weight  # tied LM head
    assert VQAModule(arch=tiny_config(answer_decoder_layers=2)).model.config.answer_decoder_layers == 2

    torch.manual_seed(0)
    source = PretrainModule(arch=tiny_config(), queue_size=16).state_dict()
    torch.save({"state_dict": source, "pytorch-lightning_version": pl.__version__}, tmp_path / "pretrain.ckpt")
    module = VQAModule(arch=tiny_config(), init_from=str(tmp_path / "pretrain.ckpt"))
    assert not module.init_report.fresh
    ours = module.state_dict()
    for owner in ("model.", "teacher.model."):
        for ours_key, source_key in (
            ("answer_decoder.layer.0.crossattention.self.key.weight", "fusion_encoder.layer.0.crossattention.self.key.weight"),
            ("answer_decoder.embeddings.word_embeddings.weight", "text_encoder.embeddings.word_embeddings.weight"),
            ("answer_decoder.head.transform.dense.weight", "mlm_head.transform.dense.weight"),
            ("answer_decoder.head.decoder.bias", "mlm_head.decoder.bias"),
        ):
            assert torch.equal(ours[owner + ours_key], source[owner + source_key]), owner + ours_key


# --- overfitting a few demo questions ---------------------------------------------------------------------
def test_tiny_model_overfits_six_demo_questions(demo_dir, tokenizer):
    """Six demo questions with a clear majority answer: the loss falls and ranking finds every majority answer."""
    dataset = VQADataset(demo_dir / "vqa_train.json", demo_dir, eval_transform(32), "train")
    items = []
    for index in range(len(dataset)):
        answers, weights = vqa_answer_weights([normalize_answer(a) for a in dataset.records[index]["answer"]])
        if max(weights) >= 0.6:
            items.append({**dataset[index], "answers": answers, "weights": weights})
        if len(items) == 6:
            break
    batch = VQATrainCollate(tokenizer)(items)
    targets = [a[w.index(max(w))] for a, w in ((it["answers"], it["weights"]) for it in items)]
    answer_list = json.loads((demo_dir / "answer_list.json").read_text())

    torch.manual_seed(0)
    module = VQAModule(arch=tiny_config(text=NO_DROPOUT), momentum=0.9, k_test=8)
    module.set_answer_list(answer_list, tokenizer.encode_answers(answer_list))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.0)
    first_loss, accuracy = None, 0.0
    for step in range(200):
        module.train()
        loss = module.vqa_training_loss(batch, alpha=0.4)
        first_loss = first_loss if first_loss is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 4:
            module.eval()
            with torch.no_grad():
                top1 = module(batch["image"], batch["question_ids"], batch["question_mask"]).ids[:, 0]
            accuracy = sum(answer_list[i] == t for i, t in zip(top1.tolist(), targets)) / len(targets)
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"accuracy {accuracy} after {step + 1} steps"
    assert float(loss) < 0.5 * first_loss


# --- evaluation, chance level and the EvalAI file -----------------------------------------------------------
def test_majority_answer_baseline():
    lookup = {"yes": 0, "no": 1, "2": 2}
    questions = [["yes"] * 10, ["Yes."] * 7 + ["no"] * 3, ["two"] * 10, []]
    metric = MajorityAnswerAccuracy("always")
    metric.update(questions, lookup)  # both sides normalised: "Yes." -> "yes", "two" -> "2"
    result = metric.compute()
    # "yes" scores 1 + 1 + 0 on the 3 annotated questions; "no" 0 + 0.9 + 0; "2" 0 + 0 + 1
    assert int(result["answer_index"]) == 0 and int(result["count"]) == 3
    assert float(result["acc"]) == pytest.approx(2.0 / 3.0)
    official = MajorityAnswerAccuracy()  # the official rules: "Yes." only loses its period, "two" stays
    official.update(questions, lookup)
    result = official.compute()
    # "yes" scores 1 + 0 + 0; "no" 0 + 0.9 + 0; "2" 0 + 0 + 0
    assert int(result["answer_index"]) == 0 and float(result["acc"]) == pytest.approx(1.0 / 3.0)


def eval_batches(demo_dir: Path, tokenizer: ALBEFTokenizer, duplicate_last: bool = False) -> list[dict]:
    dataset = VQADataset(demo_dir / "vqa_test.json", demo_dir, eval_transform(32), "test")
    collate = VQATestCollate(tokenizer)
    rows = [list(range(0, 5)), list(range(5, 8))] + ([[7]] if duplicate_last else [])  # as a padded sampler would
    return [collate([dataset[i] for i in r]) for r in rows]


def quiet_trainer(root: Path) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)


def test_test_and_predict_write_evalai_json_and_accuracy(tmp_path, demo_dir, tokenizer):
    torch.manual_seed(0)
    answer_list = json.loads((demo_dir / "answer_list.json").read_text())
    module = VQAModule(arch=tiny_config(), k_test=4)
    module.set_answer_list(answer_list, tokenizer.encode_answers(answer_list))
    batches = eval_batches(demo_dir, tokenizer, duplicate_last=True)
    module.eval()
    with torch.no_grad():
        predicted = [answer_list[i] for b in batches[:2]
                     for i in module(b["image"], b["question_ids"], b["question_mask"]).ids[:, 0].tolist()]
    records = json.loads((demo_dir / "vqa_test.json").read_text())[:8]
    accuracy = 100.0 * sum(vqa_accuracy(p, r["answer"]) for p, r in zip(predicted, records)) / 8

    trainer = quiet_trainer(tmp_path)
    trainer.validate(module, dataloaders=DataLoader(batches[:2], batch_size=None), verbose=False)
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(accuracy, abs=1e-4)
    trainer.test(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)

    submission = json.loads((tmp_path / "vqa_predictions_test.json").read_text())
    assert submission == [{"question_id": r["question_id"], "answer": p} for r, p in zip(records, predicted)]
    assert all(set(s) == {"question_id", "answer"} and isinstance(s["question_id"], int) for s in submission)
    result = json.loads((tmp_path / "vqa_test.json").read_text())
    # the duplicated question counts twice in the metric (as with any padded sampler), once in the file
    expected = (accuracy * 8 + 100.0 * vqa_accuracy(predicted[7], records[7]["answer"])) / 9
    assert result["metrics"]["acc"] == pytest.approx(expected, abs=1e-4)
    best = max(100.0 * (sum(vqa_accuracy(a, r["answer"]) for r in records)
                        + vqa_accuracy(a, records[7]["answer"])) / 9 for a in answer_list)
    assert result["chance"]["acc"] == pytest.approx(best, abs=1e-4)
    assert result["majority_answer"] in answer_list and result["n_annotated_questions"] == 9

    predictions = trainer.predict(module, dataloaders=DataLoader(batches[:2], batch_size=None))
    assert [p for batch in predictions for p in batch] == submission
    assert json.loads((tmp_path / "vqa_predictions_predict.json").read_text()) == submission


def test_ranking_without_an_answer_list_says_how_to_fix_it():
    module = VQAModule(arch=tiny_config())
    with pytest.raises(RuntimeError, match="answer_list"):
        module(torch.zeros(1, 3, 32, 32), torch.tensor([[101, 2003]]), torch.ones(1, 2, dtype=torch.long))


# --- configs and the command line -----------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "albef_struct.tasks.vqa.VQAModule"
    assert printed["data"]["class_path"] == "albef_struct.data.VQADataModule"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in printed["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["save_last"] is True


def test_demo_config_monitors_val_accuracy():
    config = yaml.safe_load((REPO / "configs" / "demo" / "vqa.yaml").read_text())
    checkpoint = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert checkpoint["init_args"]["monitor"] == "val/acc" and checkpoint["init_args"]["mode"] == "max"
    assert config["model"]["init_args"]["arch"] == "../model/small_arch.yaml" and config["data"]["init_args"]["hflip"] is False


def test_albef_recipe_values_in_real_data_config():
    config = yaml.safe_load((REPO / "configs" / "vqa.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 8
    optim = model["optim"]
    assert optim["lr"] == 2e-5 and optim["min_lr"] == 1e-6 and optim["warmup_lr"] == 1e-5
    assert optim["warmup_steps"] == 400 and optim["weight_decay"] == 0.02
    assert model["alpha"] == 0.4 and model["alpha_warmup"] is True and model["distill"] is True
    assert model["k_test"] == 128 and model["albef_first_token_double_count"] is False
    assert model["arch"]["vision"]["img_size"] == 384 and data["batch_size"] == 32 and data["eval_batch_size"] == 16
    assert data["max_tokens"] == 25
    assert [Path(f).name for f in data["train_files"]] == ["vqa_train.json", "vqa_val.json", "vg_qa.json"]
    assert Path(data["answer_list"]).name == "answer_list.json"


TINY_ARCH = {
    "vision": {"img_size": 32, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"hidden": 32, "layers": 2, "fusion_layer": 1, "heads": 2, "intermediate": 64, "max_position": 64},
}


@pytest.mark.slow
def test_cli_fit_two_steps_then_test_and_predict(tmp_path, demo_dir, capsys):
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "num_sanity_val_steps": 0, "val_check_interval": 2, "limit_val_batches": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "monitor": "val/acc", "mode": "max"}}],
        },
        "model": {"class_path": "albef_struct.tasks.vqa.VQAModule",
                  "init_args": {"arch": TINY_ARCH, "optim": {"lr": 1e-4, "warmup_steps": 1}, "k_test": 8}},
        "data": {"class_path": "albef_struct.data.VQADataModule",
                 "init_args": {"train_files": [str(demo_dir / "vqa_train.json")],
                               "val_file": str(demo_dir / "vqa_val.json"), "test_file": str(demo_dir / "vqa_test.json"),
                               "answer_list": str(demo_dir / "answer_list.json"), "image_root": str(demo_dir),
                               "image_res": 32, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0,
                               "hflip": False}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[-1]
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert payload["global_step"] == 2 and "teacher.model.answer_decoder.head.decoder.bias" in payload["state_dict"]
    checkpoint_state = next(v for k, v in payload["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert 0.0 <= float(checkpoint_state["best_model_score"]) <= 100.0  # val/acc was logged after step 2

    assert main(["test", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    assert "vqa_test" in capsys.readouterr().out
    records = json.loads((demo_dir / "vqa_test.json").read_text())
    result = json.loads(sorted((tmp_path / "run").rglob("vqa_test.json"))[-1].read_text())
    assert result["n_annotated_questions"] == len(records)
    assert 0.0 <= result["metrics"]["acc"] <= 100.0 and 0.0 < result["chance"]["acc"] <= 100.0
    # the blind baseline: the best training answer per question type (its first four words)
    from albef_struct.metrics.blind import question_type, vqa_question_type_prior

    train = json.loads((demo_dir / "vqa_train.json").read_text())
    prior, _ = vqa_question_type_prior([(question_type(r["question"]), r["answer"]) for r in train],
                                       [(question_type(r["question"]), r["answer"]) for r in records])
    assert result["blind"]["acc"] == pytest.approx(100.0 * prior)
    submission = json.loads(sorted((tmp_path / "run").rglob("vqa_predictions_test.json"))[-1].read_text())
    assert [s["question_id"] for s in submission] == [r["question_id"] for r in records]

    assert main(["predict", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    predicted = json.loads(sorted((tmp_path / "run").rglob("vqa_predictions_predict.json"))[-1].read_text())
    answer_list = set(json.loads((demo_dir / "answer_list.json").read_text()))
    assert [s["question_id"] for s in predicted] == [r["question_id"] for r in records]
    assert all(s["answer"] in answer_list for s in predicted)


def test_the_module_scores_with_the_official_rules_unless_told_otherwise():
    assert {VQAModule(arch=tiny_config()).test_acc.normalization, VQAModule(arch=tiny_config()).val_acc.normalization} == {"official"}
    always = VQAModule(arch=tiny_config(), answer_normalization="always")
    assert (always.val_acc.normalization, always.test_acc.normalization, always.test_chance.normalization) == ("always",) * 3
