"""What a pretraining checkpoint's frozen features already know about SNLI-VE, before any fine-tuning.

    python -m experiments.ve_feature_probe --ckpt runs/demo/pretrain_small/checkpoints/last.ckpt \
        --train data/demo/ve_train.json --eval data/demo/ve_dev.json --image-root data/demo

For every (image, hypothesis) pair it extracts three frozen feature sets in eval mode and fits a
linear probe (``albef_struct.metrics.probe``, logistic regression) on the training pairs:

- ``fused_cls``: the fusion encoder's [CLS], the vector SNLI-VE's classifier head reads;
- ``itc``: the image and text ITC features side by side (what the dual encoders hold);
- ``text_only``: the text ITC feature alone, the hypothesis-only baseline.

Each is scored on the 3-way labels and on entailment vs contradiction alone (the part that needs
the image; a hypothesis-only model is at 50 % there when the two are balanced). A probe well above
the fine-tuned model says the information is in the checkpoint and the fine-tuning recipe loses it.

Without any fitting, it also asks how well the pretraining's own image-text scores, the ITC cosine
similarity and the ITM "match" logit, rank each held-out entailed hypothesis above the contradicted
ones: the AUC over entailment/contradiction pairs, per kind of demo hypothesis (a count, a colour,
"there is a red circle", ...; :func:`hypothesis_kind`). Prints both tables and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

from albef_struct.data import VEDataModule
from albef_struct.lit import PretrainModule
from albef_struct.metrics.probe import linear_probe_accuracy
from albef_struct.models import ALBEF
from albef_struct.data_prep.shapes import COLOURS
from albef_struct.tasks.ve import VE_LABELS

FEATURE_SETS = ("fused_cls", "itc", "text_only")
ZERO_SHOT_SCORES = ("itc_similarity", "itm_logit")
ENTAILMENT, CONTRADICTION = VE_LABELS.index("entailment"), VE_LABELS.index("contradiction")


@torch.no_grad()
def pair_features(model: ALBEF, loader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``{feature set: [N, D]}`` and the labels ``[N]`` of every pair ``loader`` yields."""
    model.eval()
    names = FEATURE_SETS + (ZERO_SHOT_SCORES if model.config.itm_head else ())
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels = []
    for batch in loader:
        image = model.encode_image(batch["image"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        fused = model.fuse(text.embeds, batch["attention_mask"], image.embeds)
        parts["fused_cls"].append(fused[:, 0])
        parts["itc"].append(torch.cat([image.feat, text.feat], dim=-1))
        parts["text_only"].append(text.feat)
        if model.config.itm_head:
            parts["itc_similarity"].append((image.feat * text.feat).sum(dim=-1))
            parts["itm_logit"].append(model.itm_logits(fused)[:, 1])
        labels.append(batch["label"])
    return {name: torch.cat(chunks) for name, chunks in parts.items()}, torch.cat(labels)


def needs_image(labels: torch.Tensor) -> torch.Tensor:
    """Mask of the entailment and contradiction pairs (neutral ones are told apart by their wording)."""
    return (labels == ENTAILMENT) | (labels == CONTRADICTION)


def probe_table(
    train: tuple[dict[str, torch.Tensor], torch.Tensor], held_out: tuple[dict[str, torch.Tensor], torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Percent accuracy of a linear probe per feature set: all three classes, and entailment vs contradiction."""
    (train_x, train_y), (eval_x, eval_y) = train, held_out
    train_mask, eval_mask = needs_image(train_y), needs_image(eval_y)
    if not bool(train_mask.any()) or not bool(eval_mask.any()):
        raise ValueError("the probe needs entailment or contradiction pairs in both files; found none in one of them")
    table = {}
    for name in FEATURE_SETS:
        three_way = linear_probe_accuracy(train_x[name], train_y, eval_x[name], eval_y)
        image_part = linear_probe_accuracy(
            train_x[name][train_mask], train_y[train_mask], eval_x[name][eval_mask], eval_y[eval_mask]
        )
        table[name] = {"acc": 100.0 * three_way, "acc_entail_vs_contra": 100.0 * image_part}
    return table


_RELATION = re.compile(r" is (to the left of|left of|to the right of|right of|above|below) ")
_POSITION = re.compile(r"^there is an? .+ in the (top|middle|bottom|center|left|right)")


def hypothesis_kind(sentence: str) -> str:
    """Which kind of demo-data hypothesis ``sentence`` is (``albef_struct.data_prep.pair_statements``):
    count, absent, relation, position, exists, size, colour, or "other" (e.g. a neutral one)."""
    text = sentence.lower().strip().rstrip(".")
    if text.startswith("the picture shows "):
        return "count"
    if text.startswith("there are no "):
        return "absent"
    if _RELATION.search(text):
        return "relation"
    if _POSITION.match(text):
        return "position"
    if text.startswith(("there is ", "the image contains ")) or text.endswith(" is visible"):
        return "exists"
    if text.endswith((" is small", " is large")):
        return "size"
    if any(text.endswith(f" is {colour}") for colour in COLOURS):
        return "colour"
    return "other"


def zero_shot_auc(scores: dict[str, torch.Tensor], labels: torch.Tensor, kinds: list[str]) -> dict[str, dict]:
    """Per hypothesis kind (and "all"): the entailment/contradiction pairs and, for each zero-shot
    score, the AUC of ranking entailed above contradicted hypotheses (0.5: no better than a coin;
    kinds with only one of the two classes are left out)."""
    mask = needs_image(labels)
    entailed = labels == ENTAILMENT
    groups = {"all": mask} | {kind: mask & torch.tensor([k == kind for k in kinds]) for kind in sorted(set(kinds))}
    table = {}
    for kind, rows in groups.items():
        if entailed[rows].all() or not entailed[rows].any():
            continue
        table[kind] = {"pairs": int(rows.sum())} | {
            name: float(binary_auroc(score[rows].float(), entailed[rows].long())) for name, score in scores.items()}
    return table


def loader_for(path: str, args: argparse.Namespace):
    """Eval-transform batches of one VE file (no augmentation, no shuffling)."""
    data = VEDataModule(
        test_file=path, image_root=args.image_root, image_ext=args.image_ext, image_res=args.image_res,
        eval_batch_size=args.batch_size, num_workers=0, max_tokens=args.max_tokens,
    )
    data.setup("test")
    return data.test_dataloader()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a pretraining checkpoint of this project (PretrainModule)")
    parser.add_argument("--train", required=True, help="VE JSON the probes are fitted on")
    parser.add_argument("--eval", required=True, help="VE JSON the probes are scored on")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--image-ext", default=".jpg")
    parser.add_argument("--image-res", type=int, default=98)
    parser.add_argument("--max-tokens", type=int, default=None, help="token limit (default: the VE data default)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="results/ve_feature_probe.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run(load_pretraining_model(args.ckpt), args)


def load_pretraining_model(path: str) -> ALBEF:
    """The model of a pretraining checkpoint of this project; any other file fails naming itself and the fix."""
    if not Path(path).is_file():
        raise SystemExit(f"no checkpoint at {path}: run `make demo` (or pass --ckpt) first")
    hint = ("--ckpt must be a pretraining checkpoint of this project (`albef-struct fit` with PretrainModule, "
            "e.g. runs/demo/pretrain_small/checkpoints/last.ckpt), not a task checkpoint")
    try:
        model = PretrainModule.load_from_checkpoint(path, map_location="cpu").model
    except (KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as error:
        raise SystemExit(f"{path} could not be loaded as a pretraining checkpoint ({type(error).__name__}: "
                         f"{str(error)[:200]}); {hint}") from error
    return model  # PretrainModule itself refuses an architecture without ITC projections


def run(model: ALBEF, args: argparse.Namespace) -> dict:
    """Probe ``model``'s features on ``args.train``/``args.eval``, print the table, write ``args.out``."""
    train, held_out = pair_features(model, loader_for(args.train, args)), pair_features(model, loader_for(args.eval, args))
    table = probe_table(train, held_out)
    pairs = {"train": len(train[1]), "eval": len(held_out[1])}
    print(f"linear probes on frozen features of {args.ckpt} (fitted on {pairs['train']} pairs of {args.train}, "
          f"scored on {pairs['eval']} of {args.eval}; percent)")
    print(f"{'features':<12} {'3-way':>7} {'entail vs contra':>17}")
    for name, row in table.items():
        print(f"{name:<12} {row['acc']:>7.1f} {row['acc_entail_vs_contra']:>17.1f}")
    result = {"ckpt": args.ckpt, "train": args.train, "eval": args.eval, "pairs": pairs, "probes": table}
    scores = {name: held_out[0][name] for name in ZERO_SHOT_SCORES if name in held_out[0]}
    if scores:
        sentences = [record["sentence"] for record in json.loads(Path(args.eval).read_text(encoding="utf-8"))]
        if len(sentences) != len(held_out[1]):  # the kinds are read from the file in order: nothing may be skipped
            raise ValueError(f"{args.eval} holds {len(sentences)} hypotheses but the loader gave {len(held_out[1])} "
                             "pairs; fix or remove the records it skipped")
        aucs = zero_shot_auc(scores, held_out[1], [hypothesis_kind(s) for s in sentences])
        print(f"zero-shot AUC, entailed above contradicted ({args.eval})")
        print(f"{'kind':<10} {'pairs':>6} " + " ".join(f"{name:>15}" for name in scores))
        for kind, row in aucs.items():
            print(f"{kind:<10} {row['pairs']:>6} " + " ".join(f"{row[name]:>15.3f}" for name in scores))
        result["zero_shot_auc"] = aucs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
