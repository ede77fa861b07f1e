"""VQA questions of the shapes world, with ten noisy annotator answers each (surface variants, confusable wrong answers)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from albef_struct.data_prep.captions import (
    NUMBER_WORDS,
    SIZE_ANSWERS,
    YES_NO,
    article,
    colour_counts,
    has,
    normalize_answer,
    pick,
    plural,
    reference_avoiding,
    shape_counts,
    where,
)
from albef_struct.data_prep.shapes import COLOURS, SHAPES, Scene


QUESTION_TYPES = ("color", "shape", "count", "exist", "size")


def _colour_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    o = pick(rng, scene.objects)
    if rng.random() < 0.25:
        q = pick(rng, ("what color is the shape {}?", "what color is the object {}?"))
        return q.format(where(o)), o.colour
    q = pick(rng, ("what color is {}?", "what is the color of {}?", "which color does {} have?"))
    return q.format(reference_avoiding(o, scene, "colour")), o.colour


def _shape_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    o = pick(rng, scene.objects)
    if colour_counts(scene)[o.colour] == 1 and rng.random() < 0.3:
        return f"what shape is the {o.colour} object?", o.shape
    q = pick(rng, ("what shape is {}?", "which shape is {}?", "what is the shape {}?"))
    return q.format(where(o)), o.shape


#: how a count question picks its subject (the whole scene, a colour, a shape) and how often
COUNT_KINDS = ("total", "colour", "shape")
COUNT_KIND_P = (0.2, 0.15, 0.65)
#: the answers each kind balances (a colour or shape seldom occurs 3 or 4 times in one scene)
COUNT_BALANCED = {"total": range(1, 5), "colour": range(0, 3), "shape": range(0, 3)}


class CountBalancer:
    """Chooses each count question so that, within a question type (the whole scene, one colour,
    one shape: what a blind model sees of the question), the answers stay as balanced as the
    scenes allow. Left to chance, "how many circles" is mostly "1" and a question-type prior
    scores 68 % on counts; balanced, it cannot do much better than a uniform guess."""

    def __init__(self) -> None:
        self.used: Counter = Counter()  # (kind, subject, answer) -> questions asked so far

    def _deficit(self, kind: str, subject: str, answer: int) -> int:
        """How many more times this answer was given for its question type than the rarest balanced answer."""
        floor = min(self.used[kind, subject, a] for a in COUNT_BALANCED[kind])
        return self.used[kind, subject, answer] - floor

    def choose(self, scene: Scene, rng: np.random.Generator) -> tuple[str, str, int]:
        """``(kind, subject, answer)``: among this scene's count questions, one whose answer is the least
        over-used for its question type (:meth:`_deficit`), of the kind drawn by ``COUNT_KIND_P`` when
        that kind has one, else of the next kind in ``COUNT_KINDS`` order that has one."""
        candidates = [("total", "", len(scene.objects))]
        candidates += [("colour", c, colour_counts(scene)[c]) for c in COLOURS]
        candidates += [("shape", s, shape_counts(scene)[s]) for s in SHAPES]
        first = COUNT_KINDS[int(rng.choice(len(COUNT_KINDS), p=COUNT_KIND_P))]
        order = [first] + [k for k in COUNT_KINDS if k != first]
        deficits = [self._deficit(*c) for c in candidates]
        rarest = [c for c, d in zip(candidates, deficits) if d == min(deficits)]
        kind = next(k for k in order if any(c[0] == k for c in rarest))
        pool = [c for c in rarest if c[0] == kind]
        choice = pool[int(rng.integers(len(pool)))]
        self.used[choice] += 1
        return choice


def _count_question(scene: Scene, rng: np.random.Generator, balancer: CountBalancer | None = None) -> tuple[str, str]:
    kind, subject, answer = (balancer or CountBalancer()).choose(scene, rng)
    if kind == "total":
        return pick(rng, ("how many objects are there?", "how many shapes are in the image?")), str(answer)
    if kind == "colour":
        return f"how many {subject} objects are there?", str(answer)
    q = pick(rng, ("how many {} are there?", "how many {} are in the picture?", "what is the number of {}?"))
    return q.format(plural(subject)), str(answer)


def _exist_question(scene: Scene, rng: np.random.Generator, want_yes: bool) -> tuple[str, str]:
    if want_yes:
        o = pick(rng, scene.objects)
        colour, shape = o.colour, o.shape
    else:  # half of the 'no' cases share the colour or the shape with a present object
        absent = [(c, s) for c in COLOURS for s in SHAPES if not has(scene, c, s)]
        near = [(c, s) for c, s in absent if has(scene, colour=c) or has(scene, shape=s)]
        colour, shape = pick(rng, near if near and rng.random() < 0.5 else absent)
    q = pick(rng, ("is there {}?", "is there {} in the image?", "does the image contain {}?"))
    return q.format(article(f"{colour} {shape}")), "yes" if want_yes else "no"


def _size_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    o = pick(rng, scene.objects)
    q = pick(rng, ("is {} small or large?", "is {} large or small?", "what size is {}?"))
    return q.format(reference_avoiding(o, scene, "size")), o.size


def make_question(scene: Scene, qtype: str, rng: np.random.Generator,
                  want_yes: bool = True, counts: CountBalancer | None = None) -> tuple[str, str]:
    """One question of type ``qtype`` with its unique canonical answer for ``scene``; ``counts``
    keeps the answers of a split's count questions balanced per question type."""
    if qtype == "color":
        return _colour_question(scene, rng)
    if qtype == "shape":
        return _shape_question(scene, rng)
    if qtype == "count":
        return _count_question(scene, rng, counts)
    if qtype == "exist":
        return _exist_question(scene, rng, want_yes)
    if qtype == "size":
        return _size_question(scene, rng)
    raise ValueError(f"unknown question type {qtype!r}")


