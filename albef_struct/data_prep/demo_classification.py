"""Image-classification sets of the shapes world, for zero-shot and k-shot evaluation (``albef-struct classify``).

One object per image (random size, cell and other attributes), written as class-per-folder
trees (torchvision's ImageFolder layout): ``OUT/<attribute>/<split>/<class>/<n>.jpg`` for
the attributes ``shape`` (6 classes) and ``colour`` (8), with ``--train`` images per class
for drawing k-shot examples and ``--test`` per class to score. The scenes are seeded apart
from the captioned demo data's, so these images are new to the model.

    python -m albef_struct.data_prep.demo_classification --out data/demo/classify
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from albef_struct.data_prep.shapes import COLOURS, SHAPES, SIZES, Scene, SceneObject, render_scene

ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS)}
MANIFEST = "manifest.json"
SEED_OFFSET = 7919  # keeps these scenes' random streams apart from demo_data's


def single_object_scene(rng: np.random.Generator, **fixed: str) -> Scene:
    """One object in a random cell; ``fixed`` sets attributes (e.g. ``shape="star"``), the rest are random."""
    cell = int(rng.integers(9))
    pick = lambda name, values: fixed.get(name) or values[int(rng.integers(len(values)))]  # noqa: E731
    obj = SceneObject(shape=pick("shape", SHAPES), colour=pick("colour", tuple(COLOURS)), size=pick("size", SIZES),
                      row=cell // 3, col=cell % 3, dx=round(float(rng.uniform(-1, 1)), 4),
                      dy=round(float(rng.uniform(-1, 1)), 4), scale=round(float(rng.uniform(0.9, 1.1)), 4))
    background = tuple(int(v) for v in 250 - rng.integers(0, 46, size=3))
    return Scene(background=background, objects=(obj,))


def generate(out: Path, *, seed: int = 0, image_size: int = 96, train: int = 10, test: int = 20) -> dict:
    """Write both attributes' trees under ``out`` (skipped when a finished set with these parameters is there)."""
    out = Path(out)
    params = {"seed": seed, "image_size": image_size, "train": train, "test": test}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("params") == params:
        return json.loads(manifest_path.read_text())
    rng = np.random.default_rng([seed, SEED_OFFSET])
    counts = {}
    for attribute, classes in ATTRIBUTES.items():
        shutil.rmtree(out / attribute, ignore_errors=True)
        for split, per_class in (("train", train), ("test", test)):
            for name in classes:
                folder = out / attribute / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for n in range(per_class):
                    scene = single_object_scene(rng, **{attribute: name})
                    render_scene(scene, image_size).save(folder / f"{n:04d}.jpg", "JPEG", quality=95)
            counts[f"{attribute}/{split}"] = per_class * len(classes)
    manifest = {"params": params, "classes": {a: list(c) for a, c in ATTRIBUTES.items()}, "counts": counts}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo/classify"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train", type=int, default=10, help="images per class to draw k-shot examples from")
    parser.add_argument("--test", type=int, default=20, help="images per class to score")
    args = parser.parse_args(argv)
    manifest = generate(args.out, seed=args.seed, image_size=args.image_size, train=args.train, test=args.test)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
