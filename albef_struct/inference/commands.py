"""``albef-struct classify``, ``index`` and ``search``: zero-/few-shot classification and image search."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from albef_struct.inference import load
from albef_struct.inference.errors import InferenceInputError, MissingInputError
from albef_struct.inference.model import InferenceModel
from albef_struct.inference.image_sets import labelled_images
from albef_struct.inference.search import SearchIndex, build_index
from albef_struct.inference.zero_shot import DEFAULT_TEMPLATES, few_shot_accuracy, topk_accuracy, zero_shot_scores


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="a checkpoint of this project or an official ALBEF file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="weights and activations in bfloat16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", type=Path, metavar="ARCH.yaml",
                        help="architecture keys to change from the file's (e.g. the attention heads of an official "
                             "file, which shapes cannot tell): an arch YAML (configs/model/small_arch.yaml) or a task "
                             "config's model.init_args.arch")
    parser.add_argument("--tokenizer", help="vocabulary directory (default: the run's, else bert-base-uncased)")


def read_arch_file(path: Path) -> dict[str, Any]:
    """The arch mapping of ``path``: a bare arch YAML, or a task config's ``model.init_args.arch`` (which
    may itself name an arch YAML relative to the config)."""
    if not path.is_file():
        raise MissingInputError(f"--arch {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InferenceInputError(f"--arch {path}: not YAML ({err})") from err
    if isinstance(values, dict) and "model" in values:
        values = ((values.get("model") or {}).get("init_args") or {}).get("arch")
        if isinstance(values, str):
            return read_arch_file(path.parent / values)
    if not isinstance(values, dict):
        raise InferenceInputError(f"--arch {path}: expected a mapping of arch keys (vision, text, embed_dim, ...) "
                                  "or a task config with model.init_args.arch")
    return values


def _load(args: argparse.Namespace) -> InferenceModel:
    return load(args.ckpt, device=args.device, dtype=torch.bfloat16 if args.bf16 else None,
                arch=read_arch_file(args.arch) if args.arch else None, tokenizer=args.tokenizer,
                batch_size=args.batch_size)


def classify_main(argv: Sequence[str]) -> int:
    """Zero-shot classification of a labelled image set, optionally k-shot linear probes beside it."""
    parser = argparse.ArgumentParser(prog="albef-struct classify", description=classify_main.__doc__)
    _model_arguments(parser)
    parser.add_argument("--images", required=True, type=Path,
                        help="a class-per-folder tree (ImageFolder layout) or a JSON list of {image, label}")
    parser.add_argument("--image-root", type=Path, help="folder the JSON list's image paths are relative to")
    parser.add_argument("--classes", nargs="+", help="class names in order (default: the labels found)")
    parser.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES),
                        help="prompt templates with {} for the class name")
    parser.add_argument("--rerank-k", type=int, default=0, help="re-rank each image's top k classes by ITM")
    parser.add_argument("--few-shot-train", type=Path, help="labelled images to draw the k-shot examples from")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="write the per-image predictions and the scores here (JSON)")
    args = parser.parse_args(list(argv))
    model = _load(args)
    test = labelled_images(args.images, args.image_root, args.classes)
    feats = model.encode_image(test.paths)
    scores = zero_shot_scores(model, test.paths, test.classes, args.templates, args.rerank_k, image_feats=feats)
    result = {"checkpoint": str(args.ckpt), "images": str(args.images), "classes": test.classes,
              "templates": args.templates, "rerank_k": args.rerank_k, "count": len(test.paths),
              "chance_top1": 100.0 / len(test.classes), "zero_shot": topk_accuracy(scores, test.labels)}
    top = scores.topk(min(5, len(test.classes)), dim=1).indices
    result["predictions"] = [{"image": str(p), "label": test.classes[y], "top": [test.classes[c] for c in row]}
                             for p, y, row in zip(test.paths, test.labels, top.tolist())]
    print(f"{len(test.paths)} images, {len(test.classes)} classes (chance {result['chance_top1']:.1f} %)")
    print("zero-shot " + "  ".join(f"{k} {v:.1f} %" for k, v in result["zero_shot"].items()))
    if args.few_shot_train:
        train = labelled_images(args.few_shot_train, args.image_root, test.classes)
        few = few_shot_accuracy(model.encode_image(train.paths), train.labels, feats, test.labels, args.shots, args.seeds)
        result["few_shot"] = {str(k): v for k, v in few.items()}
        for k, v in few.items():
            print(f"{k}-shot linear probe  {v['mean']:.1f} ± {v['std']:.1f} %  ({len(args.seeds)} seeds)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


def index_main(argv: Sequence[str]) -> int:
    """Embed every image under a folder once (in chunks, resumable) for ``albef-struct search``."""
    parser = argparse.ArgumentParser(prog="albef-struct index", description=index_main.__doc__)
    _model_arguments(parser)
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="the index folder (created; resumed if it exists)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="images per saved chunk")
    args = parser.parse_args(list(argv))
    loading = {"arch": str(args.arch.resolve()) if args.arch else None, "tokenizer": args.tokenizer}
    index = build_index(_load(args), args.ckpt, args.images, args.out, args.chunk_size, progress=print,
                        loading=loading)
    print(f"{len(index)} images indexed in {args.out}")
    return 0


def search_main(argv: Sequence[str]) -> int:
    """The images of an index that best match a text query (ITC, optionally re-ranked by ITM)."""
    parser = argparse.ArgumentParser(prog="albef-struct search", description=search_main.__doc__)
    parser.add_argument("--index", required=True, type=Path, help="a folder written by `albef-struct index`")
    parser.add_argument("--query", required=True, action="append", help="the text to search for (repeatable)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--rerank-k", type=int, default=0, help="re-rank the top k images by ITM")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(list(argv))
    index = SearchIndex.open(args.index)
    arch = index.loading.get("arch")
    model = load(index.checkpoint, device=args.device, arch=read_arch_file(Path(arch)) if arch else None,
                 tokenizer=index.loading.get("tokenizer"))
    results = {query: index.search(model, query, args.top, args.rerank_k) for query in args.query}
    if args.json:
        print(json.dumps({q: [h._asdict() for h in hits] for q, hits in results.items()}, indent=2))
        return 0
    for query, hits in results.items():
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            extra = f"  ITM {hit.itm:.3f}" if hit.itm is not None else ""
            print(f"  {rank:>2}. {hit.score:.4f}{extra}  {hit.path}")
    return 0
