"""Generate the "shapes world" demo data in ALBEF's JSON formats.

    python -m albef_struct.data_prep.demo_data --out data/demo [--seed 0] [--image-size 96]
        [--n-train 3000 --n-val 300 --n-test 300] [--info-gap] [--force]

Written under ``<out>`` (the ``image_root``; every path in the JSON is relative to it):

- ``images/<split>/<split>_<6-digit idx>.jpg`` (JPEG quality 95), splits train/val/test;
- ``pretrain.json``, ``retrieval_{train,val,test}.json``;
- ``vqa_{train,val,test}.json`` and ``answer_list.json``;
- ``nlvr_{train,dev,test}.json`` and ``ve_{train,dev,test}.json`` (dev = the val images);
- ``attributes_{train,val,test}.json`` (object labels for linear probes);
- ``manifest.json``: parameters, counts, chance levels (written last; a generation whose
  manifest has identical parameters is up to date and is not redone).

Everything is drawn from ``numpy.random.Generator`` streams seeded by
``(seed, split, purpose)``, so the output is byte-identical across runs; the test split
is sampled first, so it does not change when ``--n-train`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from albef_struct.data_prep import captions as T
from albef_struct.data_prep import pair_statements as S
from albef_struct.data_prep import vqa_questions as Q
from albef_struct.data_prep.shapes import Scene, render_scene, sample_scene

GENERATOR_VERSION = 2  # 2: count questions balance their answers per question type
SPLITS = ("train", "val", "test")
SAMPLING_ORDER = ("test", "val", "train")
SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
TASK_SPLIT_NAME = {"train": "train", "val": "dev", "test": "test"}  # NLVR / VE naming
PURPOSE_CODE = {"scenes": 1, "captions": 2, "vqa": 3, "nlvr": 4, "ve": 5}
CAPTIONS_PER_IMAGE = 5
QUESTIONS_PER_IMAGE = 4
VE_LABELS = ("entailment", "neutral", "contradiction")
JPEG_QUALITY = 95
RETRIEVAL_KS = (1, 5, 10)
MANIFEST = "manifest.json"


# -------------------------------------------------------------------------- helpers

def split_rng(seed: int, split: str, purpose: str) -> np.random.Generator:
    """An independent generator for one (split, purpose) stream."""
    return np.random.default_rng([seed, SPLIT_CODE[split], PURPOSE_CODE[purpose]])


def image_rel(split: str, idx: int, ext: str = ".jpg") -> str:
    """Image path relative to the image root: ``images/<split>/<split>_<idx:06d>.jpg``."""
    return f"images/{split}/{split}_{idx:06d}{ext}"


def write_json(path: Path, data) -> None:
    """Write JSON deterministically (fixed key order as built, compact one-space indent)."""
    path.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")


def sample_split_scenes(seed: int, sizes: dict[str, int], info_gap: bool) -> dict[str, list[Scene]]:
    """Scenes of every split; no scene key occurs twice, within or across splits."""
    seen: set = set()
    out: dict[str, list[Scene]] = {}
    for split in SAMPLING_ORDER:
        rng = split_rng(seed, split, "scenes")
        scenes: list[Scene] = []
        while len(scenes) < sizes[split]:
            scene = sample_scene(rng, info_gap=info_gap)
            if scene.key() not in seen:
                seen.add(scene.key())
                scenes.append(scene)
        out[split] = scenes
    return out


def write_images(out: Path, split: str, scenes: Sequence[Scene], image_size: int) -> None:
    """Render and save the images of one split (removing stale ones of earlier runs)."""
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{split}_*.jpg"):
        old.unlink()
    for idx, scene in enumerate(scenes):
        render_scene(scene, image_size).save(out / image_rel(split, idx), "JPEG",
                                             quality=JPEG_QUALITY)


# ---------------------------------------------------------------------- per-task data

def build_captions(scenes: Sequence[Scene], rng: np.random.Generator) -> list[list[str]]:
    """``CAPTIONS_PER_IMAGE`` captions per scene."""
    return [T.make_captions(s, rng, CAPTIONS_PER_IMAGE) for s in scenes]


def build_vqa(split: str, scenes: Sequence[Scene], rng: np.random.Generator
              ) -> tuple[list[dict], list[str], list[str]]:
    """VQA records (ALBEF format, 10 annotator answers), each question's type and its
    canonical answer.  Yes/no questions alternate their intended answer and count questions
    balance theirs per question type (:class:`~albef_struct.data_prep.vqa_questions.CountBalancer`)."""
    records, types, canonical = [], [], []
    n_yesno = 0
    counts = Q.CountBalancer()
    for idx, scene in enumerate(scenes):
        qtypes = [Q.QUESTION_TYPES[int(i)] for i in
                  rng.choice(len(Q.QUESTION_TYPES), size=QUESTIONS_PER_IMAGE, replace=False)]
        for j, qtype in enumerate(qtypes):
            want_yes = n_yesno % 2 == 0
            n_yesno += qtype == "exist"
            question, answer = Q.make_question(scene, qtype, rng, want_yes, counts)
            records.append({
                "dataset": "vqa",
                "image": image_rel(split, idx),
                "question": question,
                "answer": Q.annotator_answers(answer, rng),
                "question_id": SPLIT_CODE[split] * 10_000_000 + idx * 10 + j,
            })
            types.append(qtype)
            canonical.append(answer)
    return records, types, canonical


def build_nlvr(split: str, scenes: Sequence[Scene], rng: np.random.Generator) -> list[dict]:
    """One statement per image (rounded up to even), exactly half of them true.

    Each image is the left image of at least one pair; the right image is another image of
    the split.  The template is drawn before the pair and independently of the label, and
    partners are redrawn until it fits, so a template's wording alone does not give the
    label away (the wording of its fillers still can, a little, as in real NLVR2).
    """
    n = len(scenes)
    if n < 2:
        return []
    n_pairs = n + (n % 2)
    labels = np.array([True, False] * (n_pairs // 2))[rng.permutation(n_pairs)]
    lefts = np.concatenate([rng.permutation(n), rng.permutation(n)])[:n_pairs]
    records = []
    for want, i in zip(labels.tolist(), lefts.tolist()):
        template = int(rng.integers(len(S.NLVR_TEMPLATES)))
        for attempt in itertools.count():
            j = int(rng.integers(n - 1))
            j += j >= i
            sentence = S.make_nlvr_statement(scenes[i], scenes[j], want, rng,
                                             template if attempt < 200 else None)
            if sentence is not None:
                break
        records.append({"images": [image_rel(split, i), image_rel(split, j)],
                        "sentence": sentence, "label": "True" if want else "False"})
    return records


def build_ve(split: str, scenes: Sequence[Scene], rng: np.random.Generator) -> list[dict]:
    """One hypothesis per class per image (so classes are exactly balanced); the image id
    has no extension, as in ALBEF's SNLI-VE files."""
    records = []
    for idx, scene in enumerate(scenes):
        for k in rng.permutation(len(VE_LABELS)):
            label = VE_LABELS[int(k)]
            records.append({"image": image_rel(split, idx, ext=""),
                            "sentence": S.make_hypothesis(scene, label, rng), "label": label})
    return records


