"""ALBEF's caption and question cleaning."""

from __future__ import annotations

import re

__all__ = ["pre_caption", "pre_question"]

# Characters ALBEF deletes outright, and those it turns into a space.
_DELETED = ",.'!?\"()*#:;~"
_DELETE_TABLE = str.maketrans({c: None for c in _DELETED} | {"-": " ", "/": " "})
_WHITESPACE = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int = 30) -> str:
    """Lower-case, strip punctuation, map ``<person>`` to ``person``, keep ``max_words`` words."""
    cleaned = text.lower().translate(_DELETE_TABLE).replace("<person>", "person")
    cleaned = _WHITESPACE.sub(" ", cleaned).rstrip("\n").strip(" ")
    return _first_words(cleaned, max_words)


def pre_question(text: str, max_words: int = 50) -> str:
    """Lower-case, strip punctuation (no ``<person>`` rule, no whitespace collapsing), keep ``max_words`` words."""
    cleaned = text.lower().translate(_DELETE_TABLE).rstrip(" ")
    return _first_words(cleaned, max_words)


def _first_words(text: str, max_words: int) -> str:
    words = text.split(" ")
    if len(words) > max_words:
        return " ".join(words[:max_words])
    return text
