"""Text templates of the shapes world: captions, VQA questions (with noisy annotator
answers), NLVR statements about image pairs, and SNLI-VE hypotheses.

Every function takes an explicit ``numpy.random.Generator``.  Texts are plain lowercase
English (ALBEF's ``pre_caption`` lowercases and strips punctuation anyway).  Patterns
(the image-private attribute of the information-gap mode) are never mentioned in any
text; materials (the text-private attribute) appear in captions only.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from albef_struct.data_prep.shapes import COLOURS, NUM_OBJECTS_P, POSITIONS, SHAPES, Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten")
PLURALS = {s: s + "s" for s in SHAPES} | {"cross": "crosses"}
YES_NO = ("yes", "no")
SIZE_ANSWERS = ("small", "large")
#: every canonical VQA answer (written to ``answer_list.json``)
ANSWER_LIST: tuple[str, ...] = (tuple(COLOURS) + SHAPES + tuple(str(i) for i in range(5))
                                + YES_NO + SIZE_ANSWERS)
#: never-drawn, never-checkable properties used for neutral VE hypotheses
NEUTRAL_PREDICATES = (
    "is heavy", "is very light to carry", "is hot to the touch", "is cold to the touch",
    "smells like lemons", "smells like smoke", "belongs to a child", "belongs to my neighbour",
    "was bought yesterday", "is very expensive", "is cheap", "is a hundred years old",
    "was made in france", "makes a humming sound", "is someone's favourite toy",
    "will be thrown away tomorrow",
)

# ------------------------------------------------------------------------- word helpers


def pick(rng: np.random.Generator, items: Sequence):
    """A uniformly chosen element of ``items`` (kept as the element's own type)."""
    return items[int(rng.integers(len(items)))]


def article(phrase: str) -> str:
    """``phrase`` with the right indefinite article."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def plural(shape: str) -> str:
    return PLURALS[shape]


def count_phrase(n: int, shape: str, adjectives: str = "") -> str:
    """'a red circle', 'two circles', 'three red circles' (n >= 1)."""
    head = f"{adjectives} {shape}".strip() if n == 1 else f"{adjectives} {plural(shape)}".strip()
    return article(head) if n == 1 else f"{NUMBER_WORDS[n]} {head}"


def join_list(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def where(obj: SceneObject) -> str:
    """'in the top left', 'in the center', ..."""
    return f"in the {obj.position}"


def noun_phrase(obj: SceneObject, *, size: bool = True, colour: bool = True,
                material: bool = True, position: bool = False, det: str = "a") -> str:
    """Describe one object; ``material`` only has effect in information-gap scenes."""
    words = [obj.size] if size else []
    if colour:
        words.append(obj.colour)
    if material and obj.material:
        words.append(obj.material)
    words.append(obj.shape)
    phrase = " ".join(words)
    phrase = article(phrase) if det == "a" else f"{det} {phrase}".strip()
    return f"{phrase} {where(obj)}" if position else phrase


def referring_expression(obj: SceneObject, scene: Scene) -> str:
    """The shortest 'the ...' phrase that picks out ``obj`` uniquely in ``scene``
    (shape; colour + shape; size + colour + shape; else 'the ... in the <position>')."""
    others = [o for o in scene.objects if o is not obj]
    if all(o.shape != obj.shape for o in others):
        return f"the {obj.shape}"
    if all((o.shape, o.colour) != (obj.shape, obj.colour) for o in others):
        return f"the {obj.colour} {obj.shape}"
    if all((o.shape, o.colour, o.size) != (obj.shape, obj.colour, obj.size) for o in others):
        return f"the {obj.size} {obj.colour} {obj.shape}"
    return f"the {obj.colour} {obj.shape} {where(obj)}"


def reference_avoiding(obj: SceneObject, scene: Scene, attr: str) -> str:
    """A unique 'the ...' phrase for ``obj`` that does not mention ``attr`` ('colour' or
    'size'), so a question or hypothesis about that attribute never gives it away."""
    others = [o for o in scene.objects if o is not obj]
    if all(o.shape != obj.shape for o in others):
        return f"the {obj.shape}"
    if attr == "colour" and all((o.shape, o.size) != (obj.shape, obj.size) for o in others):
        return f"the {obj.size} {obj.shape}"
    if attr == "size" and all((o.shape, o.colour) != (obj.shape, obj.colour) for o in others):
        return f"the {obj.colour} {obj.shape}"
    return f"the {obj.shape} {where(obj)}"


def relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    """A true spatial relation 'a REL b' from grid cells: left of / right of / above / below."""
    options = []
    if a.col != b.col:
        options += ["to the left of", "left of"] if a.col < b.col else ["to the right of", "right of"]
    if a.row != b.row:
        options += ["above"] if a.row < b.row else ["below"]
    return pick(rng, options)


def shape_counts(scene: Scene) -> Counter:
    return Counter(o.shape for o in scene.objects)


def colour_counts(scene: Scene) -> Counter:
    return Counter(o.colour for o in scene.objects)


def has(scene: Scene, colour: str | None = None, shape: str | None = None) -> bool:
    """Whether the scene has an object with the given colour and/or shape."""
    return any((colour is None or o.colour == colour) and (shape is None or o.shape == shape)
               for o in scene.objects)


_NUMBER_MAP = {w: str(i) for i, w in enumerate(NUMBER_WORDS)} | {"none": "0"}


def normalize_answer(answer: str) -> str:
    """VQA-style answer normalisation: lowercase, drop punctuation and articles,
    number words to digits ('Two.' -> '2', 'a circle' -> 'circle')."""
    words = re.sub(r"[^\w\s]", "", answer.lower()).split()
    return " ".join(_NUMBER_MAP.get(w, w) for w in words if w not in ("a", "an", "the"))


def normalize_text(text: str) -> str:
    """Caption normalisation in the spirit of ALBEF's ``pre_caption`` (for duplicate checks)."""
    text = re.sub(r"[,.'!?\"()*#:;~]", "", text.lower())
    text = re.sub(r"[-/]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------- captions

def _full_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Every object with every shared (and text-private) attribute and its position."""
    parts = [noun_phrase(o, position=True) for o in scene.objects]
    frame = pick(rng, ("{}", "a picture of {}", "an image with {}", "there is {}"))
    return frame.format(join_list(parts))


def _paraphrase_caption(scene: Scene, rng: np.random.Generator) -> str:
    """All objects, differently worded: position first, or a count-prefixed list without sizes."""
    objs = scene.objects
    if rng.random() < 0.5:
        parts = [f"{where(o)} {noun_phrase(o, size=bool(rng.random() < 0.5))}" for o in objs]
        return join_list(parts)
    n = len(objs)
    lead = "one shape:" if n == 1 else f"{NUMBER_WORDS[n]} shapes:"
    return f"{lead} " + join_list([noun_phrase(o, size=False, position=True) for o in objs])


def _partial_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A subset of the objects (or, for one object, a subset of its attributes)."""
    objs = list(scene.objects)
    if len(objs) == 1:
        o = objs[0]
        return pick(rng, (
            f"a single {noun_phrase(o, det='')} {where(o)}",
            f"only one shape, {noun_phrase(o, size=False, position=True)}",
            f"{noun_phrase(o)} on its own",
        ))
    k = int(rng.integers(1, len(objs))) if len(objs) > 2 else 1
    chosen = [objs[i] for i in sorted(rng.choice(len(objs), size=k, replace=False))]
    if k == 1:
        o = chosen[0]
        return pick(rng, (
            f"{noun_phrase(o, position=True)} and {NUMBER_WORDS[len(objs) - 1]} other "
            f"{'shape' if len(objs) == 2 else 'shapes'}",
            f"a picture with {noun_phrase(o, position=True)} among other shapes",
        ))
    parts = [noun_phrase(o, size=bool(rng.random() < 0.5), position=bool(rng.random() < 0.7))
             for o in chosen]
    return pick(rng, ("a picture with {} among other shapes", "{} and more", "{}")).format(
        join_list(parts))


def _relation_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A spatial relation between two objects ('a red circle left of a small blue square')."""
    objs = list(scene.objects)
    if len(objs) == 1:
        o = objs[0]
        return pick(rng, (
            f"{noun_phrase(o)} alone {where(o)} of the picture",
            f"nothing but {noun_phrase(o, size=False)} {where(o)}",
        ))
    i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
    a, b = objs[i], objs[j]
    pa = noun_phrase(a, size=bool(rng.random() < 0.5))
    pb = noun_phrase(b, size=bool(rng.random() < 0.5))
    return f"{pa} {relation(a, b, rng)} {pb}"


def _count_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Counts per shape, with the colour when it is unambiguous ('two triangles and a green circle')."""
    groups: dict[str, list[SceneObject]] = {}
    for o in scene.objects:
        groups.setdefault(o.shape, []).append(o)
    parts = []
    for shape, members in groups.items():
        colours = {o.colour for o in members}
        adj = members[0].colour if len(colours) == 1 else ""
        parts.append(count_phrase(len(members), shape, adj))
    n = len(scene.objects)
    frame = pick(rng, ("{}", "{} on a plain background",
                       f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'} in total: {{}}"))
    return frame.format(join_list(parts))


CAPTION_KINDS: tuple[Callable[[Scene, np.random.Generator], str], ...] = (
    _full_caption, _paraphrase_caption, _partial_caption, _relation_caption, _count_caption)


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` captions of differently-worded kinds: full, paraphrase, partial, relation, count
    (cycling through the kinds when ``n`` > 5; distinct strings where possible)."""
    out: list[str] = []
    for i in range(n):
        kind = CAPTION_KINDS[i % len(CAPTION_KINDS)]
        cap = kind(scene, rng)
        for _ in range(5):  # avoid repeating a caption within one image
            if cap not in out:
                break
            cap = kind(scene, rng)
        out.append(cap)
    return out


# -------------------------------------------------------------------------------- VQA

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


def _count_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    u = rng.random()
    if u < 0.2:
        return pick(rng, ("how many objects are there?", "how many shapes are in the image?")), \
            str(len(scene.objects))
    if u < 0.35:
        colour = pick(rng, sorted({o.colour for o in scene.objects}))
        return f"how many {colour} objects are there?", str(colour_counts(scene)[colour])
    present = sorted(shape_counts(scene))
    shape = pick(rng, present) if rng.random() < 0.75 else pick(rng, SHAPES)
    q = pick(rng, ("how many {} are there?", "how many {} are in the picture?",
                   "what is the number of {}?"))
    return q.format(plural(shape)), str(shape_counts(scene)[shape])


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
                  want_yes: bool = True) -> tuple[str, str]:
    """One question of type ``qtype`` with its unique canonical answer for ``scene``."""
    if qtype == "color":
        return _colour_question(scene, rng)
    if qtype == "shape":
        return _shape_question(scene, rng)
    if qtype == "count":
        return _count_question(scene, rng)
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


# ------------------------------------------------------------------------------- NLVR

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