def build_attributes(split: str, scenes: Sequence[Scene]) -> list[dict]:
    """Per-image labels for probes; 'first' = first object in reading order (row-major),
    which is the first object of the full-description captions."""
    records = []
    for idx, scene in enumerate(scenes):
        objects = [o.labels() for o in scene.objects]
        rec = {"image": image_rel(split, idx), "objects": objects,
               "num_objects": len(objects)}
        for key in ("shape", "colour", "size", "position", "pattern", "material"):
            if key in objects[0]:
                rec[f"first_{key}"] = objects[0][key]
        records.append(rec)
    return records


# ------------------------------------------------------------------- chance & checks

def retrieval_chance(n_images: int, captions_per_image: int = CAPTIONS_PER_IMAGE,
                     ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, float]:
    """Recall@k (fraction) of a random ranking: text->image k/N; image->text
    1 - C(cN - c, k) / C(cN, k) (at least one of the image's c captions in the top k)."""
    n_texts = n_images * captions_per_image
    out = {}
    for k in ks:
        miss = (Fraction(math.comb(n_texts - captions_per_image, k), math.comb(n_texts, k))
                if k <= n_texts else Fraction(0))
        out[f"i2t_r{k}"] = float(1 - miss)
    for k in ks:
        out[f"t2i_r{k}"] = float(min(Fraction(1), Fraction(k, n_images)))
    return out


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: min(#matching / 3, 1) averaged over the leave-one-out subsets."""
    pred = T.normalize_answer(prediction)
    gts = [T.normalize_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    return sum(min(1.0, (matches - (g == pred)) / 3) for g in gts) / len(gts)


def vqa_prior_accuracy(records: Sequence[dict], canonical: Sequence[str],
                       groups: Sequence[str] | None = None) -> float:
    """Accuracy of always answering the most frequent canonical answer (per group if given)."""
    if not records:
        return 0.0
    groups = list(groups) if groups is not None else [""] * len(records)
    best = {g: Counter(a for a, gg in zip(canonical, groups) if gg == g).most_common(1)[0][0]
            for g in set(groups)}
    return sum(vqa_accuracy(best[g], r["answer"]) for r, g in zip(records, groups)) / len(records)


def duplicate_caption_fraction(captions: Sequence[Sequence[str]]) -> float:
    """Fraction of captions (after ``pre_caption``-style normalisation) that are also a
    caption of another image of the same set."""
    owners: dict[str, set[int]] = {}
    for i, caps in enumerate(captions):
        for c in caps:
            owners.setdefault(T.normalize_text(c), set()).add(i)
    total = sum(len(caps) for caps in captions)
    dup = sum(len(owners[T.normalize_text(c)]) > 1 for caps in captions for c in caps)
    return dup / total if total else 0.0


# ------------------------------------------------------------------------ generation

def make_params(*, seed: int, image_size: int, n_train: int, n_val: int, n_test: int,
                info_gap: bool) -> dict:
    """The parameters that define a generation (compared for up-to-dateness)."""
    return {"generator": "shapes_world", "generator_version": GENERATOR_VERSION,
            "seed": int(seed), "image_size": int(image_size), "n_train": int(n_train),
            "n_val": int(n_val), "n_test": int(n_test), "info_gap": bool(info_gap),
            "captions_per_image": CAPTIONS_PER_IMAGE, "questions_per_image": QUESTIONS_PER_IMAGE}


def read_manifest(out: Path) -> dict | None:
    """The manifest of ``out``, or None when absent or unreadable."""
    try:
        return json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_up_to_date(out: Path, params: dict) -> bool:
    """Whether ``out`` holds a finished generation with exactly ``params``."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("params") != params:
        return False
    return all((Path(out) / name).is_file() for name in manifest.get("counts", {}))


def generate(out: Path, *, seed: int = 0, image_size: int = 96, n_train: int = 3000,
             n_val: int = 300, n_test: int = 300, info_gap: bool = False,
             force: bool = False) -> dict:
    """Write the whole demo data set under ``out`` and return its manifest.

    Does nothing (and returns the existing manifest) when ``out`` is already up to date,
    unless ``force``.
    """
    out = Path(out)
    params = make_params(seed=seed, image_size=image_size, n_train=n_train, n_val=n_val,
                         n_test=n_test, info_gap=info_gap)
    if not force and is_up_to_date(out, params):
        return read_manifest(out)
    if min(n_train, n_val, n_test) < 2:
        raise ValueError("every split needs at least 2 images")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted run is never 'up to date'

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    scenes = sample_split_scenes(seed, sizes, info_gap)
    files: dict[str, list] = {}
    caps: dict[str, list[list[str]]] = {}
    vqa_types: dict[str, list[str]] = {}
    vqa_answers: dict[str, list[str]] = {}
    for split in SPLITS:
        write_images(out, split, scenes[split], image_size)
        caps[split] = build_captions(scenes[split], split_rng(seed, split, "captions"))
        files[f"vqa_{split}.json"], vqa_types[split], vqa_answers[split] = build_vqa(
            split, scenes[split], split_rng(seed, split, "vqa"))
        task_split = TASK_SPLIT_NAME[split]
        files[f"nlvr_{task_split}.json"] = build_nlvr(split, scenes[split],
                                                      split_rng(seed, split, "nlvr"))
        files[f"ve_{task_split}.json"] = build_ve(split, scenes[split],
                                                  split_rng(seed, split, "ve"))
        files[f"attributes_{split}.json"] = build_attributes(split, scenes[split])
        if split != "train":
            files[f"retrieval_{split}.json"] = [
                {"image": image_rel(split, i), "caption": c} for i, c in enumerate(caps[split])]
    files["pretrain.json"] = [{"image": image_rel("train", i), "caption": c}
                              for i, c in enumerate(caps["train"])]
    files["retrieval_train.json"] = [
        {"image": image_rel("train", i), "caption": c, "image_id": f"train_{i:06d}"}
        for i, cs in enumerate(caps["train"]) for c in cs]
    files["answer_list.json"] = list(T.ANSWER_LIST)
    for name in sorted(files):
        write_json(out / name, files[name])

    test_vqa = files["vqa_test.json"]
    manifest = {
        "params": params,
        "image_root": ".",
        "images": {split: len(scenes[split]) for split in SPLITS},
        "counts": {name: len(files[name]) for name in sorted(files)},
        "chance": {
            "retrieval": retrieval_chance(n_test),
            "vqa": vqa_prior_accuracy(test_vqa, vqa_answers["test"]),
            "vqa_question_type_prior": vqa_prior_accuracy(test_vqa, vqa_answers["test"],
                                                          vqa_types["test"]),
            "nlvr": 0.5,
            "ve": 1 / 3,
        },
        "stats": {
            "duplicate_caption_fraction": {s: duplicate_caption_fraction(caps[s]) for s in SPLITS},
            "vqa_question_types_test": dict(sorted(Counter(vqa_types["test"]).items())),
        },
        "notes": {
            "chance": "fractions in [0, 1]; retrieval on the test split (i2t = image->text)",
            "vqa": "answers keep 10 annotator strings with surface variants and some wrong "
                   "answers; vqa_test.json keeps answers so accuracy can be computed locally",
            "ve": "'image' has no extension; the file is '<image_root>/<image>.jpg'",
        },
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m albef_struct.data_prep.demo_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--info-gap", action="store_true",
                   help="add drawn-only patterns and text-only materials")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    a = p.parse_args(argv)
    kwargs = dict(seed=a.seed, image_size=a.image_size, n_train=a.n_train, n_val=a.n_val,
                  n_test=a.n_test, info_gap=a.info_gap)
    if not a.force and is_up_to_date(a.out, make_params(**kwargs)):
        print(f"demo data up to date at {a.out}")
        return 0
    t0 = time.perf_counter()
    manifest = generate(a.out, force=True, **kwargs)
    dt = time.perf_counter() - t0
    n_img = sum(manifest["images"].values())
    print(f"generated {n_img} images and {len(manifest['counts']) + 1} JSON files "
          f"at {a.out} in {dt:.1f} s")
    dup = manifest["stats"]["duplicate_caption_fraction"]["test"]
    print(f"test captions shared with another test image: {100 * dup:.2f}%")
    print("chance levels: " + json.dumps(manifest["chance"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
