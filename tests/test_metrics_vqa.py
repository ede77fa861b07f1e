"""VQA v2 accuracy: answer normalisation, the 10-annotator score, the torchmetrics wrapper."""

from __future__ import annotations

import json

import pytest
import torch

from albef_struct.metrics import VQAAccuracy, normalize_answer, vqa_accuracy, write_evalai_submission


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("none", "0"),
        ("a circle", "circle"),
        ("The Red Ball", "red ball"),
        ("grey.", "grey"),  # the official evaluation keeps grey and gray apart
        ("gray", "gray"),
        ("dont", "don't"),
        ("Hadnt've", "hadn't've"),
        ("hadn'tve", "hadn't've"),
        ("hadntve", "hadntve"),  # two apostrophes missing: not in the table
        ("im", "im"),  # the official table's "Im" never matches lower-cased text
        ("yes!", "yes"),
        ("2.5", "2.5"),
        ("mr. smith", "mr smith"),
        ("t-shirt", "t shirt"),  # glued punctuation becomes a space
        ("left - right", "left right"),  # punctuation next to a space is deleted
        ("10,000", "10000"),  # digit,digit: every punctuation mark is deleted
        ("what's that?", "what's that"),
        ("  \tA  Dog \n", "dog"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_normalize_answer_is_idempotent() -> None:
    for raw in ["Two dogs!", "t-shirt", "10,000", "dont know", "a (red) car.", "2.5 m"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


@pytest.mark.parametrize(
    "n_match, expected",
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_leave_one_out(n_match: int, expected: float) -> None:
    answers = ["yes"] * n_match + ["no"] * (10 - n_match)
    assert vqa_accuracy("yes", answers) == pytest.approx(expected)


def test_vqa_accuracy_two_matches_by_hand() -> None:
    # leaving out one of the 2 matching annotators: 1 match -> 1/3 (2 subsets);
    # leaving out any other annotator: 2 matches -> 2/3 (8 subsets)
    answers = ["red", "red", "blue", "blue", "green", "blue", "pink", "blue", "blue", "navy"]
    assert vqa_accuracy("red", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("blue", answers) == pytest.approx(1.0)


def test_vqa_accuracy_always_normalises_both_sides() -> None:
    assert vqa_accuracy("Yes", ["yes"] * 10, "always") == 1.0
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7, "always") == pytest.approx(0.9)
    assert vqa_accuracy("a dog.", ["Dog", "dog", "the dog!", "cat"] + ["cat"] * 6, "always") == pytest.approx(0.9)
    assert vqa_accuracy("grey", ["gray"] * 10, "always") == 0.0
    assert vqa_accuracy("2", ["Two"] * 10, "always") == 1.0


# The official evaluation's rules, case by case: the prediction is always stripped, punctuation-processed,
# lower-cased and freed of number words, articles and missing apostrophes; the annotators' answers are only
# stripped, and punctuation-processed (nothing more) only when they are not all the same string.
OFFICIAL_CASES = [
    ("2", ["Two"] * 10, 0.0),  # unanimous: "Two" is compared as written
    ("two", ["Two"] * 10, 0.0),  # the prediction becomes "2"
    ("yes", ["Yes"] * 10, 0.0),  # unanimous capitals stay
    ("Yes", ["yes"] * 10, 1.0),  # the prediction is lower-cased
    ("dog", [" dog\n"] * 10, 1.0),  # surrounding whitespace goes on both sides
    ("yes", ["yes."] * 4 + ["no"] * 6, 1.0),  # disagreement: "yes." loses its period
    ("yes", ["yes."] * 10, 0.0),  # ...but not when unanimous
    ("dog", ["a dog"] * 4 + ["cat"] * 6, 0.0),  # disagreement processes punctuation only, not articles
    ("2", ["two"] * 5 + ["2"] * 5, 1.0),  # five "2" match; "two" never does
    ("a dog.", ["Dog", "dog", "the dog!", "cat"] + ["cat"] * 6, 0.3),  # only the one "dog" matches
    ("don't", ["dont"] * 10, 0.0),  # the prediction's apostrophe stays, the annotators' is not restored
]


@pytest.mark.parametrize("prediction, answers, expected", OFFICIAL_CASES)
def test_vqa_accuracy_follows_the_official_rules_by_default(prediction, answers, expected) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)
    assert vqa_accuracy(prediction, answers, "official") == pytest.approx(expected)
    assert vqa_accuracy(prediction, answers, "always") >= vqa_accuracy(prediction, answers)  # never lower


def test_the_metrics_take_the_normalization_and_refuse_unknown_ones() -> None:
    official, always = VQAAccuracy(), VQAAccuracy("always")
    for metric in (official, always):
        metric.update(["2", "yes"], [["Two"] * 10, ["yes"] * 10])
    assert float(official.compute()) == pytest.approx(0.5) and float(always.compute()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="normalization must be one of"):
        VQAAccuracy("loose")
    with pytest.raises(ValueError, match="normalization must be one of"):
        vqa_accuracy("x", ["x"] * 4, "loose")


def test_vqa_accuracy_other_annotator_counts() -> None:
    assert vqa_accuracy("x", ["x"]) == 0.0  # one answer: every subset is empty
    assert vqa_accuracy("x", ["x"] * 4) == 1.0
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_accuracy("x", [])
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_accuracy("x", "x")


def test_metric_aggregates_batches_to_the_mean() -> None:
    preds = ["yes", "no", "2", "red", "cat", "grey"]
    gts = [
        ["yes"] * 10,
        ["no"] * 2 + ["yes"] * 8,
        ["two"] * 3 + ["3"] * 7,
        ["red"] + ["blue"] * 9,
        ["dog"] * 10,
        ["grey"] * 5 + ["gray"] * 5,
    ]
    expected = sum(vqa_accuracy(p, g) for p, g in zip(preds, gts)) / len(preds)
    # official rules: the annotators' "two" is not read as "2" (0.9 when both sides are normalised)
    assert expected == pytest.approx((1 + 0.6 + 0 + 0.3 + 0 + 1) / 6)

    metric = VQAAccuracy()
    metric.update(preds[:2], gts[:2])
    metric.update(preds[2:5], gts[2:5])
    metric.update(preds[5:], gts[5:])
    result = metric.compute()
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
    assert result.item() == pytest.approx(expected, abs=1e-6)
    assert int(metric.count) == 6

    metric.reset()
    metric.update(preds, gts)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_metric_states_sum_across_processes() -> None:
    metric = VQAAccuracy()
    assert metric._reductions["accuracy_sum"] is not None and metric._reductions["count"] is not None
    # simulate a DDP reduction: two processes' states summed
    a, b = VQAAccuracy(), VQAAccuracy()
    a.update(["yes"], [["yes"] * 10])
    b.update(["no", "no"], [["no"] * 2 + ["x"] * 8, ["x"] * 10])
    total = (a.accuracy_sum + b.accuracy_sum) / (a.count + b.count)
    assert total.item() == pytest.approx((1 + 0.6 + 0) / 3)


def test_metric_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        VQAAccuracy().update(["a", "b"], [["a"] * 10])


def test_write_evalai_submission(tmp_path) -> None:
    path = write_evalai_submission(tmp_path / "sub" / "vqa_result.json", [torch.tensor(5), 7], ["yes", "2"])
    assert json.loads(path.read_text()) == [{"question_id": 5, "answer": "yes"}, {"question_id": 7, "answer": "2"}]
    with pytest.raises(ValueError, match="question_id 5 appears more than once"):
        write_evalai_submission(tmp_path / "x.json", [5, 5], ["a", "b"])
    with pytest.raises(ValueError, match="2 question ids but 1 answers"):
        write_evalai_submission(tmp_path / "x.json", [5, 6], ["a"])