def answer_type(answer: str) -> str:
    """Category of a canonical answer (selects plausible wrong answers)."""
    if answer in COLOURS:
        return "color"
    if answer in SHAPES:
        return "shape"
    if answer.isdigit():
        return "number"
    if answer in YES_NO:
        return "yesno"
    if answer in SIZE_ANSWERS:
        return "size"
    raise ValueError(f"not a canonical answer: {answer!r}")


def surface_variants(answer: str) -> list[str]:
    """Other ways an annotator writes ``answer`` ('gray'->'grey', '2'->'two', 'circle'->'a circle')."""
    kind = answer_type(answer)
    out = [answer.capitalize(), answer + "."]
    if kind == "color" and answer == "gray":
        out += ["grey", "grey", "Grey"]
    elif kind == "shape":
        out += [article(answer), "the " + answer]
    elif kind == "number":
        out += [NUMBER_WORDS[int(answer)], NUMBER_WORDS[int(answer)].capitalize()]
        if answer == "0":
            out += ["none"]
    elif kind == "yesno":
        out += [answer.capitalize() + "."]
    elif kind == "size":
        out += ["tiny" if answer == "small" else "big"]
    return [v for v in out if v != answer]


_CONFUSABLE = {"red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange",),
               "purple": ("blue", "red"), "blue": ("purple", "green"), "green": ("blue", "yellow"),
               "gray": ("black",), "black": ("gray",), "square": ("diamond",),
               "diamond": ("square",), "star": ("cross",), "cross": ("star",),
               "circle": ("square",), "triangle": ("diamond", "star")}


def wrong_answers(answer: str) -> list[str]:
    """Plausible wrong answers to a question whose correct answer is ``answer``."""
    kind = answer_type(answer)
    if kind == "number":
        n = int(answer)
        return [str(m) for m in (n - 1, n + 1) if 0 <= m <= 4]
    if kind == "yesno":
        return ["no" if answer == "yes" else "yes"]
    if kind == "size":
        return ["large" if answer == "small" else "small"]
    return list(_CONFUSABLE[answer])


#: distribution of the number of wrong annotators (0..4) out of 10
N_WRONG_P = (0.55, 0.22, 0.12, 0.07, 0.04)
VARIANT_P = 0.15  # probability that a correct annotator writes a surface variant


def annotator_answers(answer: str, rng: np.random.Generator, n: int = 10) -> list[str]:
    """``n`` simulated annotator answers: mostly ``answer``, some surface variants, a few
    plausible wrong answers; after normalisation ``answer`` is strictly the most frequent."""
    variants, wrong = surface_variants(answer), wrong_answers(answer)
    while True:
        n_wrong = int(rng.choice(len(N_WRONG_P), p=N_WRONG_P))
        out = [pick(rng, variants) if rng.random() < VARIANT_P else answer
               for _ in range(n - n_wrong)]
        out += [pick(rng, wrong) for _ in range(n_wrong)]
        counts = Counter(normalize_answer(a) for a in out)
        top = counts.pop(answer, 0)
        if top > max(counts.values(), default=0):
            return [out[int(i)] for i in rng.permutation(n)]


