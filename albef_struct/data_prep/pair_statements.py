"""NLVR2 statements about an image pair and SNLI-VE hypotheses about one image, true or false by construction."""

from __future__ import annotations

import numpy as np

from albef_struct.data_prep.captions import (
    NEUTRAL_PREDICATES,
    NUMBER_WORDS,
    article,
    has,
    pick,
    plural,
    reference_avoiding,
    referring_expression,
    relation,
    shape_counts,
)
from albef_struct.data_prep.shapes import COLOURS, NUM_OBJECTS_P, POSITIONS, SHAPES, Scene


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


def _count_words(n: int, shape: str) -> str:
    """'no circles', 'one circle', 'two circles'."""
    if n == 0:
        return f"no {plural(shape)}"
    return f"{NUMBER_WORDS[n]} {shape if n == 1 else plural(shape)}"


def _nlvr_more(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    shape = pick(rng, sorted(set(shape_counts(s0)) | set(shape_counts(s1))))
    c0, c1 = shape_counts(s0)[shape], shape_counts(s1)[shape]
    if c0 == c1:
        if want:
            return None
        side = pick(rng, ("left", "right"))
    else:
        bigger = "left" if c0 > c1 else "right"
        side = bigger if want else _other(bigger)
    return f"the {side} image has more {plural(shape)} than the {_other(side)} image"


def _nlvr_both(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    by_colour = bool(rng.random() < 0.5)
    key = (lambda o: o.colour) if by_colour else (lambda o: o.shape)
    a, b = {key(o) for o in s0.objects}, {key(o) for o in s1.objects}
    pool = sorted(a & b) if want else sorted(a ^ b)
    if not pool:
        return None
    value = pick(rng, pool)
    return f"both images contain {article(value + ' object') if by_colour else article(value)}"


def _nlvr_exactly(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    side = pick(rng, ("left", "right"))
    scene = s0 if side == "left" else s1
    shape = pick(rng, sorted(shape_counts(s0) | shape_counts(s1)))
    c = shape_counts(scene)[shape]
    n = c if want else pick(rng, [m for m in (c - 1, c + 1) if m >= 0])
    if n == 0:
        return f"the {side} image contains no {plural(shape)}"
    return f"the {side} image contains exactly {_count_words(n, shape)}"


def _nlvr_total(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    if rng.random() < 0.5:
        total = len(s0.objects) + len(s1.objects)
        n = total if want else pick(rng, [m for m in (total - 2, total - 1, total + 1, total + 2) if m >= 2])
        return f"there are {NUMBER_WORDS[n]} objects in the two images in total"
    shape = pick(rng, sorted(shape_counts(s0) | shape_counts(s1)))
    total = shape_counts(s0)[shape] + shape_counts(s1)[shape]
    n = total if want else pick(rng, [m for m in (total - 1, total + 1) if m >= 1])
    return f"the two images contain {_count_words(n, shape)} in total"


def _nlvr_only(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    side = pick(rng, ("left", "right"))
    cs = sorted({(o.colour, o.shape) for o in s0.objects + s1.objects})
    this, other = (s0, s1) if side == "left" else (s1, s0)
    truth = [has(this, c, s) and not has(other, c, s) for c, s in cs]
    pool = [x for x, t in zip(cs, truth) if t == want]
    if not pool:
        return None
    colour, shape = pick(rng, pool)
    return f"only the {side} image contains {article(colour + ' ' + shape)}"


def _nlvr_same_number(s0: Scene, s1: Scene, rng, want: bool) -> str | None:
    n0, n1 = len(s0.objects), len(s1.objects)
    if rng.random() < 0.5:
        return "both images show the same number of objects" if (n0 == n1) == want else None
    if n0 == n1:
        if want:
            return None
        side = pick(rng, ("left", "right"))
    else:
        bigger = "left" if n0 > n1 else "right"
        side = bigger if want else _other(bigger)
    return f"the {side} image shows more objects than the {_other(side)} image"


NLVR_TEMPLATES = (_nlvr_more, _nlvr_both, _nlvr_exactly, _nlvr_total, _nlvr_only,
                  _nlvr_same_number)


def make_nlvr_statement(s0: Scene, s1: Scene, want: bool, rng: np.random.Generator,
                        template: int | None = None) -> str | None:
    """A statement about the pair (left = ``s0``, right = ``s1``) whose truth is ``want``,
    from ``NLVR_TEMPLATES[template]`` (or the first template of a random order that
    fits), or None when it cannot be made for this pair."""
    order = [template] if template is not None else rng.permutation(len(NLVR_TEMPLATES))
    for i in order:
        text = NLVR_TEMPLATES[int(i)](s0, s1, rng, want)
        if text is not None:
            return text
    return None


# --------------------------------------------------------------------------------- VE

def _ve_exists(scene: Scene, rng, true: bool) -> str:
    if true:
        o = pick(rng, scene.objects)
        c, s = o.colour, o.shape
    else:
        c, s = pick(rng, [(c, s) for c in COLOURS for s in SHAPES if not has(scene, c, s)])
    return pick(rng, ("there is {} in the picture", "the image contains {}", "{} is visible")).format(
        article(f"{c} {s}"))


def _ve_colour(scene: Scene, rng, true: bool) -> str:
    o = pick(rng, scene.objects)
    colour = o.colour if true else pick(rng, [c for c in COLOURS if c != o.colour])
    return f"{reference_avoiding(o, scene, 'colour')} is {colour}"


def _ve_count(scene: Scene, rng, true: bool) -> str:
    n = len(scene.objects)
    # false counts follow the scene-size prior, so the number alone says little about the label
    others = [k for k in range(1, len(NUM_OBJECTS_P) + 1) if k != n]
    weights = np.array([NUM_OBJECTS_P[k - 1] for k in others])
    m = n if true else others[int(rng.choice(len(others), p=weights / weights.sum()))]
    return f"the picture shows {NUMBER_WORDS[m]} {'shape' if m == 1 else 'shapes'}"


def _ve_position(scene: Scene, rng, true: bool) -> str:
    o = pick(rng, scene.objects)
    desc = f"{article(o.colour + ' ' + o.shape)}"
    pos = o.position if true else pick(rng, [p for p in POSITIONS if p != o.position and not any(
        x.position == p and (x.colour, x.shape) == (o.colour, o.shape) for x in scene.objects)])
    return f"there is {desc} in the {pos}"


def _ve_size(scene: Scene, rng, true: bool) -> str:
    o = pick(rng, scene.objects)
    size = o.size if true else ("large" if o.size == "small" else "small")
    return f"{reference_avoiding(o, scene, 'size')} is {size}"


def _ve_absent(scene: Scene, rng, true: bool) -> str:
    present = sorted(shape_counts(scene))
    absent = [s for s in SHAPES if s not in present]
    shape = pick(rng, absent) if true else pick(rng, present)
    return f"there are no {plural(shape)} in the image"


def _ve_relation(scene: Scene, rng, true: bool) -> str | None:
    if len(scene.objects) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
    a, b = scene.objects[i], scene.objects[j]
    ra, rb = referring_expression(a, scene), referring_expression(b, scene)
    if not (ra.endswith(a.shape) and rb.endswith(b.shape)):
        return None
    rel = relation(a, b, rng)
    if not true:  # the opposite relation along the same axis is false
        rel = {"to the left of": "to the right of", "left of": "right of", "above": "below",
               "to the right of": "to the left of", "right of": "left of", "below": "above"}[rel]
    return f"{ra} is {rel} {rb}"


VE_CHECKABLE = (_ve_exists, _ve_colour, _ve_count, _ve_position, _ve_size, _ve_absent,
                _ve_relation)


def make_hypothesis(scene: Scene, label: str, rng: np.random.Generator) -> str:
    """A hypothesis whose SNLI-VE label for ``scene`` is ``label``."""
    if label == "neutral":
        o = pick(rng, scene.objects)
        ref = referring_expression(o, scene)
        return f"{ref} {pick(rng, NEUTRAL_PREDICATES)}"
    if label not in ("entailment", "contradiction"):
        raise ValueError(f"unknown VE label {label!r}")
    true = label == "entailment"
    while True:
        text = pick(rng, VE_CHECKABLE)(scene, rng, true)
        if text is not None:
            return text
