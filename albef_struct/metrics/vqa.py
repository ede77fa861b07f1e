"""VQA v2 accuracy (the official evaluation's answer normalisation and 10-annotator score).

The score of a predicted answer is the mean, over the leave-one-out subsets of the
annotators, of ``min(#annotators in the subset who gave that answer / 3, 1)``: with 10
annotators, 1 match scores 0.3, 2 matches 0.6, 3 matches 0.9 and 4 or more 1.0.

Two ways to compare the predicted answer with the annotators' (``normalization``):

* ``"official"`` (the default: the scores the VQA evaluation server and its released
  script give): the prediction is stripped and brought to normal form
  (:func:`normalize_answer`: punctuation, lower case, number words, articles,
  contractions); the annotators' answers are only stripped of surrounding whitespace,
  and only when they disagree among themselves is their punctuation processed too (no
  lower-casing, no number words, no articles). So ten annotators answering "Two" score a
  predicted "2" (or "two") 0, and ten answering "a dog" score "dog" 0.
* ``"always"``: both sides always brought to normal form. Identical whenever the
  annotators' answers are already in normal form, as most released VQA v2 answers are;
  never lower than the official score.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["normalize_answer", "vqa_accuracy", "VQAAccuracy", "MajorityAnswerAccuracy", "write_evalai_submission",
           "NORMALIZATIONS"]

#: ways to compare a prediction with the annotators' answers (see the module docstring)
NORMALIZATIONS = ("official", "always")

# Punctuation the official evaluation deletes or turns into a space. Periods are
# handled separately (kept before a digit, as in "2.5"); apostrophes and colons stay.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contractions, written with their apostrophes. Each is also recognised with any one
# of its apostrophes missing ("dont" -> "don't", "hadnt've" / "hadn'tve" -> "hadn't've"),
# but not with two missing ("hadntve" stays), as in the official table.
_CONTRACTIONS = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
    hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've
    it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock
    oughtn't shan't she'd've should've shouldn't shouldn't've somebody'd've
    somebody'll somebody's someone'd someone'd've someone'll someone's something'd
    something'd've something'll that's there'd there'd've there're there's they'd
    they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll
    what're what's what've when's where'd where's where've who'd who'd've who'll
    who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
    y'all'll y'all'd've you'd you'd've you'll you're you've 'ow's'at
""".split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for full in _CONTRACTIONS:
        for pos in (i for i, ch in enumerate(full) if ch == "'"):
            table[full[:pos] + full[pos + 1:]] = full
    # The official table also maps "somebody'd" the wrong way round (sic); kept so that
    # scores match it. Its entries with a capital "I" ("Im", "Ive", ...) never fire,
    # because answers are lower-cased first, so they are left out.
    table["somebody'd"] = "somebodyd"
    return table


_CONTRACTION_TABLE = _contraction_table()


def _strip_punctuation(text: str) -> str:
    """Delete punctuation next to a space (or anywhere, if the text has "1,000"-style
    numbers), turn other punctuation into spaces, and drop periods not before a digit."""
    glued = bool(_DIGIT_COMMA_DIGIT.search(text))
    out = text
    for p in _PUNCTUATION:
        # the decision looks at the original text, as the official evaluation does
        if glued or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _words(text: str) -> str:
    """Lower-case, number words to digits, articles removed, contractions restored."""
    kept = (_NUMBER_WORDS.get(w, w) for w in text.lower().split())
    kept = (w for w in kept if w not in _ARTICLES)
    return " ".join(_CONTRACTION_TABLE.get(w, w) for w in kept)


