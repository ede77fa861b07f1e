"""An on-disk index of image embeddings: built in chunks (resumable), searched by a text query.

The index is a folder: ``manifest.json`` (the checkpoint, the image folder, the chunk size and
the image list) and ``chunk_NNNNN.pt`` files of normalised ITC embeddings. Search is one
matrix product over all chunks; at millions of images a nearest-neighbour library (e.g. faiss)
would replace it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from albef_struct.inference.errors import InferenceInputError, MissingInputError
from albef_struct.inference.image_sets import image_files
from albef_struct.inference.model import InferenceModel

MANIFEST = "manifest.json"


class Hit(NamedTuple):
    path: str
    score: float  # ITC cosine
    itm: float | None = None  # ITM match probability when re-ranked


class SearchIndex:
    """The embeddings of an index folder and the checkpoint that made them."""

    def __init__(self, folder: Path, checkpoint: str, paths: list[str], feats: torch.Tensor,
                 loading: dict[str, Any] | None = None) -> None:
        self.folder, self.checkpoint, self.paths, self.feats = folder, checkpoint, paths, feats
        self.loading = loading or {}  # how the checkpoint was loaded (arch override, tokenizer)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def open(cls, folder: str | Path) -> "SearchIndex":
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if manifest is None:
            raise MissingInputError(f"{folder} has no {MANIFEST}: build the index with `albef-struct index` first")
        chunks = _chunk_count(len(manifest["images"]), manifest["chunk_size"])
        missing = [i for i in range(chunks) if not _chunk_path(folder, i).is_file()]
        if missing:
            raise MissingInputError(f"{folder}: chunk(s) {missing[:5]} of {chunks} are missing; rerun "
                                    "`albef-struct index` with the same arguments to finish it")
        feats = torch.cat([torch.load(_chunk_path(folder, i), weights_only=True) for i in range(chunks)])
        return cls(folder, manifest["checkpoint"], manifest["images"], feats, manifest.get("loading"))

    def search(self, model: InferenceModel, query: str, top: int = 5, rerank_k: int = 0) -> list[Hit]:
        """The ``top`` images by ITC cosine; with ``rerank_k``, the best ``rerank_k`` re-ordered by ITM."""
        scores = (self.feats @ model.encode_text([query]).T).squeeze(1)
        order = scores.topk(min(max(top, rerank_k), len(self))).indices.tolist()
        if rerank_k <= 0:
            return [Hit(self.paths[i], float(scores[i])) for i in order[:top]]
        pool = order[:rerank_k]
        itm = model.match([self.paths[i] for i in pool], query).tolist()
        ranked = sorted(zip(pool, itm), key=lambda pair: -pair[1])
        return [Hit(self.paths[i], float(scores[i]), p) for i, p in ranked[:top]]


def build_index(model: InferenceModel, checkpoint: str | Path, images: str | Path, out: str | Path,
                chunk_size: int = 1024, progress: Callable[[str], None] | None = None,
                loading: dict[str, Any] | None = None) -> SearchIndex:
    """Embed every image under ``images`` into ``out``; chunks already written are kept (resume), so an
    interrupted run continues. An existing index of another checkpoint or image list is refused.
    ``loading`` records how ``model`` was loaded (``arch``: an arch file, ``tokenizer``), for search."""
    out = Path(out)
    paths = [str(p) for p in image_files(images)]
    manifest = {"checkpoint": str(Path(checkpoint).resolve()), "images_root": str(Path(images).resolve()),
                "chunk_size": chunk_size, "images": paths, "loading": loading or {}}
    existing = _read_manifest(out)
    if existing is not None and {"loading": {}, **existing} != manifest:  # indexes written before "loading" existed
        raise InferenceInputError(f"{out} holds an index of another checkpoint, image list or chunk size; pass a new --out "
                         "(or delete the folder to rebuild it)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest))
    chunks = _chunk_count(len(paths), chunk_size)
    for i in range(chunks):
        target = _chunk_path(out, i)
        if target.is_file():
            continue
        feats = model.encode_image(paths[i * chunk_size:(i + 1) * chunk_size])
        partial = target.with_suffix(".tmp")
        torch.save(feats, partial)
        partial.replace(target)  # a chunk is either whole or absent
        if progress:
            progress(f"chunk {i + 1}/{chunks}: {min((i + 1) * chunk_size, len(paths))} of {len(paths)} images")
    return SearchIndex.open(out)


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InferenceInputError(f"{path}: damaged index manifest ({err.msg}); delete {folder} and rebuild the index") from err


def _chunk_count(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


def _chunk_path(folder: Path, i: int) -> Path:
    return folder / f"chunk_{i:05d}.pt"
