"""VQA: a question encoder, an answer decoder, and answers ranked from a fixed candidate list.

ALBEF's VQA model (salesforce/ALBEF ``models/model_vqa.py``, ``VQA.py``):

* **Question encoder**: the text layers, then the fusion layers attending every
  image token; the fused hidden states are the *question states*.
* **Answer decoder**: ``ALBEF.answer_decoder``, a causal BERT with cross-attention
  to the question states and a tied LM head. It has as many layers as the fusion
  encoder (6 for ALBEF-base) and is initialised from the pretrained fusion layers,
  embeddings and MLM head (the checkpoint converter does that).
* **Training**: answers are ``[CLS] answer [SEP]``; every (question, answer) pair
  costs the *sum* over answer tokens of the next-token NLL, distilled from the EMA
  teacher (:func:`answer_losses`); the batch loss is ``Σ weight · loss / B``
  (:func:`vqa_loss`). A question with ``n`` answers has its states repeated ``n``
  times (:func:`repeat_per_answer`).
* **Inference**: :func:`rank_answers` scores the candidate list (ALBEF's
  ``answer_list.json``): the top ``k_test`` candidates by first-token probability
  are re-scored by their full sequence likelihood; never free generation.

ALBEF adds the first answer token's log-probability to a sequence log-likelihood
that already contains it, so the first token counts twice. The default here scores
each token once (the candidate's exact log-likelihood);
``albef_first_token_double_count=True`` reproduces ALBEF's numbers.

Validation and test report VQA accuracy (10 annotators, leave-one-out) when the
questions carry annotator answers; test and predict write the EvalAI submission
``[{"question_id", "answer"}]`` as ``vqa_predictions_<stage>.json`` in the run's
results folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from albef_struct.data import VQADataModule
from albef_struct.data.collate import is_empty_batch
from albef_struct.lit.schedule import OptimConfig
from albef_struct.lit.task import ALBEFModule
from albef_struct.metrics import VQAAccuracy, normalize_answer, write_evalai_submission
from albef_struct.metrics.blind import question_type, vqa_question_type_prior
from albef_struct.metrics.report import report_results
from albef_struct.metrics.vqa import MajorityAnswerAccuracy
from albef_struct.models import ALBEF, ALBEFConfig
from albef_struct.tasks.registry import PER_FUSION_LAYER, SummaryMetric, register_task
from albef_struct.tasks.vqa_answers import (
    ANSWER_LIST_KEY,
    RankedAnswers,
    answer_losses,
    question_states,
    rank_answers,
    repeat_per_answer,
    vqa_loss,
)

log = logging.getLogger(__name__)

# ALBEF's VQA.yaml: 4 warm-up "epochs" of 100 iterations from 1e-5 to 2e-5, then a per-epoch cosine to 1e-6.
VQA_OPTIM = OptimConfig(lr=2e-5, weight_decay=0.02, warmup_lr=1e-5, warmup_steps=400, min_lr=1e-6)


class AnswerCandidates(NamedTuple):
    """The answer list and its ``[CLS] answer [SEP]`` tokens."""

    answers: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


# --- the LightningModule -------------------------------------------------------------------------------------
@register_task(
    "vqa", "VQA (answer decoder = copies of the fusion layers)",
    datamodule=VQADataModule,
    heads={"answer_decoder_layers": PER_FUSION_LAYER},
    optim=VQA_OPTIM,
    training_loss="vqa_training_loss",
    result_name="vqa_test",
    title="VQA",
    summary=(SummaryMetric("acc", "VQA accuracy (chance: best constant answer)"),),
)
class VQAModule(ALBEFModule):
    """VQA fine-tuning (``VQADataModule`` batches) and answer ranking.

    Training: :func:`answer_losses` of the online decoder against the answers
    (distilled from the EMA teacher, updated first), reduced by :func:`vqa_loss`.
    Validation/test: top-1 of :func:`rank_answers` over the datamodule's
    ``answer_list``; ``val/acc`` and ``test/acc`` are VQA accuracy in percent
    (only for questions with annotator answers). Test and predict write the
    EvalAI file ``vqa_predictions_<stage>.json`` (gathered over all processes)
    into :attr:`results_dir`; test also prints a table next to the
    majority-answer baseline and writes ``vqa_test.json``. A pretraining
    checkpoint loads with the decoder built from its fusion layers, embeddings
    and MLM head (online and momentum alike); its projections, temperature, ITM
    head and queues are dropped, each with its reason.

    Args:
        arch: model sizes (ALBEF-base at 384 px by default); the VQA heads are set
            here (answer decoder with one layer per fusion layer unless
            ``answer_decoder_layers`` is given; no projections, ITM or MLM head).
        optim: AdamW + schedule (default: ALBEF's VQA.yaml).
        alpha: distillation weight (ALBEF: 0.4).
        alpha_warmup: ramp alpha from 0 over the first epoch (ALBEF's VQA.yaml: warm_up True).
        distill: train against the momentum teacher's decoder (ALBEF: true).
        momentum: EMA coefficient of the teacher (ALBEF: 0.995).
        init_from: checkpoint to start from (this project's, or an official ALBEF file).
        text_dropout: the text and fusion encoders' dropout for this run (None: ``arch``'s), e.g. 0 for fine-tuning.
        k_test: candidates re-scored per question (ALBEF: 128; clamped to the list size).
        albef_first_token_double_count: score candidates as ALBEF does, counting the
            first answer token twice (parity only; default: each token once).
        rank_chunk_size: candidate sequences per decoder pass when ranking (memory bound).
        answer_normalization: how val/test accuracy compares answers: ``"official"`` (the VQA
            evaluation's rules, the default) or ``"always"`` (both sides always normalised; see
            :mod:`albef_struct.metrics.vqa`).
    """

    def __init__(
        self,
        arch: ALBEFConfig | None = None,
        optim: OptimConfig | None = None,
        alpha: float = 0.4,
        alpha_warmup: bool = True,
        distill: bool = True,
        momentum: float = 0.995,
        init_from: str | None = None,
        text_dropout: float | None = None,
        k_test: int = 128,
        albef_first_token_double_count: bool = False,
        rank_chunk_size: int | None = 2048,
        answer_normalization: Literal["official", "always"] = "official",
    ) -> None:
        super().__init__(self.task_spec.arch(arch), optim or self.task_spec.optim, alpha, alpha_warmup, distill, momentum, init_from,
                         text_dropout=text_dropout)
        if k_test < 1:
            raise ValueError(f"k_test must be >= 1 (candidates re-scored per question), got {k_test}")
        self.k_test = k_test
        self.albef_first_token_double_count = albef_first_token_double_count
        self.rank_chunk_size = rank_chunk_size
        self.val_acc = VQAAccuracy(answer_normalization)
        self.test_acc = VQAAccuracy(answer_normalization)
        self.test_chance = MajorityAnswerAccuracy(answer_normalization)
        self._candidates: AnswerCandidates | None = None
        self._answer_lookup: dict[str, int] = {}
        self._collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._non_integer_ids = False
        self.load_init_weights()

    # --- the answer list -----------------------------------------------------------------------
    def set_answer_list(self, answers: Sequence[str], tokens: Mapping[str, torch.Tensor]) -> None:
        """Use these candidate answers (and their ``input_ids``/``attention_mask``) for ranking."""
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        if ids.shape[0] != len(answers) or ids.shape != mask.shape or ids.shape[1] < 2:
            raise ValueError(
                f"answer list of {len(answers)} answers but token ids {tuple(ids.shape)} / mask "
                f"{tuple(mask.shape)}; pass one [CLS] answer [SEP] row per answer"
            )
        self._candidates = AnswerCandidates(list(answers), ids, mask)
        lookup: dict[str, int] = {}
        for index, answer in enumerate(answers):
            lookup.setdefault(normalize_answer(answer), index)
        self._answer_lookup = lookup

    def _load_answer_list(self) -> None:
        """Take the answer list from the trainer's datamodule (if it has one)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "answer_list_file", None) is not None:
            self.set_answer_list(datamodule.answer_list, datamodule.answer_list_tokens)

    def answer_candidates(self) -> AnswerCandidates:
        """The answer list with its tokens on this module's device."""
        if self._candidates is None:
            raise RuntimeError(
                "VQAModule has no answer list to rank: give the VQADataModule answer_list=<JSON list of "
                "answers> or call module.set_answer_list(answers, tokens) before evaluating"
            )
        if self._candidates.input_ids.device != self.device:
            answers, ids, mask = self._candidates
            self._candidates = AnswerCandidates(answers, ids.to(self.device), mask.to(self.device))
        return self._candidates

    # --- model passes ----------------------------------------------------------------------------
    def forward(
        self, images: torch.Tensor, question_ids: torch.Tensor, question_mask: torch.Tensor, k: int | None = None
    ) -> RankedAnswers:
        """The online model's top-``k`` (default ``k_test``) answers per question, best first."""
        candidates = self.answer_candidates()
        states = question_states(self.model, images, question_ids, question_mask)
        return rank_answers(
            self.model.answer_decoder, states, question_mask, candidates.input_ids, candidates.attention_mask,
            self.k_test if k is None else k, self.albef_first_token_double_count, self.rank_chunk_size,
        )

    def _decoder_logits(self, model: ALBEF, batch: Mapping[str, Any]) -> torch.Tensor:
        states = question_states(model, batch["image"], batch["question_ids"], batch["question_mask"])
        answer_ids = batch["answer_ids"]
        states, mask = repeat_per_answer(states, batch["question_mask"], batch["answers_per_question"], answer_ids.shape[0])
        return model.answer_decoder(answer_ids, batch["answer_mask"], states, mask)

    def vqa_losses(self, batch: Mapping[str, Any], alpha: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` (ALBEF's VQA loss) and ``nll`` (its undistilled part) of one batch.

        The teacher is EMA-updated before its forward, as in ALBEF.
        """
        logits = self._decoder_logits(self.model, batch)
        teacher_logits = None
        if self.teacher is not None:
            self.update_teacher()
            with torch.no_grad():
                teacher_logits = self._decoder_logits(self.teacher.model, batch)
        answer_ids, answer_mask, weights = batch["answer_ids"], batch["answer_mask"], batch["answer_weights"]
        batch_size = batch["question_ids"].shape[0]
        per_answer = answer_losses(logits, answer_ids, answer_mask, teacher_logits, alpha)
        losses = {"loss": vqa_loss(per_answer, weights, batch_size)}
        if teacher_logits is not None:  # the loss mixes in the teacher's entropy; the NLL shows the fit
            with torch.no_grad():
                losses["nll"] = vqa_loss(answer_losses(logits, answer_ids, answer_mask), weights, batch_size)
        return losses

    def vqa_training_loss(self, batch: Mapping[str, Any], alpha: float | torch.Tensor) -> torch.Tensor:
        """ALBEF's VQA loss of one batch (see :meth:`vqa_losses`)."""
        return self.vqa_losses(batch, alpha)["loss"]

    # --- training ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None
        alpha = self.current_alpha() if self.distill else 0.0
        losses = self.vqa_losses(batch, alpha)
        self.log_losses("train", losses, batch_size=batch["question_ids"].shape[0])
        self.log("train/alpha", alpha, on_step=True, on_epoch=False)
        return losses["loss"]

    # --- evaluation ----------------------------------------------------------------------------------
    def on_validation_start(self) -> None:
        self._load_answer_list()

    def on_test_start(self) -> None:
        self._load_answer_list()

    def on_predict_start(self) -> None:
        self._load_answer_list()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The candidate answers go with the weights, so ``albef_struct.inference`` can answer without them."""
        super().on_save_checkpoint(checkpoint)
        if self._candidates is None:
            self._load_answer_list()
        if self._candidates is not None:
            checkpoint[ANSWER_LIST_KEY] = list(self._candidates.answers)

    def on_test_epoch_start(self) -> None:
        self._collected = []
        self._non_integer_ids = False

    def on_predict_epoch_start(self) -> None:
        self._collected = []
        self._non_integer_ids = False

    def _answer_batch(self, batch: Mapping[str, Any], stage: str) -> list[str]:
        """Top-1 answers of a batch; updates the metrics and keeps the predictions of test/predict."""
        top1 = self(batch["image"], batch["question_ids"], batch["question_mask"]).ids[:, 0]
        answers = self.answer_candidates().answers
        predicted = [answers[i] for i in top1.tolist()]
        annotated = [(p, a) for p, a in zip(predicted, batch.get("answers") or []) if a]
        if annotated:
            metric = self.val_acc if stage == "val" else self.test_acc
            metric.update([p for p, _ in annotated], [a for _, a in annotated])
            if stage == "test":
                self.test_chance.update([a for _, a in annotated], self._answer_lookup)
        if stage in ("test", "predict"):
            question_id = batch["question_id"]
            if isinstance(question_id, torch.Tensor):
                self._collected.append((batch["index"].to(self.device), question_id.to(self.device), top1))
            else:
                self._non_integer_ids = True
        return predicted

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not is_empty_batch(batch):
            self._answer_batch(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not is_empty_batch(batch):
            self._answer_batch(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """``[{"question_id", "answer"}]`` of the batch (also kept for the EvalAI file)."""
        if is_empty_batch(batch):
            return []
        predicted = self._answer_batch(batch, "predict")
        question_id = batch["question_id"]
        ids = question_id.tolist() if isinstance(question_id, torch.Tensor) else list(question_id)
        return [{"question_id": q, "answer": a} for q, a in zip(ids, predicted)]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.world_size > 1 or self.val_acc.update_count:
            acc = 100.0 * self.val_acc.compute()  # syncs across processes; NaN: no annotated question
            if torch.isfinite(acc):
                self.log("val/acc", acc, prog_bar=True)
        self.val_acc.reset()

    def on_test_epoch_end(self) -> None:
        path = self._write_predictions("test")
        # compute() syncs across processes, so every rank calls it; NaN: no annotated question anywhere
        acc = 100.0 * self.test_acc.compute() if self.trainer.world_size > 1 or self.test_acc.update_count else None
        chance = self.test_chance.compute() if acc is not None else None
        self.test_acc.reset()
        self.test_chance.reset()
        if acc is not None and torch.isfinite(acc):
            self.log("test/acc", acc)
        else:
            acc = None
        if not self.trainer.is_global_zero:
            return
        extra: dict[str, Any] = {"predictions_file": str(path) if path else None}
        if acc is None:
            extra["note"] = "no annotator answers in the test set: submit the predictions file to EvalAI"
            report_results(self.results_dir, self.task_spec.result_name, {}, {}, extra=extra)
            return
        best = int(chance["answer_index"])
        extra.update(n_annotated_questions=int(chance["count"]),
                     majority_answer=self.answer_candidates().answers[best] if best >= 0 else None)
        report_results(
            self.results_dir, self.task_spec.result_name, {"acc": float(acc)}, {"acc": 100.0 * float(chance["acc"])},
            extra=extra, blind=self.blind_metrics(),
        )

    def blind_metrics(self) -> dict[str, float]:
        """VQA accuracy of the language prior: the best training answer per question type (a record's
        ``question_type``, else its first words), :func:`~albef_struct.metrics.blind.vqa_question_type_prior`;
        {} without annotated training and test questions."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "question_records"):
            return {}

        def typed(records: list[dict]) -> list[tuple[str, list[str]]]:
            return [(rec.get("question_type") or question_type(rec["question"]),
                     [rec["answer"]] * 10 if isinstance(rec["answer"], str) else list(rec["answer"]))
                    for rec in records if rec.get("answer")]

        train, test = typed(datamodule.question_records("train")), typed(datamodule.question_records("test"))
        if not (train and test):
            return {}
        accuracy, _ = vqa_question_type_prior(train, test)
        return {"acc": 100.0 * accuracy}

    def on_predict_epoch_end(self) -> None:
        self._write_predictions("predict")

    # --- the EvalAI file -----------------------------------------------------------------------------
    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` ``[n, ...]`` of every process concatenated (ranks may hold different ``n``)."""
        if self.trainer.world_size <= 1:
            return tensor
        sizes = self.all_gather(torch.tensor(tensor.shape[0], device=self.device)).flatten()
        longest = int(sizes.max())
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = self.all_gather(padded)  # [world, longest, ...]
        return torch.cat([gathered[r, : int(n)] for r, n in enumerate(sizes.tolist())])

    def _write_predictions(self, stage: str) -> Path | None:
        """Write ``vqa_predictions_<stage>.json`` (rank 0) from every process's predictions."""
        if self._non_integer_ids:
            log.warning("VQA %s: question ids are not integers, so no EvalAI file is written", stage)
            return None
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        rows = [torch.cat(column) if column else empty for column in zip(*self._collected)] or [empty] * 3
        index, question_id, answer = (self._gather_rows(t.long()) for t in rows)
        self._collected = []
        if not self.trainer.is_global_zero or index.numel() == 0:
            return None
        # Distributed samplers repeat a few items to even out the ranks: keep one per dataset row, in file order.
        order = torch.argsort(index, stable=True)
        index, question_id, answer = index[order], question_id[order], answer[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        answers = self.answer_candidates().answers
        path = Path(self.results_dir) / f"vqa_predictions_{stage}.json"
        write_evalai_submission(path, question_id[first].tolist(), [answers[i] for i in answer[first].tolist()])
        print(f"VQA {stage} predictions (EvalAI format) written to {path}")
        return path
