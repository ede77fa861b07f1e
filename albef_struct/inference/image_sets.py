"""Sets of images from disk: a labelled JSON list, a class-per-folder tree (torchvision's ImageFolder
layout), or every image under a folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from albef_struct.inference.errors import InferenceInputError, MissingInputError


@dataclass
class LabelledImages:
    paths: list[Path]
    labels: list[int]  # index into classes
    classes: list[str]


def labelled_images(source: str | Path, image_root: str | Path | None = None,
                    classes: list[str] | None = None) -> LabelledImages:
    """A folder ``source/<class>/<image>`` or a JSON list ``[{"image": path, "label": class}, ...]``
    (paths relative to ``image_root``, default the file's folder). ``classes`` fixes the class order
    (default: the sorted labels found); a label outside it is refused."""
    source = Path(source)
    if source.is_dir():
        tree = ImageFolder(str(source))
        found = tree.classes
        pairs = [(Path(p), tree.classes[i]) for p, i in tree.samples]
    elif source.is_file():
        pairs = _json_pairs(source, Path(image_root) if image_root else source.parent)
        found = sorted({label for _, label in pairs})
    else:
        raise MissingInputError(f"{source}: neither a class-per-folder image tree nor a JSON list of "
                                "{\"image\", \"label\"} records")
    order = list(classes) if classes else list(found)
    unknown = sorted({label for _, label in pairs} - set(order))
    if unknown:
        raise InferenceInputError(f"{source}: labels {unknown[:5]} are not among the classes {order}; add them to --classes")
    index = {name: i for i, name in enumerate(order)}
    return LabelledImages([p for p, _ in pairs], [index[label] for _, label in pairs], order)


def _json_pairs(path: Path, root: Path) -> list[tuple[Path, str]]:
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InferenceInputError(f"{path}: not JSON ({err.msg} at line {err.lineno}); expected a list of "
                         "{\"image\", \"label\"} records") from err
    if not isinstance(records, list) or not records:
        raise InferenceInputError(f"{path}: expected a non-empty JSON list of {{\"image\", \"label\"}} records")
    pairs = []
    for number, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "label" not in record:
            raise InferenceInputError(f"{path}, record {number}: {str(record)[:80]} lacks \"image\" (a path) or \"label\"")
        pairs.append((root / record["image"], str(record["label"])))
    return pairs


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (torchvision's image extensions), in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise InferenceInputError(f"{folder}: no image files ({', '.join(IMG_EXTENSIONS)}) found")
    return files