def _stripped(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """An answer in the official VQA evaluation's normal form ("Two dogs!" -> "2 dogs")."""
    return _words(_strip_punctuation(_stripped(text)))


def annotator_forms(annotator_answers: Sequence[str], normalization: str = "official") -> list[str]:
    """The annotators' answers as the prediction is compared with them (see the module docstring)."""
    if normalization == "always":
        return [normalize_answer(a) for a in annotator_answers]
    if normalization != "official":
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    answers = [_stripped(a) for a in annotator_answers]
    return [_strip_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers


def _accuracy_normalized(prediction: str, answers: Sequence[str]) -> float:
    n = len(answers)
    matches = sum(a == prediction for a in answers)
    # leaving out a matching annotator leaves matches-1 in the subset, else matches
    total = matches * min((matches - 1) / 3, 1.0) + (n - matches) * min(matches / 3, 1.0)
    return total / n


def vqa_accuracy(prediction: str, annotator_answers: Sequence[str], normalization: str = "official") -> float:
    """VQA accuracy in [0, 1] of one predicted answer against the annotators' answers.

    Needs at least 4 annotator answers for a score of 1 (VQA v2 has 10); with a single
    answer the score is always 0, so repeat single answers before evaluating.
    ``normalization``: ``"official"`` or ``"always"`` (module docstring).
    """
    if isinstance(annotator_answers, str) or len(annotator_answers) == 0:
        raise ValueError(
            f"annotator_answers must be a non-empty list of strings (VQA v2 has 10 per question); "
            f"got {annotator_answers!r}"
        )
    return _accuracy_normalized(normalize_answer(prediction), annotator_forms(annotator_answers, normalization))


class VQAAccuracy(Metric):
    """Mean :func:`vqa_accuracy` over all questions seen, in [0, 1]; sums across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, normalization: str = "official", **kwargs) -> None:
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.add_state("accuracy_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], annotator_answers: Sequence[Sequence[str]]) -> None:
        """Add a batch: one predicted answer and one list of annotator answers per question."""
        if len(predictions) != len(annotator_answers):
            raise ValueError(
                f"VQAAccuracy.update: {len(predictions)} predictions but {len(annotator_answers)} "
                f"annotator-answer lists; pass one list of answers per question"
            )
        batch = sum(vqa_accuracy(p, a, self.normalization) for p, a in zip(predictions, annotator_answers))
        self.accuracy_sum += batch
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        """Mean accuracy (NaN before any update)."""
        return (self.accuracy_sum / self.count).float()


class MajorityAnswerAccuracy(Metric):
    """VQA accuracy of the best constant answer: always giving the same candidate (the chance level).

    Sums, for every candidate of the answer list, the accuracy it would score on
    each question seen; the best candidate's mean is the majority-answer baseline
    (see :meth:`compute`). Questions without annotator answers are not counted.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, normalization: str = "official", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.add_state("candidate", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, annotator_answers: Sequence[Sequence[str]], lookup: Mapping[str, int]) -> None:
        """Add questions (their annotator answers); ``lookup`` maps a normalised answer to its candidate index."""
        candidates, scores, questions = [], [], 0
        for answers in annotator_answers:
            if not answers:
                continue
            questions += 1
            for answer in {normalize_answer(a) for a in answers}:
                index = lookup.get(answer)
                if index is not None:  # only answers the model could give score above 0
                    candidates.append(index)
                    scores.append(vqa_accuracy(answer, answers, self.normalization))
        self.count += questions
        if candidates:
            self.candidate.append(torch.tensor(candidates, dtype=torch.long, device=self.device))
            self.score.append(torch.tensor(scores, dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """``acc`` (mean accuracy of the best candidate), ``answer_index`` (-1: none matched), ``count`` (questions)."""
        count = self.count.clamp(min=1)
        candidate = dim_zero_cat(self.candidate).long() if len(self.candidate) else None
        if candidate is None or candidate.numel() == 0:
            zero = torch.tensor(0.0, device=self.device)
            return {"acc": zero, "answer_index": torch.tensor(-1, device=self.device), "count": self.count.clone()}
        totals = torch.zeros(int(candidate.max()) + 1, dtype=torch.float64, device=candidate.device)
        totals.index_add_(0, candidate, dim_zero_cat(self.score).double())
        best = totals.argmax()
        return {"acc": (totals[best] / count).float(), "answer_index": best, "count": self.count.clone()}


def write_evalai_submission(
    path: str | os.PathLike, question_ids: Sequence[int], answers: Sequence[str]
) -> Path:
    """Write ``[{"question_id": int, "answer": str}, ...]`` for the EvalAI VQA server.

    The server wants every question of the test split in one file, also for test-dev.
    """
    if len(question_ids) != len(answers):
        raise ValueError(
            f"{path}: {len(question_ids)} question ids but {len(answers)} answers; pass one answer per question"
        )
    ids = [int(q) for q in question_ids]
    dup = next((q for q, n in Counter(ids).items() if n > 1), None)
    if dup is not None:
        raise ValueError(f"{path}: question_id {dup} appears more than once; each question needs exactly one answer")
    bad = next((i for i, a in enumerate(answers) if not isinstance(a, str)), None)
    if bad is not None:
        raise ValueError(f"{path}: answer {bad} (question_id {ids[bad]}) is {answers[bad]!r}; answers must be strings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = [{"question_id": q, "answer": a} for q, a in zip(ids, answers)]
    path.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    return path
