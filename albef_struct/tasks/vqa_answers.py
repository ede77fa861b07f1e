"""VQA's answer decoder as pure functions: question states, the distilled answer loss, candidate ranking.

The decoder (``ALBEF.answer_decoder``) is a causal BERT cross-attending the fused
question states; :class:`~albef_struct.tasks.vqa.VQAModule` trains and evaluates it
with these functions (see that module for ALBEF's recipe and its first-token quirk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from albef_struct.losses import soft_cross_entropy
from albef_struct.models import ALBEF

IGNORE_INDEX = -100
#: a VQA checkpoint of this project keeps its candidate answers under this key (read by albef_struct.inference)
ANSWER_LIST_KEY = "vqa_answer_list"
#: ``decoder(input_ids, attention_mask, encoder_hidden, encoder_mask) -> logits [N, L, vocab]``
Decoder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def question_states(
    model: ALBEF, images: torch.Tensor, question_ids: torch.Tensor, question_mask: torch.Tensor
) -> torch.Tensor:
    """Fused hidden states ``[B, Lq, H]``: text layers, then fusion layers attending every image token."""
    image = model.encode_image(images).embeds
    text = model.encode_text(question_ids, question_mask).embeds
    return model.fuse(text, question_mask, image)


def repeat_per_answer(
    states: torch.Tensor,
    mask: torch.Tensor,
    answers_per_question: torch.Tensor | Sequence[int],
    total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Question ``i``'s states and mask repeated ``answers_per_question[i]`` times, in order.

    ``total`` (the number of answers, ``sum(answers_per_question)``) avoids a
    device synchronisation when given.
    """
    counts = torch.as_tensor(answers_per_question, dtype=torch.long, device=states.device)
    return (
        states.repeat_interleave(counts, dim=0, output_size=total),
        mask.repeat_interleave(counts, dim=0, output_size=total),
    )


def answer_token_nll(logits: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Next-token NLL ``[N, L-1]`` of every answer token (``logits[:, :-1]`` predict ``ids[:, 1:]``); 0 at padding.

    Column 0 is the first answer token after ``[CLS]``. Computed in float32.
    """
    targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, IGNORE_INDEX)
    predictions = logits[:, :-1].float()
    nll = F.cross_entropy(
        predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    )
    return nll.view(targets.shape)


def answer_losses(
    logits: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Per-answer loss ``[N]``: summed token NLL, distilled as ALBEF's answer decoder does.

    ``(1 - alpha) · Σ_t NLL_t + alpha · Σ_t soft-CE(logits_t, softmax(teacher_logits_t))``
    over the non-padding answer tokens; plain summed NLL without ``teacher_logits``.
    """
    nll = answer_token_nll(logits, answer_ids, answer_mask).sum(dim=1)
    if teacher_logits is None:
        return nll
    soft_targets = teacher_logits[:, :-1].detach().float().softmax(dim=-1)
    soft = soft_cross_entropy(logits[:, :-1].float(), soft_targets)
    distill = (soft * answer_mask[:, 1:].to(soft.dtype)).sum(dim=1)
    return (1.0 - alpha) * nll + alpha * distill


def vqa_loss(per_answer: torch.Tensor, answer_weights: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ALBEF's batch loss: ``Σ weight · per-answer loss / number of questions``."""
    return (answer_weights.to(per_answer.dtype) * per_answer).sum() / batch_size


class RankedAnswers(NamedTuple):
    """The top-``k`` candidates per question, best first: indices into the answer list and probabilities."""

    ids: torch.Tensor  # [B, k] long
    probs: torch.Tensor  # [B, k], a softmax over the k re-scored candidates


def rank_answers(
    decoder: Decoder,
    question_states: torch.Tensor,
    question_mask: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    k: int,
    albef_first_token_double_count: bool = False,
    chunk_size: int | None = None,
) -> RankedAnswers:
    """Rank the candidate answers (``[A, La]``, ``[CLS] answer [SEP]``) of every question.

    1. One decoder step from ``[CLS]`` gives ``p(first token)`` of every candidate
       (``answer_ids[:, 1]``); the top ``k`` (clamped to ``A``) are kept.
    2. Those ``k`` candidates are teacher-forced; score = ``log p(first token) +
       log p(rest of the sequence)``, so each token counts once (the candidate's
       log-likelihood). ``albef_first_token_double_count`` adds the log-likelihood
       of the *whole* sequence instead, counting the first token twice, as ALBEF.
    3. Softmax over the ``k`` scores, sorted best first.

    ``chunk_size`` bounds the candidate sequences per decoder pass (memory: the
    logits are ``[chunk, La, vocab]``); None runs all ``B·k`` in one pass.
    """
    num_questions, num_answers = question_states.shape[0], answer_ids.shape[0]
    if num_answers == 0:
        raise ValueError("rank_answers: the answer list is empty; pass at least one candidate answer")
    k = max(1, min(int(k), num_answers))
    start = answer_ids[:1, :1].expand(num_questions, 1)  # [CLS]
    start_logits = decoder(start, torch.ones_like(start), question_states, question_mask)[:, 0]
    first_probs = start_logits.float().softmax(dim=-1).index_select(1, answer_ids[:, 1])  # [B, A]
    topk_probs, topk_ids = first_probs.topk(k, dim=1)

    candidate_ids = answer_ids[topk_ids].flatten(0, 1)  # [B*k, La], question-major
    candidate_mask = answer_mask[topk_ids].flatten(0, 1)
    states = question_states.repeat_interleave(k, dim=0)
    state_mask = question_mask.repeat_interleave(k, dim=0)
    step = candidate_ids.shape[0] if not chunk_size else int(chunk_size)
    token_nll = torch.cat([
        answer_token_nll(
            decoder(candidate_ids[s : s + step], candidate_mask[s : s + step], states[s : s + step], state_mask[s : s + step]),
            candidate_ids[s : s + step], candidate_mask[s : s + step],
        )
        for s in range(0, candidate_ids.shape[0], step)
    ])  # [B*k, La-1]
    # ALBEF counts the first answer token twice (its sequence NLL already holds it); kept behind the flag for parity.
    sequence_nll = token_nll.sum(dim=1) if albef_first_token_double_count else token_nll[:, 1:].sum(dim=1)
    scores = topk_probs.log() - sequence_nll.view(num_questions, k)
    probs, order = scores.softmax(dim=1).topk(k, dim=1)
    return RankedAnswers(topk_ids.gather(1, order), probs)
