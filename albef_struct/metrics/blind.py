"""Blind baselines: what a task's test split allows without looking at the image.

A model that scores no better than these has not shown that it uses the image:

* :func:`vqa_question_type_prior`: VQA's classic "language prior" baseline, the answer with
  the best VQA accuracy among the training questions of the same question type, given
  to every test question of that type;
* :func:`text_only_predictions`: a text classifier (bag of word 1-3-grams, one hidden
  layer, the "hypothesis-only" baseline of the NLI literature) trained on the task's
  training texts and labels alone, for SNLI-VE and NLVR2.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from albef_struct.metrics.vqa import normalize_answer, vqa_accuracy

__all__ = ["question_type", "vqa_question_type_prior", "text_only_predictions"]

#: Words of a question that make its type when a record names none (VQA's own types are 1-4 word prefixes).
QUESTION_TYPE_WORDS = 4
_WORD = re.compile(r"[a-z0-9']+")


def question_type(question: str, words: int = QUESTION_TYPE_WORDS) -> str:
    """The first ``words`` words of ``question``, lower-cased ("what color is", "how many circles")."""
    return " ".join(_WORD.findall(question.lower())[:words])


def _top(scores: Counter) -> str:
    """The best-scoring answer; a tie goes to the alphabetically first (``most_common`` would keep insertion
    order, which followed set iteration and so changed with the interpreter's string hashing)."""
    return min(scores.items(), key=lambda item: (-item[1], item[0]))[0]


def vqa_question_type_prior(
    train: Sequence[tuple[str, Sequence[str]]], test: Sequence[tuple[str, Sequence[str]]]
) -> tuple[float, dict[str, str]]:
    """Mean VQA accuracy (in [0, 1]) on ``test`` of the best training answer per question type.

    ``train`` and ``test`` hold ``(question type, annotator answers)``. For each type the
    answer with the highest summed VQA accuracy over its training questions is chosen; a
    test type never seen in training gets the best answer overall; ties go to the alphabetically
    first answer, so the baseline is the same in every process. Returns the accuracy
    and the chosen answer per type.
    """
    if not train or not test:
        raise ValueError("the question-type prior needs training and test questions with annotator answers")
    scores: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for qtype, answers in train:
        for candidate in {normalize_answer(a) for a in answers}:
            score = vqa_accuracy(candidate, answers)
            scores[qtype][candidate] += score
            overall[candidate] += score
    best = {qtype: _top(counter) for qtype, counter in scores.items()}
    fallback = _top(overall)
    total = sum(vqa_accuracy(best.get(qtype, fallback), answers) for qtype, answers in test)
    return total / len(test), best


def _ngrams(text: str, max_n: int) -> list[str]:
    words = _WORD.findall(text.lower())
    return [" ".join(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)]


def _bags(texts: Sequence[str], vocabulary: dict[str, int], max_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs (flat ids, offsets); n-grams outside the vocabulary map to id 0."""
    ids: list[int] = []
    offsets: list[int] = []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(vocabulary.get(g, 0) for g in _ngrams(text, max_n))
        if len(ids) == offsets[-1]:  # an empty text still gets one (unknown) id
            ids.append(0)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class _BagOfNgrams(nn.Module):
    def __init__(self, vocabulary_size: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocabulary_size, hidden, mode="mean")
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(ids, offsets))


def text_only_predictions(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    num_classes: int,
    *,
    max_n: int = 3,
    hidden: int = 128,
    epochs: int = 30,
    held_out: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Predicted class per test text from a classifier that never sees an image.

    Bag of word 1..``max_n``-grams seen at least twice in training, one ReLU hidden layer,
    AdamW with minibatches of 256; the epoch kept is the one with the best accuracy on a
    ``held_out`` share of the training texts (so the baseline is not under-trained or
    over-fitted by choice of epochs).
    """
    with torch.inference_mode(False), torch.enable_grad():  # callable from a Lightning test loop
        return _fit_and_predict(list(train_texts), list(train_labels), list(test_texts), num_classes,
                                max_n, hidden, epochs, held_out, seed)


def _fit_and_predict(train_texts: list[str], train_labels: list[int], test_texts: list[str], num_classes: int,
                     max_n: int, hidden: int, epochs: int, held_out: float, seed: int) -> torch.Tensor:
    if len(train_texts) != len(train_labels) or len(train_texts) < 10:
        raise ValueError(f"need at least 10 training texts with one label each, got {len(train_texts)} texts "
                         f"and {len(train_labels)} labels")
    generator = torch.Generator().manual_seed(seed)
    counts = Counter(g for text in train_texts for g in set(_ngrams(text, max_n)))
    vocabulary = {g: i + 1 for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    order = torch.randperm(len(train_texts), generator=generator)
    n_held = max(1, int(held_out * len(order)))
    held, fit = order[:n_held], order[n_held:]

    def bags(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _bags([train_texts[i] for i in rows.tolist()], vocabulary, max_n)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _BagOfNgrams(len(vocabulary) + 1, num_classes, hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    held_bags = bags(held)
    best_acc, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for rows in fit[torch.randperm(len(fit), generator=generator)].split(256):
            loss = nn.functional.cross_entropy(model(*bags(rows)), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(*held_bags).argmax(-1) == labels[held]).float().mean())
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    with torch.no_grad():
        return model(*_bags(test_texts, vocabulary, max_n)).argmax(-1)
