"""Text templates of the shapes world: the shared vocabulary and word helpers, and the captions.

VQA questions are in ``vqa_questions``, NLVR2 statements and SNLI-VE hypotheses in
``pair_statements``.

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

from albef_struct.data_prep.shapes import COLOURS, SHAPES, Scene, SceneObject

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
