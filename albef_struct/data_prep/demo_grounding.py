"""Referring expressions over shapes-world scenes, for the grounding task (``GroundingModule``).

Each scene has 2-4 objects; one is the referent, named by the shortest expression that
tells it apart from the others ("the red circle", "the small red circle", "the red circle
at the top left"), and every object's bounding box is a proposal. Writes under ``OUT``:
``images/<split>/<n>.jpg``, ``grounding_train.json`` (expression-image pairs in the
retrieval-train format, the image file as ``image_id``), ``grounding_val.json`` and
``grounding_test.json`` (``{"image", "text", "box", "proposals", "split"}``, boxes
``[x, y, w, h]`` in pixels). Scenes are seeded apart from the captioned demo data's.

    python -m albef_struct.data_prep.demo_grounding --out data/demo/grounding
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from albef_struct.data_prep.shapes import Scene, SceneObject, object_geometry, render_scene, sample_scene

MANIFEST = "manifest.json"
SEED_OFFSET = 104729  # keeps these scenes' random streams apart from the other demo generators'
SIZES = {"train": 600, "val": 100, "test": 200}


def object_box(obj: SceneObject, image_size: int) -> list[float]:
    """``[x, y, w, h]`` of the square that holds the object (its shapes fit their circumscribed circle)."""
    cx, cy, r = object_geometry(obj, image_size)
    x0, y0 = max(cx - r, 0.0), max(cy - r, 0.0)
    return [round(x0, 2), round(y0, 2), round(min(cx + r, image_size) - x0, 2), round(min(cy + r, image_size) - y0, 2)]


def referring_expression(scene: Scene, target: int) -> str:
    """The shortest of colour + shape, size + colour + shape, and colour + shape + position that fits only the target."""
    obj = scene.objects[target]
    candidates = (
        (f"the {obj.colour} {obj.shape}", lambda o: (o.colour, o.shape) == (obj.colour, obj.shape)),
        (f"the {obj.size} {obj.colour} {obj.shape}", lambda o: (o.size, o.colour, o.shape) == (obj.size, obj.colour, obj.shape)),
        (f"the {obj.colour} {obj.shape} at the {obj.position}", lambda o: (o.colour, o.shape, o.position)
         == (obj.colour, obj.shape, obj.position)),
    )
    for text, same in candidates:
        if sum(same(o) for o in scene.objects) == 1:
            return text
    raise AssertionError("objects occupy distinct cells, so the position always tells them apart")


def sample_grounding_scene(rng: np.random.Generator) -> Scene:
    while True:
        scene = sample_scene(rng)
        if len(scene.objects) >= 2:
            return scene


def generate(out: Path, *, seed: int = 0, image_size: int = 96, sizes: dict[str, int] | None = None) -> dict:
    """Write the three splits (skipped when a finished set with these parameters is there)."""
    out, sizes = Path(out), dict(sizes or SIZES)
    params = {"seed": seed, "image_size": image_size, "sizes": sizes}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("params") == params:
        return json.loads(manifest_path.read_text())
    shutil.rmtree(out / "images", ignore_errors=True)
    counts = {}
    for code, (split, count) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, SEED_OFFSET, code])
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for n in range(count):
            scene = sample_grounding_scene(rng)
            target = int(rng.integers(len(scene.objects)))
            image = f"images/{split}/{n:05d}.jpg"
            render_scene(scene, image_size).save(out / image, "JPEG", quality=95)
            text = referring_expression(scene, target)
            if split == "train":
                records.append({"image": image, "caption": text, "image_id": image})
            else:
                records.append({"image": image, "text": text, "split": split,
                                "box": object_box(scene.objects[target], image_size),
                                "proposals": [object_box(o, image_size) for o in scene.objects]})
        (out / f"grounding_{split}.json").write_text(json.dumps(records))
        counts[split] = len(records)
    manifest = {"params": params, "counts": counts}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo/grounding"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train", type=int, default=SIZES["train"])
    parser.add_argument("--val", type=int, default=SIZES["val"])
    parser.add_argument("--test", type=int, default=SIZES["test"])
    args = parser.parse_args(argv)
    manifest = generate(args.out, seed=args.seed, image_size=args.image_size,
                        sizes={"train": args.train, "val": args.val, "test": args.test})
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
