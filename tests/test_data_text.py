"""ALBEF's pre_caption / pre_question text cleaning."""

from __future__ import annotations

import pytest

from albef_struct.data import pre_caption, pre_question


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("A Dog, running!", "a dog running"),
        ("It's (very) \"good\": *yes*; #1 ~ ok?", "its very good yes 1 ok"),
        ("black-and-white photo/drawing", "black and white photo drawing"),
        ("<person> rides a bike", "person rides a bike"),
        ("  spaced    out \t\t words  ", "spaced out words"),
        ("trailing newline\n", "trailing newline"),
        ("", ""),
    ],
)
def test_pre_caption_cases(raw, expected):
    assert pre_caption(raw) == expected


def test_pre_caption_keeps_first_max_words():
    text = " ".join(f"w{i}" for i in range(40))
    assert pre_caption(text) == " ".join(f"w{i}" for i in range(30))
    assert pre_caption("one two three four", max_words=2) == "one two"
    assert pre_caption("one two", max_words=2) == "one two"


def test_pre_caption_keeps_other_characters():
    # only the listed punctuation is removed: digits, & and brackets other than () stay
    assert pre_caption("2 cats & [3] dogs") == "2 cats & [3] dogs"


def test_pre_question_same_deletions_without_person_rule_or_collapse():
    assert pre_question("What colour is the Dog's collar?") == "what colour is the dogs collar"
    assert pre_question("left/right side-by-side?") == "left right side by side"
    assert pre_question("is <person> here?") == "is <person> here"
    # whitespace runs are not collapsed (ALBEF), trailing spaces are stripped
    assert pre_question("a  b   ") == "a  b"


def test_pre_question_max_words():
    q = " ".join(["word"] * 60)
    assert pre_question(q) == " ".join(["word"] * 50)
    assert pre_question(q, max_words=30) == " ".join(["word"] * 30)
